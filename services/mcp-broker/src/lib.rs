//! mcp-broker: owns MCP servers and tools, and invokes them (ARCHITECTURE §2).
//!
//! Serves `agentmesh.mcp.v1.McpService`. Registry and transports arrive with the
//! mcp-broker issue; until then every RPC answers UNIMPLEMENTED.
//!
//! Like every service it serves only calls carrying a signed principal and an actor it
//! serves: the agent-orchestrator (and the gateway on its public RPCs) (`agentmesh_runtime::auth::actors`).

pub mod connection;

use std::future::Future;
use std::sync::Arc;

use agentmesh_proto::agentmesh::mcp::v1::mcp_service_server::{McpService, McpServiceServer};
use agentmesh_runtime::config::ServiceSettings;
use agentmesh_runtime::{Config, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

/// This service's own settings: none yet (they arrive with the service).
pub const SETTINGS: ServiceSettings = ServiceSettings { service: ServiceName::McpBroker, settings: &[] };

/// Serves this service on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    GrpcServer::new(ServiceName::McpBroker, &config)
        .add_service(McpServiceServer::new(McpBroker))
        .serve(listener, shutdown)
        .await
}

/// The `McpService` implementation.
#[derive(Debug, Clone, Copy)]
pub struct McpBroker;

#[tonic::async_trait]
impl McpService for McpBroker {}
