//! llm-proxy: the one way to an LLM provider (ARCHITECTURE §2, §5).
//!
//! Serves `agentmesh.llm.v1.LlmService` over OpenAI, Azure OpenAI, Anthropic, Gemini, any
//! OpenAI-compatible server and a scripted provider ([`provider`]), behind one request
//! shape, with fallback chains, per-model breakers, retries and first-token timeouts
//! ([`proxy`]), requests- and tokens-per-minute limits ([`limits`]), keys from
//! secrets-broker ([`keys`]) and usage accounting ([`usage`]).
//!
//! Like every service it serves only calls carrying a signed principal and an actor it
//! serves: the agent-orchestrator (`agentmesh_runtime::auth::actors`). Usage is attributed
//! to that principal and its run.

pub mod assemble;
pub mod catalog;
pub mod keys;
pub mod limits;
pub mod provider;
pub mod proxy;
pub mod rules;
pub mod service;
pub mod settings;
pub mod usage;

use std::future::Future;
use std::sync::Arc;

use agentmesh_events::{EventBus, Publisher};
use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;
use agentmesh_proto::agentmesh::llm::v1::llm_service_server::LlmServiceServer;
use agentmesh_ratelimit::{MemoryRateLimiter, RateLimitError, RateLimiter, RedisRateLimiter, RedisRateLimiterOptions};
use agentmesh_runtime::background::BackgroundTasks;
use agentmesh_runtime::client::ClientError;
use agentmesh_runtime::config::{ConfigError, ServiceSettings, SettingsSpec};
use agentmesh_runtime::{Config, Dependency, DependencyHealth, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;

use crate::catalog::Catalog;
use agentmesh_runtime::secrets::{SecretReader, SecretsBroker};

use crate::keys::Keys;
use crate::limits::Limits;
use crate::proxy::{Proxy, ProxyOptions};
use crate::service::LlmProxyService;
use crate::settings::LlmSettings;
use crate::usage::UsageRecorder;

/// This service's own settings.
pub const SETTINGS: ServiceSettings =
    ServiceSettings { service: ServiceName::LlmProxy, settings: &[SettingsSpec::of::<LlmSettings>()] };

/// Why llm-proxy could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Serving failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The event bus could not be reached.
    #[error("event bus: {0}")]
    Events(#[from] agentmesh_events::EventsError),
    /// llm-proxy's settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The shared rate limiter (Redis) could not be set up.
    #[error("rate limiter: {0}")]
    RateLimit(#[from] RateLimitError),
    /// The secrets-broker channel could not be set up.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Runs llm-proxy as its own process: connects the event bus, then [`serve`]s.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let bus = agentmesh_runtime::bus::connect_bus(&config).await?;
    serve(config, bus, listener, shutdown).await
}

/// Serves llm-proxy on `listener`, publishing usage to `bus`, until `shutdown`.
pub async fn serve(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let server = GrpcServer::new(ServiceName::LlmProxy, &config);
    let dependencies = server.dependencies();
    agentmesh_runtime::bus::attach(&dependencies, &bus);
    let publisher: Arc<dyn Publisher> = bus;
    let proxy = build(&config, Some(publisher), &dependencies).await?;
    // Lives while serving: rotated provider keys are dropped as secrets-broker announces them.
    let background = BackgroundTasks::new();
    if let Some(follow) = proxy.keys().follow_changes() {
        background.spawn(follow);
    }
    for line in proxy.catalog().notice().lines().filter(|line| !line.is_empty()) {
        tracing::warn!("{line}");
    }
    for model in proxy.catalog().unserved_models() {
        tracing::warn!(model, "configured model names no configured provider; it is skipped");
    }
    let providers: Vec<&str> = proxy.catalog().providers().map(|p| p.name()).collect();
    tracing::info!(?providers, default_model = proxy.catalog().default_model(), "llm-proxy providers");
    server.add_service(LlmServiceServer::new(LlmProxyService::new(Arc::new(proxy)))).serve(listener, shutdown).await?;
    Ok(())
}

/// The proxy `config` describes, publishing usage to `publisher` and reporting its
/// providers and rate limiter in `dependencies`.
pub async fn build(
    config: &Config,
    publisher: Option<Arc<dyn Publisher>>,
    dependencies: &DependencyHealth,
) -> Result<Proxy, StartError> {
    let settings = config.settings::<LlmSettings>()?;
    let mut catalog = Catalog::from_settings(&settings, &config.features);
    let broker: Arc<dyn SecretReader> = Arc::new(SecretsBroker::connect(config, ServiceName::LlmProxy)?);
    let keys = Keys::new(&settings, Some(broker));
    catalog.discover_models(&keys).await;
    let limiter: Option<Arc<dyn RateLimiter>> = if !config.features.enable_rate_limiting {
        None
    } else if config.use_redis {
        let options = RedisRateLimiterOptions {
            prefix: config.rate_limit.redis_prefix.clone(),
            timeout: config.rate_limit.redis_timeout,
            ..RedisRateLimiterOptions::default()
        };
        let limiter = RedisRateLimiter::from_config(&config.redis, options).await?;
        dependencies.register(Dependency::new("redis", ExternalServiceType::Cache).with_breaker(limiter.breaker()));
        Some(Arc::new(limiter))
    } else {
        Some(Arc::new(MemoryRateLimiter::new()))
    };
    let limits =
        Limits::new(limiter, config.rate_limit.llm_requests_per_minute, config.rate_limit.llm_tokens_per_minute);
    let mut preset = config.resilience.llm.clone();
    preset.timeout = preset.timeout.max(settings.first_token_timeout);
    let options = ProxyOptions {
        default_max_tokens: settings.default_max_tokens,
        first_token_timeout: settings.first_token_timeout,
        stream_timeout: settings.stream_timeout,
        preset,
    };
    let usage = UsageRecorder::new(publisher, settings.prices.clone());
    let proxy = Proxy::new(catalog, keys, limits, usage, options).reporting_to(dependencies.clone());
    // The configured chain is reported from the start; other models once they are used.
    let configured =
        std::iter::once(proxy.catalog().default_model().to_owned()).chain(settings.fallback_models.iter().cloned());
    for model in configured {
        if let Ok(target) = proxy.catalog().resolve(&model, "model") {
            proxy.policy(&target.full_name);
        }
    }
    Ok(proxy)
}
