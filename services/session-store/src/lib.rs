//! session-store: owns sessions and messages (ARCHITECTURE §2).
//!
//! Serves `agentmesh.session.v1.SessionService` over one of three backends chosen by
//! `USE_DATABASE` / `USE_REDIS` / `USE_MEMORY` (see [`store`]), publishes its domain events
//! (see [`events`]), and accepts only calls carrying a principal signed by a minter
//! (gateway, agent-orchestrator) from the actors it serves (gateway, agent-orchestrator);
//! see `agentmesh_runtime::auth`. It reports its store and event bus as dependencies
//! (with the store's breaker, whose state changes become `agentmesh.breaker.state_changed`
//! events).

pub mod convert;
pub mod events;
pub mod idempotency;
pub mod message_rules;
pub mod service;
pub mod settings;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use agentmesh_events::{EventBus, Publisher};
use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;
use agentmesh_proto::agentmesh::session::v1::session_service_server::SessionServiceServer;
use agentmesh_runtime::background::{BackgroundTasks, follow_storage};
use agentmesh_runtime::config::{ConfigError, ServiceSettings, SettingsSpec, StorageBackend};
use agentmesh_runtime::{Config, Dependency, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;
use tonic::server::NamedService;

use crate::events::PublishDirect;
use crate::idempotency::IdempotencyStore;
use crate::service::SessionService;
use crate::settings::SessionLimits;
use crate::store::memory::MemoryStore;
use crate::store::postgres::{OutboxRelay, PoolSettings, PostgresStore};
use crate::store::redis::RedisStore;
use crate::store::{SessionStore, StoreError};

/// Key prefix of session-store's data in a shared Redis.
pub const REDIS_KEY_PREFIX: &str = "agentmesh:session-store:";

/// session-store's own PostgreSQL schema (ARCHITECTURE §2: one schema per service).
pub const POSTGRES_SCHEMA: &str = "session_store";

/// session-store's own settings, for every binary that runs it to register.
pub const SETTINGS: ServiceSettings =
    ServiceSettings { service: ServiceName::SessionStore, settings: &[SettingsSpec::of::<SessionLimits>()] };

/// Why session-store could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Serving failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The event bus could not be reached.
    #[error("event bus: {0}")]
    Events(#[from] agentmesh_events::EventsError),
    /// The storage backend could not be reached or prepared.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// session-store's own settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    let limits = config.settings::<SessionLimits>()?;
    let publisher: Arc<dyn Publisher> = bus.clone();
    let backend = open_backend(&config, publisher).await?;
    let service = SessionService::new(backend.store.clone(), backend.idempotency, limits)
        .with_bulk_operations(config.features.enable_bulk_operations);
    let server = GrpcServer::new(ServiceName::SessionStore, &config).add_service(SessionServiceServer::new(service));
    let dependencies = server.dependencies();
    dependencies.register(backend.dependency);
    agentmesh_runtime::bus::attach(&dependencies, &bus);

    // Background work lives exactly as long as the server: dropping `background` ends it.
    let background = BackgroundTasks::new();
    let store = backend.store;
    background.spawn(follow_storage(
        move || {
            let store = store.clone();
            async move { store.ping().await }
        },
        server.health_reporter(),
        <SessionServiceServer<SessionService> as NamedService>::NAME,
        config.observability.health_check_interval,
    ));
    if let Some(relay) = backend.relay {
        tokio::spawn(relay.run(background.stopped()));
    }
    server.serve(listener, shutdown).await?;
    Ok(())
}

/// A connected backend and the background work it needs.
struct Backend {
    store: Arc<dyn SessionStore>,
    idempotency: Arc<dyn IdempotencyStore>,
    /// PostgreSQL's outbox relay.
    relay: Option<OutboxRelay>,
    /// The backend as a reported dependency.
    dependency: Dependency,
}

/// The backend `USE_DATABASE` / `USE_REDIS` / `USE_MEMORY` selects.
async fn open_backend(config: &Config, publisher: Arc<dyn Publisher>) -> Result<Backend, StartError> {
    let sink = Arc::new(PublishDirect::new(publisher.clone()));
    Ok(match config.storage {
        StorageBackend::Memory => {
            let store = Arc::new(MemoryStore::new(sink));
            let dependency = store_dependency("memory", ExternalServiceType::Database, store.clone());
            Backend { store: store.clone(), idempotency: store, relay: None, dependency }
        }
        StorageBackend::Redis => {
            let redis = &config.redis;
            let url = redis.url();
            let store = RedisStore::connect(
                url.expose(),
                REDIS_KEY_PREFIX,
                redis.max_connections,
                redis.session_ttl,
                &config.resilience.database,
                sink,
            )
            .await?;
            let store = Arc::new(store);
            let dependency = store_dependency("redis", ExternalServiceType::Cache, store.clone())
                .with_resilience(store.resilience());
            Backend { store: store.clone(), idempotency: store, relay: None, dependency }
        }
        StorageBackend::Postgres => {
            let db = &config.database;
            let pool = PoolSettings { min: db.min_pool_size, max: db.max_pool_size, acquire_timeout: db.pool_timeout };
            let url = db.url();
            let store =
                PostgresStore::connect(url.expose(), POSTGRES_SCHEMA, pool, &config.resilience.database).await?;
            let relay = store.relay(publisher);
            let store = Arc::new(store);
            let dependency = store_dependency("postgresql", ExternalServiceType::Database, store.clone())
                .with_resilience(store.resilience());
            Backend { store: store.clone(), idempotency: store, relay: Some(relay), dependency }
        }
    })
}

/// The store as a dependency named `name`, probed with its `ping`.
fn store_dependency(name: &str, kind: ExternalServiceType, store: Arc<dyn SessionStore>) -> Dependency {
    Dependency::new(name, kind).with_probe(move || {
        let store = store.clone();
        async move { store.ping().await }
    })
}
