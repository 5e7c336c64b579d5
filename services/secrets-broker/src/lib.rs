//! secrets-broker: every other service's credentials, from one place (ARCHITECTURE §2).
//!
//! Serves `agentmesh.secrets.v1.SecretsService`: reads the configured [`provider`]
//! (`local`: the environment and a watched file; AWS, Azure and GCP behind cargo
//! features) through a [`cache`] with the seed's 300 s TTL, refreshed ahead and served
//! stale while the provider is down; checks each call against the [`policy`] for the
//! caller's verified identity; [`audit`]s every access; and pushes [`changes`] to
//! watchers, so llm-proxy and mcp-broker use a rotated key without a restart.
//!
//! Like every service it serves only calls carrying a signed principal and an actor it
//! serves (`agentmesh_runtime::auth::actors`).

pub mod audit;
pub mod cache;
pub mod changes;
pub mod policy;
pub mod provider;
pub mod service;
pub mod settings;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::EventBus;
use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;
use agentmesh_proto::agentmesh::secrets::v1::secrets_service_server::SecretsServiceServer;
use agentmesh_resilience::Resilience;
use agentmesh_runtime::background::BackgroundTasks;
use agentmesh_runtime::config::{ConfigError, ServiceSettings, SettingsSpec};
use agentmesh_runtime::{Config, Dependency, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

use crate::cache::SecretCache;
use crate::changes::ChangeHub;
use crate::provider::SharedProvider;
use crate::service::{PROVIDER_TARGET, SecretsBroker};
use crate::settings::SecretsSettings;

/// This service's own settings.
pub const SETTINGS: ServiceSettings =
    ServiceSettings { service: ServiceName::SecretsBroker, settings: &[SettingsSpec::of::<SecretsSettings>()] };

/// Longest pause between two refresh-ahead passes.
const MAX_REFRESH_PASS: Duration = Duration::from_secs(5);

/// Why secrets-broker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Serving failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The event bus could not be reached.
    #[error("event bus: {0}")]
    Events(#[from] agentmesh_events::EventsError),
    /// secrets-broker's own settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The provider could not be set up.
    #[error(transparent)]
    Provider(#[from] provider::OpenError),
}

/// Runs secrets-broker as its own process: connects the event bus from `NATS_URL` (or an
/// in-process bus), then [`serve`]s.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let bus = agentmesh_runtime::bus::connect_bus(&config).await?;
    serve(config, bus, listener, shutdown).await
}

/// Serves secrets-broker on `listener`, auditing and announcing rotations on `bus`, until
/// `shutdown`; the provider is the one configured (`SECRET_PROVIDER`).
pub async fn serve(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let settings = config.settings::<SecretsSettings>()?;
    // Lives while serving: the local file's watcher runs here.
    let watchers = BackgroundTasks::new();
    let provider = provider::open(&settings, &watchers).await?;
    serve_provider(config, bus, provider, listener, shutdown).await
}

/// [`serve`] with `provider` in place of the configured one (tests give their own).
pub async fn serve_provider(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    provider: SharedProvider,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let settings = Arc::new(config.settings::<SecretsSettings>()?);
    let resilience = Resilience::new(PROVIDER_TARGET, &config.resilience.secret);
    let cache = SecretCache::new(provider.clone(), resilience.clone(), settings.cache_ttl, settings.stale_limit);
    let changes = ChangeHub::new(cache.clone(), settings.clone());

    let server = GrpcServer::new(ServiceName::SecretsBroker, &config);
    let dependencies = server.dependencies();
    dependencies
        .register(Dependency::new(PROVIDER_TARGET, ExternalServiceType::SecretManager).with_resilience(&resilience));
    agentmesh_runtime::bus::attach(&dependencies, &bus);

    // Background work lives exactly as long as the server: dropping `background` ends it.
    let background = BackgroundTasks::new();
    if let Some(provider_changes) = provider.changes() {
        background.spawn(changes.clone().follow(provider_changes));
    }
    background.spawn(changes.clone().follow(cache.changes()));
    background.spawn(changes.clone().follow_bus(bus.clone()));
    if settings.auto_refresh {
        let pass = (settings.cache_ttl / 10).min(MAX_REFRESH_PASS);
        background.spawn(cache.clone().refresh_loop(pass));
    }

    let service = SecretsBroker::new(settings, cache, changes, bus, config.is_production());
    server.add_service(SecretsServiceServer::new(service)).serve(listener, shutdown).await?;
    Ok(())
}
