//! Typed configuration shared by every agentmesh binary.
//!
//! Variables keep the seed's names and prefixes (`ENVIRONMENT`, `HOST`, `PORT`, `DB_*`,
//! `REDIS_*`, `SECURITY_*`, `RETRY_*`, `CIRCUIT_*`, `RATE_LIMIT_*`, `OBSERVABILITY_*`,
//! `FEATURE_*`, `USE_MEMORY`/`USE_REDIS`/`USE_DATABASE`) so a deployment written for the
//! original plan configures this mesh unchanged. Values come from defaults (which depend on
//! `ENVIRONMENT`), then an optional dotenv-style file, then the environment; they are
//! validated once at start-up and every bad value is reported at once by its name.

mod identity;
mod vars;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agentmesh_resilience::{BreakerConfig, Preset, RetryPolicy};

use crate::auth::Tier;

pub use identity::IdentityConfig;
pub use vars::ConfigIssue;
use vars::Vars;

/// The seed's development secret key; refused in production.
pub const DEV_SECRET_KEY: &str = "dev-secret-key-change-in-production-32chars";

/// Shortest acceptable `SECURITY_SECRET_KEY` (seed: `min_length=32`).
pub const MIN_SECRET_KEY_LEN: usize = 32;

/// Deployment environment (`ENVIRONMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Laptops and `agentmesh up`: memory storage, verbose logs, the dev secret.
    Development,
    /// Automated test runs.
    Testing,
    /// Pre-production; validated like production except for the storage rule.
    Staging,
    /// Strict: persistent storage, a real secret, an explicit CORS allow-list.
    Production,
}

impl Environment {
    fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "development" | "dev" => Some(Self::Development),
            "testing" | "test" => Some(Self::Testing),
            "staging" => Some(Self::Staging),
            "production" | "prod" => Some(Self::Production),
            _ => None,
        }
    }

    /// The lowercase name, as the seed spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Testing => "testing",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }
}

/// A string that must not be printed: `Debug` shows `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no value was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

/// Where a storage-owning service keeps its data (`USE_MEMORY`/`USE_REDIS`/`USE_DATABASE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageBackend {
    /// In-process maps: fast, lost on restart.
    Memory,
    /// Redis with a TTL per session.
    Redis,
    /// PostgreSQL, the durable store.
    Postgres,
}

/// PostgreSQL settings (`DB_*`).
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DB_HOST`.
    pub host: String,
    /// `DB_PORT`.
    pub port: u16,
    /// `DB_NAME`.
    pub name: String,
    /// `DB_USER`.
    pub user: String,
    /// `DB_PASSWORD`.
    pub password: Secret,
    /// `DB_URL`: a full connection URL that overrides the parts above.
    pub url_override: Option<Secret>,
    /// `DB_MIN_POOL_SIZE`.
    pub min_pool_size: u32,
    /// `DB_MAX_POOL_SIZE`.
    pub max_pool_size: u32,
    /// `DB_POOL_TIMEOUT`: how long to wait for a pooled connection.
    pub pool_timeout: Duration,
    /// `DB_ECHO`: log every statement.
    pub echo: bool,
}

impl DatabaseConfig {
    /// The connection URL (contains the password: never log it).
    pub fn url(&self) -> Secret {
        if let Some(url) = &self.url_override {
            return url.clone();
        }
        let auth = if self.password.is_empty() {
            self.user.clone()
        } else {
            format!("{}:{}", self.user, self.password.expose())
        };
        Secret::new(format!("postgres://{auth}@{}:{}/{}", self.host, self.port, self.name))
    }
}

/// Redis settings (`REDIS_*`).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_HOST`.
    pub host: String,
    /// `REDIS_PORT`.
    pub port: u16,
    /// `REDIS_DB`.
    pub db: u32,
    /// `REDIS_PASSWORD`.
    pub password: Secret,
    /// `REDIS_URL`: a full connection URL that overrides the parts above.
    pub url_override: Option<Secret>,
    /// `REDIS_MAX_CONNECTIONS`: pool size.
    pub max_connections: u32,
    /// `REDIS_RETRY_ON_TIMEOUT`.
    pub retry_on_timeout: bool,
    /// `REDIS_HEALTH_CHECK_INTERVAL`.
    pub health_check_interval: Duration,
    /// `REDIS_SESSION_TTL`: how long an idle session lives in Redis (seed: one hour).
    pub session_ttl: Duration,
}

impl RedisConfig {
    /// The connection URL (contains the password: never log it).
    pub fn url(&self) -> Secret {
        if let Some(url) = &self.url_override {
            return url.clone();
        }
        let auth = if self.password.is_empty() { String::new() } else { format!(":{}@", self.password.expose()) };
        Secret::new(format!("redis://{auth}{}:{}/{}", self.host, self.port, self.db))
    }
}

/// NATS settings (`NATS_*`); without `NATS_URL` events stay on the in-process bus.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `NATS_URL`, e.g. `nats://127.0.0.1:4222`.
    pub url: Option<String>,
    /// `NATS_STREAM`: the JetStream stream holding every domain event.
    pub stream: String,
}

