//! llm-proxy: the one way to an LLM provider (ARCHITECTURE §2, §5).
//!
//! Serves `agentmesh.llm.v1.LlmService`. Like every service it serves only calls carrying a
//! signed principal and an actor it serves: the agent-orchestrator
//! (`agentmesh_runtime::auth::actors`).

pub mod provider;
pub mod settings;

use std::future::Future;
use std::sync::Arc;

use agentmesh_proto::agentmesh::llm::v1::llm_service_server::{LlmService, LlmServiceServer};
use agentmesh_runtime::config::{ServiceSettings, SettingsSpec};
use agentmesh_runtime::{Config, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

use crate::settings::LlmSettings;

/// This service's own settings.
pub const SETTINGS: ServiceSettings =
    ServiceSettings { service: ServiceName::LlmProxy, settings: &[SettingsSpec::of::<LlmSettings>()] };

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
