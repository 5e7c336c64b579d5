//! gateway: the mesh's front door (ARCHITECTURE §3, §8).
//!
//! One port serves: the seed's REST API, transcoded generically from the contract
//! ([`routes`], [`json`], [`rest`]); native gRPC and grpc-web to the public RPCs of every
//! service, the gateway's own health and auth services included (passthrough); `/metrics`.
//! Callers are authenticated and rate-limited here and reach services with a principal
//! signed by the gateway's own Ed25519 key (minted once per caller per lifetime window)
//! and the gateway's actor token; CORS ([`browser`]) covers the whole port.

pub mod health;
pub mod json;
pub mod openapi;
pub mod ratelimit;
pub mod rest;
pub mod routes;
pub mod settings;
pub mod sse;
pub mod upstream;
pub mod ws;

pub mod auth;
pub mod browser;
pub mod client_addr;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::EventBus;
use agentmesh_proto::agentmesh::auth::v1::auth_service_server::AuthServiceServer;
use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;
use agentmesh_proto::agentmesh::health::v1::health_service_server::HealthServiceServer;
use agentmesh_resilience::Preset;
use agentmesh_runtime::auth::{Authenticate, MintError, ServiceIdentity};
use agentmesh_runtime::background::BackgroundTasks;
use agentmesh_runtime::balance::Discovery;
use agentmesh_runtime::client::{ClientError, ServiceChannel};
use agentmesh_runtime::config::{ConfigError, ServiceSettings, SettingsSpec, StorageBackend};
use agentmesh_runtime::context::new_correlation_id;
use agentmesh_runtime::deadlines::MethodDeadlines;
use agentmesh_runtime::secrets::SecretsBroker;
use agentmesh_runtime::{Config, Dependency, DependencyHealth, GrpcServer, ServerError, ServiceName};
use axum::extract::ws::WebSocketUpgrade;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tower::util::BoxCloneSyncService;

use crate::auth::GatewayAuth;
use crate::auth::service::AuthApi;
use crate::auth::signing::SigningKeys;
use crate::client_addr::ClientAddresses;
use crate::health::MeshHealth;
use crate::ratelimit::{MemoryRateLimiter, RateLimitPolicy, RateLimiter, RedisRateLimiter, RedisRateLimiterOptions};
use crate::rest::RestGateway;
use crate::routes::{RouteError, RouteTable};
use crate::settings::{GatewaySettings, JwtKeySource};
use crate::upstream::Upstreams;
use crate::ws::WsLimits;

/// Largest REST request body (the seed sets none; 1 MiB fits 100 bulk sessions with metadata).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The services behind the gateway.
const BACKENDS: [ServiceName; 5] = [
    ServiceName::SessionStore,
    ServiceName::AgentOrchestrator,
    ServiceName::LlmProxy,
    ServiceName::McpBroker,
    ServiceName::SecretsBroker,
];

