//! gateway: the mesh's front door (ARCHITECTURE §3, §8).
//!
//! Serves `agentmesh.health.v1.HealthService` and `agentmesh.auth.v1.AuthService` over
//! gRPC. REST transcoding, authentication and rate limits arrive with the gateway issue;
//! until then those RPCs answer UNIMPLEMENTED.

use std::future::Future;
use std::sync::Arc;

use agentmesh_proto::agentmesh::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use agentmesh_proto::agentmesh::health::v1::health_service_server::{HealthService, HealthServiceServer};
use agentmesh_runtime::{Config, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

/// Serves this service on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    GrpcServer::new(ServiceName::Gateway, &config)
        .add_service(HealthServiceServer::new(Gateway))
        .add_service(AuthServiceServer::new(Gateway))
        .serve(listener, shutdown)
        .await
}

/// The gateway's own gRPC services.
#[derive(Debug, Clone, Copy)]
pub struct Gateway;

#[tonic::async_trait]
impl HealthService for Gateway {}

#[tonic::async_trait]
impl AuthService for Gateway {}
