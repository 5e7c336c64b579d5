//! The runtime every agentmesh service shares, so each binary is only its own logic.
//!
//! - [`config`]: the seed's environment variables, typed and validated at start-up.
//! - [`telemetry`]: JSON logs with correlation ids, Prometheus metrics, OTLP traces.
//! - [`server`]: serve a tonic service with health, reflection, metrics, auth and drain.
//! - [`client`]: channels to other services behind the resilience stack, forwarding
//!   correlation id, trace context and deadline; [`balance`] spreads their calls over
//!   every replica of a peer, or hands them to a server of the same process without a
//!   socket (`agentmesh up`).
//! - [`error`]: the seed's error codes ↔ `tonic::Status` ↔ the REST error body.
//! - [`validate`]: the contract's field rules, enforced for every request.
//! - [`request`]: the prologue of every RPC handler (caller, field rules, ids).
//! - [`paging`]: the contract's paged lists (page tokens, limit and offset, totals).
//! - [`context`] and [`auth`]: what a request carries from hop to hop.
//! - [`binary`]: the `main` shared by the service binaries; [`background`]: work that
//!   lives as long as the server, and readiness following the store.
//! - [`bus`]: the event bus the configuration names; [`domain_events`]: a service's
//!   events built and published the same way everywhere.
//! - [`dependencies`]: each service's dependency health and breaker state-change events.
//! - [`deadlines`]: the contract's per-method maximum deadlines.

pub mod auth;
pub mod background;
pub mod balance;
pub mod binary;
pub mod bus;
pub mod client;
pub mod config;
pub mod context;
pub mod deadlines;
pub mod dependencies;
pub mod domain_events;
pub mod error;
mod in_process;
pub mod paging;
pub mod request;
pub mod secrets;
pub mod server;
pub mod telemetry;
pub mod validate;

pub use config::{Config, ServiceName};
pub use context::RequestContext;
pub use dependencies::{Dependency, DependencyHealth};
pub use error::{ApiError, ErrorCode};
pub use server::{GrpcServer, ServerError, bind, shutdown_signal};
