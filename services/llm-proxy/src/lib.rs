//! llm-proxy: the one way to an LLM provider (ARCHITECTURE §2, §5).
//!
//! Serves `agentmesh.llm.v1.LlmService`. Providers arrive with the llm-proxy issue; until
//! then every RPC answers UNIMPLEMENTED.
//!
//! Like every service it serves only calls carrying a signed principal and an actor it
//! serves: the agent-orchestrator (`agentmesh_runtime::auth::actors`).

use std::future::Future;
use std::sync::Arc;

use agentmesh_proto::agentmesh::llm::v1::llm_service_server::{LlmService, LlmServiceServer};
use agentmesh_runtime::config::ServiceSettings;
use agentmesh_runtime::{Config, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

/// This service's own settings: none yet (they arrive with the service).
pub const SETTINGS: ServiceSettings = ServiceSettings { service: ServiceName::LlmProxy, settings: &[] };

/// Serves this service on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    GrpcServer::new(ServiceName::LlmProxy, &config)
        .add_service(LlmServiceServer::new(LlmProxy))
        .serve(listener, shutdown)
        .await
}

/// The `LlmService` implementation.
#[derive(Debug, Clone, Copy)]
pub struct LlmProxy;

#[tonic::async_trait]
impl LlmService for LlmProxy {}
