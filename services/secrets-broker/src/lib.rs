//! secrets-broker: reads secret providers and caches them (ARCHITECTURE §2).
//!
//! Serves `agentmesh.secrets.v1.SecretsService`. Providers arrive with the secrets-broker
//! issue; until then every RPC answers UNIMPLEMENTED.
//!
//! Like every service it serves only calls carrying a signed principal and an actor it
//! serves: llm-proxy, mcp-broker and the agent-orchestrator (`agentmesh_runtime::auth::actors`).

pub mod cache;
pub mod policy;
pub mod provider;
pub mod settings;

use std::future::Future;
use std::sync::Arc;

use agentmesh_proto::agentmesh::secrets::v1::secrets_service_server::{SecretsService, SecretsServiceServer};
use agentmesh_runtime::config::ServiceSettings;
use agentmesh_runtime::{Config, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

/// This service's own settings: none yet (they arrive with the service).
pub const SETTINGS: ServiceSettings = ServiceSettings { service: ServiceName::SecretsBroker, settings: &[] };

/// Serves this service on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    GrpcServer::new(ServiceName::SecretsBroker, &config)
        .add_service(SecretsServiceServer::new(SecretsBroker))
        .serve(listener, shutdown)
        .await
}

/// The `SecretsService` implementation.
#[derive(Debug, Clone, Copy)]
pub struct SecretsBroker;

#[tonic::async_trait]
impl SecretsService for SecretsBroker {}
