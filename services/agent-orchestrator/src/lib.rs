//! agent-orchestrator: owns agents, runs and checkpoints (ARCHITECTURE §2, §7).
//!
//! Serves `agentmesh.agent.v1.AgentService`. The graph loop arrives with the
//! agent-orchestrator issue; until then every RPC answers UNIMPLEMENTED.
//!
//! Like every service it serves only calls carrying a signed principal and an actor it
//! serves: the gateway (`agentmesh_runtime::auth::actors`).

pub mod agents;
pub mod backend;
pub mod convert;
pub mod events;
pub mod paging;
pub mod rules;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use agentmesh_proto::agentmesh::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
use agentmesh_runtime::config::ServiceSettings;
use agentmesh_runtime::{Config, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

/// This service's own settings: none yet (they arrive with the service).
pub const SETTINGS: ServiceSettings = ServiceSettings { service: ServiceName::AgentOrchestrator, settings: &[] };

/// Serves this service on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    GrpcServer::new(ServiceName::AgentOrchestrator, &config)
        .add_service(AgentServiceServer::new(AgentOrchestrator))
        .serve(listener, shutdown)
        .await
}

/// The `AgentService` implementation.
#[derive(Debug, Clone, Copy)]
pub struct AgentOrchestrator;

#[tonic::async_trait]
impl AgentService for AgentOrchestrator {}
