//! mcp-broker: owns MCP servers and tools, and invokes them (ARCHITECTURE §2).
//!
//! Serves `agentmesh.mcp.v1.McpService`: the tool catalogue and the MCP server registry
//! ([`service`], with the registry's own input rules in [`rules`]) over memory or
//! PostgreSQL (`USE_DATABASE`, see [`store`]), publishing its domain events ([`events`]).
//! Discovery and `InvokeTool` arrive with the MCP client; until then they answer
//! UNIMPLEMENTED.
//!
//! Like every service it serves only calls carrying a signed principal and an actor it
//! serves: the agent-orchestrator (and the gateway on its public RPCs)
//! (`agentmesh_runtime::auth::actors`). It reports its store and event bus as
//! dependencies (with the store's breaker, whose state changes become
//! `agentmesh.breaker.state_changed` events).

pub mod convert;
pub mod events;
pub mod health;
pub mod paging;
pub mod rules;
pub mod service;
pub mod settings;
pub mod store;

pub mod connection;

use std::future::Future;
use std::sync::Arc;

use agentmesh_events::{EventBus, Publisher};
use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;
use agentmesh_proto::agentmesh::mcp::v1::mcp_service_server::McpServiceServer;
use agentmesh_runtime::config::{ConfigError, ServiceSettings, SettingsSpec, StorageBackend};
use agentmesh_runtime::{Config, Dependency, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

use crate::events::PublishDirect;
use crate::service::McpBroker;
use crate::settings::RegistryLimits;
use crate::store::memory::MemoryStore;
use crate::store::postgres::{OutboxRelay, PoolSettings, PostgresStore};
use crate::store::{McpStore, StoreError};

/// mcp-broker's own PostgreSQL schema (ARCHITECTURE §2: one schema per service).
pub const POSTGRES_SCHEMA: &str = "mcp_broker";

/// mcp-broker's own settings, for every binary that runs it to register.
pub const SETTINGS: ServiceSettings =
    ServiceSettings { service: ServiceName::McpBroker, settings: &[SettingsSpec::of::<RegistryLimits>()] };

/// Why mcp-broker could not start or stopped.
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
    /// mcp-broker's own settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Runs mcp-broker as its own process: connects the event bus from `NATS_URL` (or an
/// in-process bus), then [`serve`]s.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let bus = agentmesh_runtime::bus::connect_bus(&config).await?;
    serve(config, bus, listener, shutdown).await
}

/// Serves mcp-broker on `listener`, publishing events to `bus`, until `shutdown`.
pub async fn serve(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let limits = config.settings::<RegistryLimits>()?;
    let publisher: Arc<dyn Publisher> = bus.clone();
    let backend = open_backend(&config, publisher.clone()).await?;
    let service = McpBroker::new(backend.store.clone(), limits);
    let server = GrpcServer::new(ServiceName::McpBroker, &config).add_service(McpServiceServer::new(service));
    let dependencies = server.dependencies();
    dependencies.register(backend.dependency);
    dependencies.register(agentmesh_runtime::bus::dependency(&bus));
    dependencies.publish_breaker_changes(publisher);

    // Background work lives exactly as long as the server: dropping `_stop` ends it.
    let (_stop, stopped) = tokio::sync::watch::channel(());
    let watch_health =
        health::watch(backend.store, server.health_reporter(), config.observability.health_check_interval);
    tokio::spawn(until(stopped.clone(), watch_health));
    if let Some(relay) = backend.relay {
        tokio::spawn(relay.run(until(stopped, std::future::pending::<()>())));
    }
    server.serve(listener, shutdown).await?;
    Ok(())
}

/// Runs `work` until the sender of `stop` is dropped.
async fn until(mut stop: tokio::sync::watch::Receiver<()>, work: impl Future<Output = ()>) {
    tokio::select! {
        () = work => {}
        _ = stop.changed() => {}
    }
}

/// A connected backend and the background work it needs.
struct Backend {
    store: Arc<dyn McpStore>,
    /// PostgreSQL's outbox relay.
    relay: Option<OutboxRelay>,
    /// The backend as a reported dependency.
    dependency: Dependency,
}

/// The backend `USE_DATABASE` selects: PostgreSQL, else memory (Redis, which
/// session-store can use, holds no registry: `USE_REDIS` alone means memory here).
async fn open_backend(config: &Config, publisher: Arc<dyn Publisher>) -> Result<Backend, StartError> {
    Ok(match config.storage {
        StorageBackend::Postgres => {
            let db = &config.database;
            let pool = PoolSettings { min: db.min_pool_size, max: db.max_pool_size, acquire_timeout: db.pool_timeout };
            let url = db.url();
            let store =
                PostgresStore::connect(url.expose(), POSTGRES_SCHEMA, pool, &config.resilience.database).await?;
            let relay = store.relay(publisher);
            let store = Arc::new(store);
            let dependency = store_dependency("postgresql", store.clone()).with_resilience(store.resilience());
            Backend { store, relay: Some(relay), dependency }
        }
        StorageBackend::Memory | StorageBackend::Redis => {
            if config.storage == StorageBackend::Redis {
                tracing::warn!(
                    "mcp-broker keeps its registry in memory: Redis is not one of its backends (USE_DATABASE is)"
                );
            }
            let store = Arc::new(MemoryStore::new(Arc::new(PublishDirect::new(publisher))));
            let dependency = store_dependency("memory", store.clone());
            Backend { store, relay: None, dependency }
        }
    })
}

/// The store as a dependency named `name`, probed with its `ping`.
fn store_dependency(name: &str, store: Arc<dyn McpStore>) -> Dependency {
    Dependency::new(name, ExternalServiceType::Database).with_probe(move || {
        let store = store.clone();
        async move { store.ping().await }
    })
}
