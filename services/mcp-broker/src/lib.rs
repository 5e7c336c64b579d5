//! mcp-broker: owns MCP servers and tools, and invokes them (ARCHITECTURE §2).
//!
//! Serves `agentmesh.mcp.v1.McpService`: the tool catalogue and the MCP server registry
//! ([`service`], with the registry's own input rules in [`rules`]) over memory or
//! PostgreSQL (`USE_DATABASE`, see [`store`]), publishing its domain events ([`events`]).
//! It talks to the servers through [`connection`], one reused session per server
//! ([`sessions`], secrets from secrets-broker through `agentmesh_runtime::secrets`), to discover their tools
//! and to invoke them ([`invoke`]), and checks each enabled server's health periodically
//! ([`server_health`]). A stdio server that exits is restarted with backoff ([`restart`]).
//! Sessions are closed on shutdown, so no stdio child outlives it; one killed with
//! `SIGKILL` takes its children with it (a parent-death signal), and the processes they
//! started are killed when a broker starts again (`MCP_STATE_DIR`, [`connection::ledger`]).
//!
//! Like every service it serves only calls carrying a signed principal and an actor it
//! serves: the agent-orchestrator (and the gateway on its public RPCs)
//! (`agentmesh_runtime::auth::actors`). It reports its store and event bus as
//! dependencies (with the store's breaker, whose state changes become
//! `agentmesh.breaker.state_changed` events).

pub mod connection;
pub mod convert;
pub mod events;
pub mod invoke;
pub mod restart;
pub mod rules;
pub mod server_health;
pub mod service;
pub mod sessions;
pub mod settings;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use agentmesh_events::{EventBus, Publisher};
use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;
use agentmesh_proto::agentmesh::mcp::v1::mcp_service_server::McpServiceServer;
use agentmesh_runtime::background::{BackgroundTasks, follow_storage};
use agentmesh_runtime::client::ClientError;
use agentmesh_runtime::config::{ConfigError, ServiceSettings, SettingsSpec, StorageBackend};
use agentmesh_runtime::{Config, Dependency, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;
use tonic::server::NamedService;

use crate::connection::{GroupLedger, Launcher, LedgerError};
use crate::events::{EventSink, PublishDirect};
use crate::service::McpBroker;
use crate::sessions::Sessions;
use crate::settings::{ClientSettings, RegistryLimits};
use crate::store::memory::MemoryStore;
use crate::store::postgres::{OutboxRelay, PoolSettings, PostgresStore};
use crate::store::{McpStore, StoreError};
use agentmesh_runtime::secrets::{SecretReader, SecretsBroker};

/// mcp-broker's own PostgreSQL schema (ARCHITECTURE §2: one schema per service).
pub const POSTGRES_SCHEMA: &str = "mcp_broker";

/// mcp-broker's own settings, for every binary that runs it to register.
pub const SETTINGS: ServiceSettings = ServiceSettings {
    service: ServiceName::McpBroker,
    settings: &[SettingsSpec::of::<RegistryLimits>(), SettingsSpec::of::<ClientSettings>()],
};

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
    /// The channel to secrets-broker could not be set up.
    #[error("secrets-broker client: {0}")]
    Client(#[from] ClientError),
    /// The state directory (`MCP_STATE_DIR`) cannot be used.
    #[error(transparent)]
    StateDir(#[from] LedgerError),
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

/// Serves mcp-broker on `listener`, publishing events to `bus`, until `shutdown`; secrets
/// are read from secrets-broker.
pub async fn serve(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let secrets: Arc<dyn SecretReader> = Arc::new(SecretsBroker::connect(&config, ServiceName::McpBroker)?);
    serve_with_secrets(config, bus, secrets, listener, shutdown).await
}

/// [`serve`], reading secrets with `secrets` (tests give a fake).
pub async fn serve_with_secrets(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    secrets: Arc<dyn SecretReader>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let limits = config.settings::<RegistryLimits>()?;
    let client_settings = config.settings::<ClientSettings>()?;
    let publisher: Arc<dyn Publisher> = bus.clone();
    let backend = open_backend(&config, publisher.clone()).await?;
    let server = GrpcServer::new(ServiceName::McpBroker, &config);
    let dependencies = server.dependencies();
    let check_interval = client_settings.health_check_interval;
    let launcher = if client_settings.stdio_enabled {
        // Before serving: what a broker killed with SIGKILL left running is killed first.
        Launcher::detect(Some(GroupLedger::open(&client_settings.state_dir)?))
    } else {
        Launcher::direct()
    };
    let sessions = Sessions::new(
        backend.store.clone(),
        launcher,
        Some(secrets),
        client_settings,
        config.resilience.mcp.clone(),
        Some(dependencies.clone()),
    );
    let events: Arc<dyn EventSink> = Arc::new(PublishDirect::new(publisher));
    let service = McpBroker::new(backend.store.clone(), limits, sessions.clone(), events);
    let server = server.add_service(McpServiceServer::new(service));
    dependencies.register(backend.dependency);
    agentmesh_runtime::bus::attach(&dependencies, &bus);

    // Background work lives exactly as long as the server: dropping `background` ends it.
    let background = BackgroundTasks::new();
    let store = backend.store.clone();
    background.spawn(follow_storage(
        move || {
            let store = store.clone();
            async move { store.ping().await }
        },
        server.health_reporter(),
        <McpServiceServer<McpBroker> as NamedService>::NAME,
        config.observability.health_check_interval,
    ));
    background.spawn(server_health::watch(backend.store, sessions.clone(), check_interval));
    background.spawn(sessions.clone().follow_secret_changes());
    if let Some(relay) = backend.relay {
        tokio::spawn(relay.run(background.stopped()));
    }
    let served = server.serve(listener, shutdown).await;
    sessions.close_all().await;
    served?;
    Ok(())
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
            let relay = store.database().relay(publisher);
            let store = Arc::new(store);
            let dependency =
                store_dependency("postgresql", store.clone()).with_resilience(store.database().resilience());
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