/// Retry, breaker, bulkhead and timeout settings for each class of dependency
/// (`RETRY_<CLASS>_*`, `CIRCUIT_<CLASS>_*`, `BULKHEAD_<CLASS>_*`, `TIMEOUT_<CLASS>`).
#[derive(Debug, Clone)]
pub struct ResilienceSettings {
    /// LLM providers (`RETRY_LLM_*`, `CIRCUIT_LLM_*`).
    pub llm: Preset,
    /// PostgreSQL and Redis (`RETRY_DB_*`, `CIRCUIT_DB_*`).
    pub database: Preset,
    /// MCP servers (`RETRY_MCP_*`, `CIRCUIT_MCP_*`).
    pub mcp: Preset,
    /// Secret stores (`RETRY_SECRET_*`, `CIRCUIT_SECRET_*`).
    pub secret: Preset,
    /// Service-to-service gRPC (`RETRY_INTERNAL_*`, `CIRCUIT_INTERNAL_*`).
    pub internal: Preset,
}

/// Rate limits (`RATE_LIMIT_*`), requests per minute unless named otherwise.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// `RATE_LIMIT_API_DEFAULT_LIMIT`: anonymous callers.
    pub api_default_limit: u32,
    /// `RATE_LIMIT_API_AUTHENTICATED_LIMIT`.
    pub api_authenticated_limit: u32,
    /// `RATE_LIMIT_API_PREMIUM_LIMIT`.
    pub api_premium_limit: u32,
    /// `RATE_LIMIT_CREATE_SESSION_LIMIT`: the seed's `10/minute` on session creation.
    pub create_session_limit: u32,
    /// `RATE_LIMIT_EXECUTE_AGENT_LIMIT`: the seed's `5/minute` on agent execution.
    pub execute_agent_limit: u32,
    /// `RATE_LIMIT_LLM_REQUESTS_PER_MINUTE`.
    pub llm_requests_per_minute: u32,
    /// `RATE_LIMIT_LLM_TOKENS_PER_MINUTE`.
    pub llm_tokens_per_minute: u32,
    /// `RATE_LIMIT_WEBSOCKET_CONNECTIONS_PER_IP`.
    pub websocket_connections_per_ip: u32,
    /// `RATE_LIMIT_WEBSOCKET_MESSAGES_PER_MINUTE`.
    pub websocket_messages_per_minute: u32,
    /// `RATE_LIMIT_REDIS_PREFIX`: prepended to every rate-limit key in Redis (default
    /// [`DEFAULT_RATE_LIMIT_REDIS_PREFIX`]); replicas enforcing one limit share it, and a
    /// distinct prefix keeps deployments (or tests) sharing one Redis apart.
    pub redis_prefix: String,
    /// `RATE_LIMIT_REDIS_TIMEOUT`: longest one rate-limit check waits for Redis before it
    /// fails open (default [`DEFAULT_RATE_LIMIT_REDIS_TIMEOUT`]).
    pub redis_timeout: Duration,
}

/// Default `RATE_LIMIT_REDIS_PREFIX`: the key prefix of production deployments.
pub const DEFAULT_RATE_LIMIT_REDIS_PREFIX: &str = "agentmesh:ratelimit:";

/// Default `RATE_LIMIT_REDIS_TIMEOUT`: short, because every request waits for the check.
pub const DEFAULT_RATE_LIMIT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// Security settings (`SECURITY_*`).
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// `SECURITY_SECRET_KEY`: signs JWTs and the principal passed between services.
    pub secret_key: Secret,
    /// `SECURITY_ALGORITHM`: JWT algorithm; only HS256 is supported.
    pub algorithm: String,
    /// `SECURITY_ACCESS_TOKEN_EXPIRE_MINUTES`.
    pub access_token_expire: Duration,
    /// `SECURITY_REFRESH_TOKEN_EXPIRE_DAYS`.
    pub refresh_token_expire: Duration,
    /// `SECURITY_API_KEY_LENGTH`: random characters after the prefix.
    pub api_key_length: usize,
    /// `SECURITY_API_KEY_PREFIX`.
    pub api_key_prefix: String,
    /// `SECURITY_CORS_ORIGINS`.
    pub cors_origins: Vec<String>,
    /// `SECURITY_CORS_METHODS`.
    pub cors_methods: Vec<String>,
    /// `SECURITY_CORS_HEADERS`.
    pub cors_headers: Vec<String>,
    /// `SECURITY_API_KEYS`: static development keys, `sk-…=user[:tier],…`; refused in
    /// production (they cannot be listed or revoked: use `agentmesh keys create` there).
    pub api_keys: Vec<StaticApiKey>,
}

/// One `SECURITY_API_KEYS` entry. `Debug` hides the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticApiKey {
    /// The full key, `sk-` followed by at least [`MIN_STATIC_KEY_RANDOM_CHARS`] characters.
    pub key: Secret,
    /// The user it authenticates as.
    pub user_id: String,
    /// Its tier (`default` unless given).
    pub tier: Tier,
}

/// Shortest random part (after the prefix) a `SECURITY_API_KEYS` key may have.
pub const MIN_STATIC_KEY_RANDOM_CHARS: usize = 32;