/// The gateway's own settings, for every binary that runs it to register.
pub const SETTINGS: ServiceSettings =
    ServiceSettings { service: ServiceName::Gateway, settings: &[SettingsSpec::of::<settings::GatewaySettings>()] };

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Serving failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A peer URL is unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The contract has a route the gateway cannot serve.
    #[error("contract: {0}")]
    Route(#[from] RouteError),
    /// The event bus could not be reached.
    #[error("event bus: {0}")]
    Events(#[from] agentmesh_events::EventsError),
    /// The API key store could not be opened.
    #[error("api keys: {0}")]
    Keys(#[from] auth::store::StoreError),
    /// This service's key may not sign principals.
    #[error("identity: {0}")]
    Identity(#[from] MintError),
    /// The shared rate limiter could not be set up.
    #[error("rate limiter: {0}")]
    RateLimit(#[from] ratelimit::RateLimitError),
    /// The gateway's settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token-signing key could not be read from secrets-broker.
    #[error(transparent)]
    SigningKey(#[from] auth::signing::SigningKeyError),
}

/// Runs the gateway as its own process.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let bus = agentmesh_runtime::bus::connect_bus(&config).await?;
    serve(config, bus, listener, shutdown).await
}

/// Serves the gateway on `listener` until `shutdown`.
pub async fn serve(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let server = GrpcServer::new(ServiceName::Gateway, &config);
    let dependencies = server.dependencies();
    agentmesh_runtime::bus::attach(&dependencies, &bus);
    let deadlines = MethodDeadlines::from_contract(config.server.request_timeout);
    let identity = ServiceIdentity::from_config(&config, ServiceName::Gateway);
    let mut upstreams = Upstreams::default();
    let mut channels = Vec::new();
    let discovery = Discovery::new(config.peers.clone());
    for service in BACKENDS {
        let url = &config.endpoints.get(service).url;
        let preset = backend_preset(&config, service, &deadlines);
        let channel = ServiceChannel::connect_with(service.as_str(), url, &preset, &discovery)?.acting_as(&identity);
        // Reported as the service's own entry; its state changes are events all the same.
        dependencies.watch_breaker(channel.policy().breaker(), ExternalServiceType::Unspecified);
        upstreams.insert(service, BoxCloneSyncService::new(channel.clone()));
        channels.push((service, channel));
    }
    let health = HealthServiceServer::new(MeshHealth {
        services: channels,
        bus,
        dependencies: dependencies.clone(),
        check_timeout: config.observability.health_check_timeout,
    });
    let authenticator = Arc::new(GatewayAuth::connect(&config).await?);
    // Lives while serving: the token-signing key followed as it rotates.
    let background = BackgroundTasks::new();
    let settings = config.settings::<GatewaySettings>()?;
    if settings.jwt_key_source == JwtKeySource::SecretsBroker {
        let reader = SecretsBroker::connect(&config, ServiceName::Gateway)?;
        let overlap = settings.jwt_key_overlap.unwrap_or(config.security.access_token_expire);
        let keys = SigningKeys::new(authenticator.jwt().clone(), reader, overlap);
        keys.load(settings.jwt_key_wait).await?;
        background.spawn(keys.follow());
    }
    if config.storage == StorageBackend::Postgres {
        let keys = authenticator.store().clone();
        // A point lookup of an id no key has: one indexed read of the key table.
        dependencies.register(Dependency::new("postgresql", ExternalServiceType::Database).with_probe(move || {
            let keys = keys.clone();
            async move { keys.get(uuid::Uuid::nil()).await.map(|_| ()) }
        }));
    }
    let auth = AuthServiceServer::new(AuthApi::new(authenticator.clone()));
    let mut local = Routes::builder();
    local.add_service(health).add_service(auth);
    upstreams.insert(ServiceName::Gateway, BoxCloneSyncService::new(local.routes()));

    let authenticator_for_grpc: Arc<dyn Authenticate> = authenticator.clone();
    let rest = Arc::new(RestGateway {
        routes: RouteTable::from_pool(agentmesh_proto::descriptor_pool())?,
        upstreams,
        authenticator: authenticator.clone(),
        principals: Arc::new(identity.principal_minter()?),
        max_body_bytes: MAX_BODY_BYTES,
        deadlines,
        streaming: config.features.enable_streaming,
        limiter: rate_limiter(&config, &dependencies).await?,
        rate_limits: RateLimitPolicy::from_config(&config),
        client_addresses: ClientAddresses::new(config.client_address),
    });
    let mut http = axum::Router::new().merge(openapi::router(&rest.routes));
    if config.features.enable_websockets {
        let limits = Arc::new(WsLimits::new(
            config.rate_limit.websocket_connections_per_ip,
            config.rate_limit.websocket_messages_per_minute,
        ));
        let gateway = rest.clone();
        http = http.route(
            ws::PATH,
            axum::routing::get(move |upgrade: WebSocketUpgrade, request: axum::extract::Request| {
                let (gateway, limits) = (gateway.clone(), limits.clone());
                async move {
                    let ip = gateway.client_ip(&request);
                    ws::upgrade(gateway, limits, upgrade, request.headers(), request.uri().query(), ip)
                        .await
                        .unwrap_or_else(|error| rest::error_response(&error, &new_correlation_id(), ws::PATH))
                }
            }),
        );
    }
    // Reflection lists the public services reached through passthrough beside the gateway's own.
    let passed_through: Vec<String> = rest
        .routes
        .services()
        .into_iter()
        .filter(|name| routes::owner_of(name) != Some(ServiceName::Gateway))
        .collect();
    let [nosniff, no_frames, no_referrer] = browser::security_headers();
    let http = http
        .fallback(move |request: axum::extract::Request| rest.clone().dispatch(request))
        .layer(nosniff)
        .layer(no_frames)
        .layer(no_referrer);
    // The gateway's own gRPC services are reached through passthrough like every other
    // public RPC, so native gRPC and grpc-web callers meet the same scope checks and rate
    // limits as REST ones (an unlimited `IssueToken` would invite key guessing).
    let mut server = server
        .with_authenticator(authenticator_for_grpc)
        .report_serving(<HealthServiceServer<MeshHealth> as NamedService>::NAME)
        .report_serving(<AuthServiceServer<AuthApi> as NamedService>::NAME);
    for name in passed_through {
        server = server.reflect_service(name);
    }
    server
        .with_http_fallback(http)
        .accept_grpc_web()
        .with_cors(browser::cors(&config.security))
        .serve(listener, shutdown)
        .await?;
    Ok(())
}

/// The resilience settings for calls to `service`: the internal preset, with the LLM
/// deadline for services whose calls wait on a model or a tool.
/// The timeout also covers the longest unary call the contract lets a caller wait for
/// (`ExecuteAgent`: 600 s); each call is still bounded by its own, usually shorter,
/// deadline, so CRUD calls keep failing at theirs.
fn backend_preset(config: &Config, service: ServiceName, deadlines: &MethodDeadlines) -> Preset {
    let internal = &config.resilience.internal;
    let timeout = match service {
        ServiceName::AgentOrchestrator | ServiceName::LlmProxy | ServiceName::McpBroker => {
            internal.timeout.max(config.resilience.llm.timeout)
        }
        _ => internal.timeout,
    };
    let timeout = longest_unary_call(service, deadlines).map_or(timeout, |longest| timeout.max(longest));
    Preset { timeout, ..internal.clone() }
}

/// The largest maximum deadline the contract declares for a unary RPC `service` owns. A
/// stream's channel timeout only covers opening it, so streams do not count.
fn longest_unary_call(service: ServiceName, deadlines: &MethodDeadlines) -> Option<Duration> {
    agentmesh_proto::descriptor_pool()
        .services()
        .filter(|contract| routes::owner_of(contract.full_name()) == Some(service))
        .flat_map(|contract| contract.methods().collect::<Vec<_>>())
        .filter(|method| !method.is_server_streaming())
        .filter_map(|method| deadlines.declared(&format!("/{}/{}", method.parent_service().full_name(), method.name())))
        .max()
}

/// Rate-limit counters in Redis when `USE_REDIS` is set (shared by every gateway replica
/// using the same `RATE_LIMIT_REDIS_PREFIX`), else in this process.
async fn rate_limiter(config: &Config, dependencies: &DependencyHealth) -> Result<Arc<dyn RateLimiter>, StartError> {
    if config.use_redis {
        let options = RedisRateLimiterOptions {
            prefix: config.rate_limit.redis_prefix.clone(),
            timeout: config.rate_limit.redis_timeout,
            ..RedisRateLimiterOptions::default()
        };
        let limiter = RedisRateLimiter::from_config(&config.redis, options).await?;
        dependencies.register(Dependency::new("redis", ExternalServiceType::Cache).with_breaker(limiter.breaker()));
        Ok(Arc::new(limiter))
    } else {
        Ok(Arc::new(MemoryRateLimiter::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_allow_the_longest_unary_call_their_service_declares() {
        let config = Config::load(None, []).expect("defaults load");
        let deadlines = MethodDeadlines::from_contract(config.server.request_timeout);
        let timeout = |service| backend_preset(&config, service, &deadlines).timeout;
        assert_eq!(timeout(ServiceName::AgentOrchestrator), Duration::from_secs(600), "ExecuteAgent");
        assert_eq!(timeout(ServiceName::McpBroker), Duration::from_secs(300), "InvokeTool");
        assert_eq!(timeout(ServiceName::LlmProxy), Duration::from_secs(300), "Chat");
        // No long unary call: today's presets (WatchSecrets is a stream).
        assert_eq!(timeout(ServiceName::SessionStore), config.resilience.internal.timeout);
        assert_eq!(timeout(ServiceName::SecretsBroker), config.resilience.internal.timeout);
    }
}
