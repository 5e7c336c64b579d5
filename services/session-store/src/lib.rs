//! session-store: owns sessions and messages (ARCHITECTURE §2).
//!
//! Serves `agentmesh.session.v1.SessionService`. Storage backends and the RPCs arrive with
//! the session-store issue; until then every RPC answers UNIMPLEMENTED.

use std::future::Future;
use std::sync::Arc;

use agentmesh_proto::agentmesh::session::v1::session_service_server::{SessionService, SessionServiceServer};
use agentmesh_runtime::{Config, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

/// Serves this service on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    GrpcServer::new(ServiceName::SessionStore, &config)
        .add_service(SessionServiceServer::new(SessionStore))
        .serve(listener, shutdown)
        .await
}

/// The `SessionService` implementation.
#[derive(Debug, Clone, Copy)]
pub struct SessionStore;

#[tonic::async_trait]
impl SessionService for SessionStore {}