/// Log output format (`OBSERVABILITY_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// Observability settings (`OBSERVABILITY_*`).
#[derive(Debug, Clone)]
pub struct ObservabilityConfig {
    /// `OBSERVABILITY_LOG_LEVEL`: DEBUG, INFO, WARNING, ERROR or CRITICAL (seed names);
    /// applies to agentmesh's own crates. `RUST_LOG`, when set, wins.
    pub log_level: String,
    /// `OBSERVABILITY_LOG_FORMAT`: `json` or `text`.
    pub log_format: LogFormat,
    /// `OBSERVABILITY_METRICS_ENABLED`: serve Prometheus metrics.
    pub metrics_enabled: bool,
    /// `OBSERVABILITY_METRICS_PORT`: an extra listener for metrics only; 0 (default) means
    /// metrics are served on each service's own port only.
    pub metrics_port: u16,
    /// `OBSERVABILITY_METRICS_PATH`.
    pub metrics_path: String,
    /// `OBSERVABILITY_TRACING_ENABLED`.
    pub tracing_enabled: bool,
    /// `OBSERVABILITY_TRACING_SAMPLE_RATE`: fraction of traces kept, 0.0–1.0.
    pub tracing_sample_rate: f64,
    /// `OBSERVABILITY_TRACING_SERVICE_NAME`: prefix of every service's trace name.
    pub tracing_service_name: String,
    /// `OBSERVABILITY_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_ENDPOINT`): where traces go.
    /// Unset means no exporter.
    pub otlp_endpoint: Option<String>,
    /// `OBSERVABILITY_HEALTH_CHECK_TIMEOUT`.
    pub health_check_timeout: Duration,
    /// `OBSERVABILITY_HEALTH_CHECK_INTERVAL`.
    pub health_check_interval: Duration,
}

/// Feature flags (`FEATURE_*`), exactly the seed's set.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)]
pub struct FeatureFlags {
    /// `FEATURE_ENABLE_CIRCUIT_BREAKERS`.
    pub enable_circuit_breakers: bool,
    /// `FEATURE_ENABLE_RETRIES`.
    pub enable_retries: bool,
    /// `FEATURE_ENABLE_RATE_LIMITING`.
    pub enable_rate_limiting: bool,
    /// `FEATURE_ENABLE_FALLBACKS`.
    pub enable_fallbacks: bool,
    /// `FEATURE_ENABLE_WEBSOCKETS`.
    pub enable_websockets: bool,
    /// `FEATURE_ENABLE_STREAMING`.
    pub enable_streaming: bool,
    /// `FEATURE_ENABLE_BULK_OPERATIONS`.
    pub enable_bulk_operations: bool,
    /// `FEATURE_ENABLE_DETAILED_METRICS`.
    pub enable_detailed_metrics: bool,
    /// `FEATURE_ENABLE_REQUEST_TRACING`.
    pub enable_request_tracing: bool,
    /// `FEATURE_ENABLE_DEBUG_ENDPOINTS`.
    pub enable_debug_endpoints: bool,
    /// `FEATURE_ENABLE_MULTIPLE_LLM_PROVIDERS`.
    pub enable_multiple_llm_providers: bool,
    /// `FEATURE_ENABLE_PROVIDER_FALLBACK`.
    pub enable_provider_fallback: bool,
    /// `FEATURE_ENABLE_MCP_HOT_RELOAD`.
    pub enable_mcp_hot_reload: bool,
}

/// The six services of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    /// REST/gRPC entry point.
    Gateway,
    /// Sessions and messages.
    SessionStore,
    /// Agents and runs.
    AgentOrchestrator,
    /// LLM providers.
    LlmProxy,
    /// MCP servers and tools.
    McpBroker,
    /// Secret providers.
    SecretsBroker,
}

impl ServiceName {
    /// Every service, in start-up order (dependencies first, gateway last).
    pub const ALL: [ServiceName; 6] = [
        ServiceName::SecretsBroker,
        ServiceName::SessionStore,
        ServiceName::LlmProxy,
        ServiceName::McpBroker,
        ServiceName::AgentOrchestrator,
        ServiceName::Gateway,
    ];

    /// The kebab-case name used for binaries, logs, metrics and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::SessionStore => "session-store",
            Self::AgentOrchestrator => "agent-orchestrator",
            Self::LlmProxy => "llm-proxy",
            Self::McpBroker => "mcp-broker",
            Self::SecretsBroker => "secrets-broker",
        }
    }

    /// Prefix of this service's `<PREFIX>_ADDR` and `<PREFIX>_URL` variables.
    fn env_prefix(self) -> &'static str {
        match self {
            Self::Gateway => "GATEWAY",
            Self::SessionStore => "SESSION_STORE",
            Self::AgentOrchestrator => "AGENT_ORCHESTRATOR",
            Self::LlmProxy => "LLM_PROXY",
            Self::McpBroker => "MCP_BROKER",
            Self::SecretsBroker => "SECRETS_BROKER",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Gateway => 8080,
            Self::SessionStore => 50051,
            Self::AgentOrchestrator => 50052,
            Self::LlmProxy => 50053,
            Self::McpBroker => 50054,
            Self::SecretsBroker => 50055,
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one service listens and where its peers reach it.
#[derive(Debug, Clone)]
pub struct ServiceEndpoint {
    /// `<SERVICE>_ADDR`: the listen address (gateway: `HOST`:`PORT`).
    pub listen: SocketAddr,
    /// `<SERVICE>_URL`: how other services reach it, e.g. `http://session-store:50051`.
    pub url: String,
}

/// Listen addresses and peer URLs of all six services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    endpoints: Vec<(ServiceName, ServiceEndpoint)>,
}

