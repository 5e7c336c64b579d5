//! session-store: owns sessions and messages (ARCHITECTURE §2).
//!
//! Serves `agentmesh.session.v1.SessionService` over one of three backends chosen by
//! `USE_DATABASE` / `USE_REDIS` / `USE_MEMORY` (see [`store`]), publishes its domain events
//! (see [`events`]), and accepts only calls carrying a principal signed by the gateway.

pub mod convert;
pub mod events;
pub mod idempotency;
pub mod paging;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use agentmesh_events::{EventBus, Publisher};
use agentmesh_proto::agentmesh::session::v1::session_service_server::SessionServiceServer;
use agentmesh_runtime::auth::{PrincipalCodec, RequireSignedPrincipal};
use agentmesh_runtime::config::StorageBackend;
use agentmesh_runtime::{Config, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

use crate::events::PublishDirect;
use crate::idempotency::IdempotencyStore;
use crate::service::SessionService;
use crate::store::SessionStore;
use crate::store::memory::MemoryStore;

/// Why session-store could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Serving failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The event bus could not be reached.
    #[error("event bus: {0}")]
    Events(#[from] agentmesh_events::EventsError),
}

/// Runs session-store as its own process: connects the event bus from `NATS_URL` (or an
/// in-process bus), then [`serve`]s.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let bus = agentmesh_runtime::bus::connect_bus(&config).await?;
    serve(config, bus, listener, shutdown).await
}

/// Serves session-store on `listener`, publishing events to `bus`, until `shutdown`.
pub async fn serve(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let publisher: Arc<dyn Publisher> = bus;
    let (store, idempotency) = open_store(&config, publisher);
    let service = SessionService::new(store, idempotency, config.session_limits.clone());
    let authenticator = RequireSignedPrincipal::new(PrincipalCodec::new(config.security.secret_key.expose()));
    GrpcServer::new(ServiceName::SessionStore, &config)
        .with_authenticator(Arc::new(authenticator))
        .add_service(SessionServiceServer::new(service))
        .serve(listener, shutdown)
        .await?;
    Ok(())
}

fn open_store(config: &Config, publisher: Arc<dyn Publisher>) -> (Arc<dyn SessionStore>, Arc<dyn IdempotencyStore>) {
    let sink = Arc::new(PublishDirect::new(publisher));
    match config.storage {
        StorageBackend::Memory | StorageBackend::Redis | StorageBackend::Postgres => {
            let store = Arc::new(MemoryStore::new(sink));
            (store.clone(), store)
        }
    }
}
