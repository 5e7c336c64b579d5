//! Executing agents: runs, their graph, their output, and the services they call.
//!
//! - [`manager`]: admission, execution on a detached task, cancel, approval, leases and
//!   recovery after a crash;
//! - [`agent_graph`]: the default agent graph (model → tools → model) on `agentmesh_graph`;
//! - [`state`]: what every checkpoint saves;
//! - [`output`]: the run's numbered, coalesced, durable event stream;
//! - [`peers`]: session-store, llm-proxy and mcp-broker, called for the run's user.

pub mod agent_graph;
pub mod manager;
pub mod output;
pub mod peers;
pub mod state;

pub use manager::{ExecuteRequest, Runs, Started};
pub use output::{OutputError, RunOutputs};
pub use peers::{Peers, PeersError};