impl Endpoints {
    /// The endpoint of `service`.
    pub fn get(&self, service: ServiceName) -> &ServiceEndpoint {
        let (_, endpoint) = self
            .endpoints
            .iter()
            .find(|(name, _)| *name == service)
            .unwrap_or_else(|| unreachable!("every service has an endpoint"));
        endpoint
    }

    /// Points `service`'s peers at `url` (the all-in-one binary binds ephemeral ports).
    pub fn set_url(&mut self, service: ServiceName, url: String) {
        if let Some((_, endpoint)) = self.endpoints.iter_mut().find(|(name, _)| *name == service) {
            endpoint.url = url;
        }
    }
}

/// Size limits of session-store input (`SESSION_*`), beyond the contract's own bounds.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// `SESSION_MAX_TITLE_LENGTH`: characters, at most the seed's 500 (the column size).
    pub max_title_length: usize,
    /// `SESSION_MAX_CONTENT_LENGTH`: characters of one message.
    pub max_content_length: usize,
    /// `SESSION_MAX_METADATA_BYTES`: serialized JSON size of one `metadata` object.
    pub max_metadata_bytes: usize,
    /// `SESSION_MAX_TOOL_CALLS`: entries of one message's `tool_calls`.
    pub max_tool_calls: usize,
}

