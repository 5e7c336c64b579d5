//! agentmesh's all-in-one binary and command line.
//!
//! `agentmesh up` runs the six services of the mesh in one process, the first thing a new
//! user runs; each service is the same library code its own binary runs, so the
//! all-in-one process behaves like the deployed mesh. `agentmesh chat` talks to an agent
//! through the gateway's REST API, as a person at a terminal.

pub mod backends;
pub mod chat;
pub mod cli;
pub mod first_run;
pub mod keys;
pub mod migrate;
pub mod up;

use agentmesh_runtime::config::ServiceSettings;

/// The settings of all six services: `agentmesh` runs them all, so its configuration
/// file may set (and is checked against) every service's variables.
pub const SERVICES: [ServiceSettings; 6] = [
    agentmesh_secrets_broker::SETTINGS,
    agentmesh_session_store::SETTINGS,
    agentmesh_llm_proxy::SETTINGS,
    agentmesh_mcp_broker::SETTINGS,
    agentmesh_agent_orchestrator::SETTINGS,
    agentmesh_gateway::SETTINGS,
];