/// Graceful-shutdown timing (`SERVER_*`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `SERVER_DRAIN_DELAY`: after reporting NOT_SERVING, keep accepting calls this long so
    /// load balancers notice before the listener closes.
    pub drain_delay: Duration,
    /// `SERVER_SHUTDOWN_GRACE_PERIOD`: how long in-flight calls may run once draining.
    pub shutdown_grace: Duration,
    /// `SERVER_REQUEST_TIMEOUT`: upper bound for one unary call when the client sets none.
    pub request_timeout: Duration,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ENVIRONMENT`.
    pub environment: Environment,
    /// `DEBUG`.
    pub debug: bool,
    /// `APP_NAME`.
    pub app_name: String,
    /// `WORKERS`: tokio worker threads (0 = one per core).
    pub workers: usize,
    /// Storage backend selected by `USE_DATABASE` / `USE_REDIS` / `USE_MEMORY`.
    pub storage: StorageBackend,
    /// `USE_REDIS`: Redis is available for shared state (rate limits) even when PostgreSQL
    /// holds the data.
    pub use_redis: bool,
    /// `DB_*`.
    pub database: DatabaseConfig,
    /// `REDIS_*`.
    pub redis: RedisConfig,
    /// `NATS_*`.
    pub nats: NatsConfig,
    /// `RETRY_*`, `CIRCUIT_*`, `BULKHEAD_*` and `TIMEOUT_*`.
    pub resilience: ResilienceSettings,
    /// `RATE_LIMIT_*`.
    pub rate_limit: RateLimitConfig,
    /// `SECURITY_*`.
    pub security: SecurityConfig,
    /// `OBSERVABILITY_*`.
    pub observability: ObservabilityConfig,
    /// `FEATURE_*`.
    pub features: FeatureFlags,
    /// Per-service listen addresses and peer URLs.
    pub endpoints: Endpoints,
    /// `SESSION_*`.
    pub session_limits: SessionLimits,
    /// `SERVER_*`.
    pub server: ServerConfig,
    /// `SECURITY_SERVICE_KEY`, `SECURITY_TRUSTED_KEYS`: the mesh's own keys.
    pub identity: IdentityConfig,
}

/// Configuration could not be loaded: every bad value, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// Each problem, named by its variable.
    pub issues: Vec<ConfigIssue>,
}

/// Names the optional configuration file; its variables sit under the environment's.
pub const CONFIG_FILE_ENV: &str = "AGENTMESH_CONFIG_FILE";

impl Config {
    /// Loads from the process environment and the file named by `AGENTMESH_CONFIG_FILE`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let file = std::env::var_os(CONFIG_FILE_ENV);
        Self::load(file.as_deref().map(Path::new), std::env::vars())
    }

    /// Loads from explicit sources: `file` first, then `env` on top. Tests use this.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut vars = Vars::load(file, env);
        let config = Self::parse(&mut vars);
        config.validate(&mut vars);
        if vars.issues.is_empty() { Ok(config) } else { Err(ConfigError { issues: vars.issues }) }
    }

    fn parse(v: &mut Vars) -> Self {
        let environment = match v.raw("ENVIRONMENT").map(str::to_owned) {
            None => Environment::Development,
            Some(raw) => Environment::parse(&raw).unwrap_or_else(|| {
                v.issue(
                    "ENVIRONMENT",
                    format!("invalid value {raw:?}: expected development, testing, staging or production"),
                );
                Environment::Development
            }),
        };
        let production = environment == Environment::Production;
        let development = environment == Environment::Development;

        let use_database = v.get("USE_DATABASE", production);
        let use_redis = v.get("USE_REDIS", production);
        let use_memory = v.get("USE_MEMORY", !production);
        let storage = if use_database {
            StorageBackend::Postgres
        } else if use_redis {
            StorageBackend::Redis
        } else {
            if !use_memory {
                v.issue("USE_MEMORY", "no storage selected: set USE_DATABASE, USE_REDIS or USE_MEMORY to true");
            }
            StorageBackend::Memory
        };
        if production && use_memory {
            v.issue("USE_MEMORY", "memory storage loses data on restart and is refused in production");
        }

        let host = v.get("HOST", "127.0.0.1".to_owned());
        let port = v.get("PORT", ServiceName::Gateway.default_port());
        let endpoints = parse_endpoints(v, &host, port);

        let secret_key = v.opt::<String>("SECURITY_SECRET_KEY").map(Secret::new);
        let secret_key = secret_key.unwrap_or_else(|| {
            if production || environment == Environment::Staging {
                v.issue("SECURITY_SECRET_KEY", "required outside development and testing");
            }
            Secret::new(DEV_SECRET_KEY)
        });

        let log_format = match v.get("OBSERVABILITY_LOG_FORMAT", "json".to_owned()).to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "text" | "pretty" => LogFormat::Text,
            other => {
                v.issue("OBSERVABILITY_LOG_FORMAT", format!("invalid value {other:?}: expected json or text"));
                LogFormat::Json
            }
        };
        let otlp_endpoint = v.opt("OBSERVABILITY_OTLP_ENDPOINT").or_else(|| v.opt("OTEL_EXPORTER_OTLP_ENDPOINT"));

        let mut config = Config {
            environment,
            debug: v.get("DEBUG", development),
            app_name: v.get("APP_NAME", "agentmesh".to_owned()),
            workers: v.get("WORKERS", 0),
            storage,
            use_redis,
            database: DatabaseConfig {
                host: v.get("DB_HOST", "localhost".to_owned()),
                port: v.get("DB_PORT", 5432),
                name: v.get("DB_NAME", "ai_agent".to_owned()),
                user: v.get("DB_USER", "postgres".to_owned()),
                password: Secret::new(v.get("DB_PASSWORD", String::new())),
                url_override: v.opt::<String>("DB_URL").or_else(|| v.opt("DATABASE_URL")).map(Secret::new),
                min_pool_size: v.get("DB_MIN_POOL_SIZE", 5),
                max_pool_size: v.get("DB_MAX_POOL_SIZE", 20),
                pool_timeout: v.get("DB_POOL_TIMEOUT", Duration::from_secs(30)),
                echo: v.get("DB_ECHO", false),
            },
            redis: RedisConfig {
                host: v.get("REDIS_HOST", "localhost".to_owned()),
                port: v.get("REDIS_PORT", 6379),
                db: v.get("REDIS_DB", 0),
                password: Secret::new(v.get("REDIS_PASSWORD", String::new())),
                url_override: v.opt::<String>("REDIS_URL").map(Secret::new),
                max_connections: v.get("REDIS_MAX_CONNECTIONS", 20),
                retry_on_timeout: v.get("REDIS_RETRY_ON_TIMEOUT", true),
                health_check_interval: v.get("REDIS_HEALTH_CHECK_INTERVAL", Duration::from_secs(30)),
                session_ttl: v.get("REDIS_SESSION_TTL", Duration::from_secs(3600)),
            },
            nats: NatsConfig { url: v.opt("NATS_URL"), stream: v.get("NATS_STREAM", "AGENTMESH".to_owned()) },
            resilience: ResilienceSettings {
                llm: parse_preset(v, "LLM", Preset::llm()),
                database: parse_preset(v, "DB", Preset::database()),
                mcp: parse_preset(v, "MCP", Preset::mcp()),
                secret: parse_preset(v, "SECRET", Preset::secret()),
                internal: parse_preset(v, "INTERNAL", Preset::internal()),
            },
            rate_limit: RateLimitConfig {
                api_default_limit: v.get("RATE_LIMIT_API_DEFAULT_LIMIT", 100),
                api_authenticated_limit: v.get("RATE_LIMIT_API_AUTHENTICATED_LIMIT", 1000),
                api_premium_limit: v.get("RATE_LIMIT_API_PREMIUM_LIMIT", 5000),
                create_session_limit: v.get("RATE_LIMIT_CREATE_SESSION_LIMIT", 10),
                execute_agent_limit: v.get("RATE_LIMIT_EXECUTE_AGENT_LIMIT", 5),
                llm_requests_per_minute: v.get("RATE_LIMIT_LLM_REQUESTS_PER_MINUTE", 60),
                llm_tokens_per_minute: v.get("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", 50_000),
                websocket_connections_per_ip: v.get("RATE_LIMIT_WEBSOCKET_CONNECTIONS_PER_IP", 10),
                websocket_messages_per_minute: v.get("RATE_LIMIT_WEBSOCKET_MESSAGES_PER_MINUTE", 1000),
                redis_prefix: v.get("RATE_LIMIT_REDIS_PREFIX", DEFAULT_RATE_LIMIT_REDIS_PREFIX.to_owned()),
                redis_timeout: v.get("RATE_LIMIT_REDIS_TIMEOUT", DEFAULT_RATE_LIMIT_REDIS_TIMEOUT),
            },
            security: SecurityConfig {
                secret_key,
                algorithm: v.get("SECURITY_ALGORITHM", "HS256".to_owned()),
                access_token_expire: Duration::from_secs(60 * v.get("SECURITY_ACCESS_TOKEN_EXPIRE_MINUTES", 30u64)),
                refresh_token_expire: Duration::from_secs(86_400 * v.get("SECURITY_REFRESH_TOKEN_EXPIRE_DAYS", 7u64)),
                api_key_length: v.get("SECURITY_API_KEY_LENGTH", 32),
                api_key_prefix: v.get("SECURITY_API_KEY_PREFIX", "sk-".to_owned()),
                cors_origins: v.get("SECURITY_CORS_ORIGINS", default_cors_origins(development)),
                cors_methods: v.get("SECURITY_CORS_METHODS", strings(&["GET", "POST", "PUT", "DELETE"])),
                cors_headers: v.get("SECURITY_CORS_HEADERS", strings(&["*"])),
                api_keys: parse_static_api_keys(v, production),
            },
            observability: ObservabilityConfig {
                log_level: v.get("OBSERVABILITY_LOG_LEVEL", if development { "DEBUG" } else { "INFO" }.to_owned()),
                log_format,
                metrics_enabled: v.get("OBSERVABILITY_METRICS_ENABLED", true),
                metrics_port: v.get("OBSERVABILITY_METRICS_PORT", 0),
                metrics_path: v.get("OBSERVABILITY_METRICS_PATH", "/metrics".to_owned()),
                tracing_enabled: v.get("OBSERVABILITY_TRACING_ENABLED", true),
                tracing_sample_rate: v.get(
                    "OBSERVABILITY_TRACING_SAMPLE_RATE",
                    match environment {
                        Environment::Development | Environment::Testing => 1.0,
                        Environment::Staging => 0.1,
                        Environment::Production => 0.01,
                    },
                ),
                tracing_service_name: v.get("OBSERVABILITY_TRACING_SERVICE_NAME", "agentmesh".to_owned()),
                otlp_endpoint,
                health_check_timeout: v.get("OBSERVABILITY_HEALTH_CHECK_TIMEOUT", Duration::from_secs(5)),
                health_check_interval: v.get("OBSERVABILITY_HEALTH_CHECK_INTERVAL", Duration::from_secs(30)),
            },
            features: FeatureFlags {
                enable_circuit_breakers: v.get("FEATURE_ENABLE_CIRCUIT_BREAKERS", true),
                enable_retries: v.get("FEATURE_ENABLE_RETRIES", true),
                enable_rate_limiting: v.get("FEATURE_ENABLE_RATE_LIMITING", true),
                enable_fallbacks: v.get("FEATURE_ENABLE_FALLBACKS", true),
                enable_websockets: v.get("FEATURE_ENABLE_WEBSOCKETS", true),
                enable_streaming: v.get("FEATURE_ENABLE_STREAMING", true),
                enable_bulk_operations: v.get("FEATURE_ENABLE_BULK_OPERATIONS", true),
                enable_detailed_metrics: v.get("FEATURE_ENABLE_DETAILED_METRICS", false),
                enable_request_tracing: v.get("FEATURE_ENABLE_REQUEST_TRACING", true),
                enable_debug_endpoints: v.get("FEATURE_ENABLE_DEBUG_ENDPOINTS", development),
                enable_multiple_llm_providers: v.get("FEATURE_ENABLE_MULTIPLE_LLM_PROVIDERS", true),
                enable_provider_fallback: v.get("FEATURE_ENABLE_PROVIDER_FALLBACK", true),
                enable_mcp_hot_reload: v.get("FEATURE_ENABLE_MCP_HOT_RELOAD", false),
            },
            endpoints,
            session_limits: SessionLimits {
                max_title_length: v.get("SESSION_MAX_TITLE_LENGTH", 500),
                max_content_length: v.get("SESSION_MAX_CONTENT_LENGTH", 262_144),
                max_metadata_bytes: v.get("SESSION_MAX_METADATA_BYTES", 16_384),
                max_tool_calls: v.get("SESSION_MAX_TOOL_CALLS", 128),
            },
            server: ServerConfig {
                drain_delay: v.get("SERVER_DRAIN_DELAY", Duration::ZERO),
                shutdown_grace: v.get("SERVER_SHUTDOWN_GRACE_PERIOD", Duration::from_secs(30)),
                request_timeout: v.get("SERVER_REQUEST_TIMEOUT", Duration::from_secs(60)),
            },
            identity: IdentityConfig::parse(v, production || environment == Environment::Staging),
        };
        config.apply_feature_flags();
        config
    }

    /// `FEATURE_ENABLE_RETRIES=false` leaves one attempt per call and
    /// `FEATURE_ENABLE_CIRCUIT_BREAKERS=false` makes breakers never open, for every client.
    fn apply_feature_flags(&mut self) {
        let r = &mut self.resilience;
        for preset in [&mut r.llm, &mut r.database, &mut r.mcp, &mut r.secret, &mut r.internal] {
            if !self.features.enable_retries {
                preset.retry.max_attempts = 1;
            }
            if !self.features.enable_circuit_breakers {
                preset.breaker.failure_threshold = u32::MAX;
                preset.breaker.failure_rate = None;
            }
        }
    }

    /// Cross-field and environment rules (the seed's `ConfigurationValidator`).
    fn validate(&self, v: &mut Vars) {
        let strict = matches!(self.environment, Environment::Production | Environment::Staging);
        let key = self.security.secret_key.expose();
        let key_reported = v.issues.iter().any(|i| i.variable == "SECURITY_SECRET_KEY");
        if key_reported {
            // Already missing or unreadable; one message per variable is enough.
        } else if key.chars().count() < MIN_SECRET_KEY_LEN {
            v.issue("SECURITY_SECRET_KEY", format!("must be at least {MIN_SECRET_KEY_LEN} characters long"));
        } else if strict && key == DEV_SECRET_KEY {
            v.issue("SECURITY_SECRET_KEY", "the development default is refused in production and staging");
        } else if strict && distinct_chars(key) < 10 {
            v.issue("SECURITY_SECRET_KEY", "too weak: use a random value (e.g. `openssl rand -base64 48`)");
        }
        if !self.security.algorithm.eq_ignore_ascii_case("HS256") {
            v.issue("SECURITY_ALGORITHM", "only HS256 is supported");
        }
        if self.security.api_key_length < 32 {
            v.issue("SECURITY_API_KEY_LENGTH", "must be at least 32");
        }
        if strict && self.security.cors_origins.iter().any(|o| o == "*") {
            v.issue("SECURITY_CORS_ORIGINS", "`*` is refused in production and staging: list the allowed origins");
        }
        if self.environment == Environment::Production {
            if self.debug {
                v.issue("DEBUG", "debug mode must be disabled in production");
            }
            if self.workers == 1 {
                v.issue("WORKERS", "production needs at least 2 workers");
            }
        }
        if self.database.min_pool_size > self.database.max_pool_size {
            v.issue("DB_MIN_POOL_SIZE", "must not exceed DB_MAX_POOL_SIZE");
        }
        if self.database.max_pool_size == 0 {
            v.issue("DB_MAX_POOL_SIZE", "must be at least 1");
        }
        if self.redis.max_connections == 0 {
            v.issue("REDIS_MAX_CONNECTIONS", "must be at least 1");
        }
        if self.rate_limit.redis_timeout.is_zero() {
            v.issue("RATE_LIMIT_REDIS_TIMEOUT", "must be positive (a zero timeout fails every check open)");
        }
        if !(0.0..=1.0).contains(&self.observability.tracing_sample_rate) {
            v.issue("OBSERVABILITY_TRACING_SAMPLE_RATE", "must be between 0.0 and 1.0");
        }
        if !matches!(
            self.observability.log_level.to_ascii_uppercase().as_str(),
            "TRACE" | "DEBUG" | "INFO" | "WARNING" | "WARN" | "ERROR" | "CRITICAL"
        ) {
            v.issue("OBSERVABILITY_LOG_LEVEL", "expected DEBUG, INFO, WARNING, ERROR or CRITICAL");
        }
        if self.session_limits.max_title_length == 0 || self.session_limits.max_title_length > 500 {
            v.issue("SESSION_MAX_TITLE_LENGTH", "must be between 1 and 500 (the stored column's size)");
        }
        if !self.observability.metrics_path.starts_with('/') {
            v.issue("OBSERVABILITY_METRICS_PATH", "must start with `/`");
        }
        if let Some(url) = &self.nats.url
            && !url.starts_with("nats://")
            && !url.starts_with("tls://")
        {
            v.issue("NATS_URL", "must start with nats:// or tls://");
        }
        for service in ServiceName::ALL {
            let url = &self.endpoints.get(service).url;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                v.issue(&format!("{}_URL", service.env_prefix()), "must start with http:// or https://");
            }
        }
    }

    /// The listen address of `service`.
    pub fn listen_addr(&self, service: ServiceName) -> SocketAddr {
        self.endpoints.get(service).listen
    }

    /// Whether the running environment is production.
    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }
}

fn parse_endpoints(v: &mut Vars, host: &str, gateway_port: u16) -> Endpoints {
    let endpoints = ServiceName::ALL
        .into_iter()
        .map(|service| {
            let prefix = service.env_prefix();
            let port = if service == ServiceName::Gateway { gateway_port } else { service.default_port() };
            let default_listen = format!("{host}:{port}");
            let listen_var = format!("{prefix}_ADDR");
            let raw_listen = v.raw(&listen_var).map_or(default_listen.clone(), str::to_owned);
            let listen = raw_listen.parse::<SocketAddr>().unwrap_or_else(|_| {
                let variable = if v.raw(&listen_var).is_some() { listen_var.as_str() } else { "HOST" };
                v.issue(variable, format!("invalid address {raw_listen:?}: expected IP:PORT, e.g. 127.0.0.1:{port}"));
                SocketAddr::from(([127, 0, 0, 1], port))
            });
            let url = v.get(&format!("{prefix}_URL"), format!("http://127.0.0.1:{}", listen.port()));
            (service, ServiceEndpoint { listen, url })
        })
        .collect();
    Endpoints { endpoints }
}

/// Overlays `RETRY_<CLASS>_*`, `CIRCUIT_<CLASS>_*`, `BULKHEAD_<CLASS>_*` and
/// `TIMEOUT_<CLASS>` on a preset's defaults.
fn parse_preset(v: &mut Vars, class: &str, defaults: Preset) -> Preset {
    let retry = &defaults.retry;
    let max_attempts: u32 = v.get(&format!("RETRY_{class}_MAX_ATTEMPTS"), retry.max_attempts);
    if max_attempts == 0 {
        v.issue(&format!("RETRY_{class}_MAX_ATTEMPTS"), "must be at least 1 (1 means no retries)");
    }
    let multiplier: f64 = v.get(&format!("RETRY_{class}_MULTIPLIER"), retry.multiplier);
    if multiplier < 1.0 {
        v.issue(&format!("RETRY_{class}_MULTIPLIER"), "must be at least 1.0");
    }
    let retry = RetryPolicy {
        max_attempts: max_attempts.max(1),
        base_delay: v.get(&format!("RETRY_{class}_BASE_DELAY"), retry.base_delay),
        max_delay: v.get(&format!("RETRY_{class}_MAX_DELAY"), retry.max_delay),
        multiplier: multiplier.max(1.0),
        jitter: v.get(&format!("RETRY_{class}_JITTER"), retry.jitter),
    };
    let threshold: u32 = v.get(&format!("CIRCUIT_{class}_FAILURE_THRESHOLD"), defaults.breaker.failure_threshold);
    if threshold == 0 {
        v.issue(&format!("CIRCUIT_{class}_FAILURE_THRESHOLD"), "must be at least 1");
    }
    let breaker = BreakerConfig {
        failure_threshold: threshold.max(1),
        recovery_timeout: v.get(&format!("CIRCUIT_{class}_RECOVERY_TIMEOUT"), defaults.breaker.recovery_timeout),
        ..defaults.breaker
    };
    let max_concurrency: usize = v.get(&format!("BULKHEAD_{class}_MAX_CONCURRENCY"), defaults.max_concurrency);
    if max_concurrency == 0 {
        v.issue(&format!("BULKHEAD_{class}_MAX_CONCURRENCY"), "must be at least 1");
    }
    let timeout: Duration = v.get(&format!("TIMEOUT_{class}"), defaults.timeout);
    if timeout.is_zero() {
        v.issue(&format!("TIMEOUT_{class}"), "must be positive");
    }
    Preset {
        retry,
        breaker,
        timeout: if timeout.is_zero() { defaults.timeout } else { timeout },
        max_concurrency: max_concurrency.max(1),
        max_queue_wait: v.get(&format!("BULKHEAD_{class}_QUEUE_WAIT"), defaults.max_queue_wait),
        ..defaults
    }
}

/// Parses `SECURITY_API_KEYS` (`sk-…=user[:tier]`, comma-separated). Issues name the
/// entry by its position only: an entry may hold a key, which must never be echoed.
fn parse_static_api_keys(v: &mut Vars, production: bool) -> Vec<StaticApiKey> {
    const VAR: &str = "SECURITY_API_KEYS";
    let Some(raw) = v.raw(VAR).map(str::to_owned) else { return Vec::new() };
    if production {
        v.issue(VAR, "static keys are refused in production: create keys with `agentmesh keys create`");
        return Vec::new();
    }
    let prefix = v.raw("SECURITY_API_KEY_PREFIX").unwrap_or("sk-").trim().to_owned();
    let mut keys: Vec<StaticApiKey> = Vec::new();
    for (index, entry) in raw.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let n = index + 1;
        let Some((key, owner)) = entry.split_once('=') else {
            v.issue(VAR, format!("entry {n}: expected {prefix}…=user[:tier]"));
            continue;
        };
        let (key, owner) = (key.trim(), owner.trim());
        let random = key.strip_prefix(prefix.as_str()).unwrap_or_default();
        if random.chars().count() < MIN_STATIC_KEY_RANDOM_CHARS
            || !random.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            let message = format!(
                "entry {n}: the key must be {prefix} followed by at least {MIN_STATIC_KEY_RANDOM_CHARS} \
                 characters from A-Z a-z 0-9 - _"
            );
            v.issue(VAR, message);
            continue;
        }
        let (user_id, tier) = match owner.rsplit_once(':') {
            None => (owner, Some(Tier::Default)),
            Some((user, tier)) => (user.trim(), Tier::parse(tier.trim())),
        };
        let Some(tier) = tier else {
            v.issue(VAR, format!("entry {n}: unknown tier: expected default, authenticated or premium"));
            continue;
        };
        if user_id.is_empty() {
            v.issue(VAR, format!("entry {n}: the user is missing"));
        } else if keys.iter().any(|k| k.key.expose() == key) {
            v.issue(VAR, format!("entry {n}: the same key is listed twice"));
        } else {
            keys.push(StaticApiKey { key: Secret::new(key), user_id: user_id.to_owned(), tier });
        }
    }
    keys
}

fn default_cors_origins(development: bool) -> Vec<String> {
    if development {
        strings(&["http://localhost:3000", "http://localhost:3001"])
    } else {
        strings(&["http://localhost:3000"])
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn distinct_chars(s: &str) -> usize {
    let mut chars: Vec<char> = s.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    chars.len()
}

#[cfg(test)]
mod tests;
