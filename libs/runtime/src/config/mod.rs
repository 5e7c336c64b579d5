//! Typed configuration shared by every agentmesh binary.
//!
//! Variables keep the seed's names and prefixes (`ENVIRONMENT`, `HOST`, `PORT`, `DB_*`,
//! `REDIS_*`, `SECURITY_*`, `RETRY_*`, `CIRCUIT_*`, `RATE_LIMIT_*`, `OBSERVABILITY_*`,
//! `FEATURE_*`, `USE_MEMORY`/`USE_REDIS`/`USE_DATABASE`) so a deployment written for the
//! original plan configures this mesh unchanged. Values come from defaults (which depend on
//! `ENVIRONMENT`), then an optional dotenv-style file, then the environment; they are
//! validated once at start-up and every bad value is reported at once by its name.
//!
//! One module per concern reads its variables and checks its own rules; services add
//! theirs through [`Settings`] without this crate knowing them. A variable the file sets
//! that nobody reads is refused; one in the environment under an agentmesh prefix is a
//! warning ([`Config::warnings`]), because the environment is shared with other programs.

mod client_address;
mod endpoints;
mod environment;
mod features;
mod identity;
mod observability;
mod peers;
mod rate_limit;
mod resilience;
mod security;
mod server;
mod settings;
mod storage;
mod vars;

use std::path::Path;

pub use client_address::{ClientAddressConfig, MAX_TRUSTED_PROXY_HOPS};
pub use endpoints::{Endpoints, ServiceEndpoint, ServiceName};
pub use environment::{Environment, Secret};
pub use features::FeatureFlags;
pub use identity::IdentityConfig;
pub use observability::{LogFormat, ObservabilityConfig};
pub use peers::{PeerBalancing, PeerConfig};
pub use rate_limit::{DEFAULT_RATE_LIMIT_REDIS_PREFIX, DEFAULT_RATE_LIMIT_REDIS_TIMEOUT, RateLimitConfig};
pub use resilience::ResilienceSettings;
pub use security::{DEV_SECRET_KEY, MIN_SECRET_KEY_LEN, MIN_STATIC_KEY_RANDOM_CHARS, SecurityConfig, StaticApiKey};
pub use server::ServerConfig;
pub use settings::{CONVENTIONAL_VARIABLES, RawVariables, ServiceSettings, Settings, SettingsReader, SettingsSpec};
pub use storage::{DatabaseConfig, NatsConfig, RedisConfig, StorageBackend};
use vars::Vars;
pub use vars::{ConfigIssue, ConfigValue};

/// Names the optional configuration file; its variables sit under the environment's.
pub const CONFIG_FILE_ENV: &str = "AGENTMESH_CONFIG_FILE";

/// Prefixes of the runtime's own variables: an environment variable under one of these
/// (or under a registered service's [`ServiceName::settings_prefix`]) that nothing reads
/// is probably misspelled, and is reported in [`Config::warnings`].
const WATCHED_PREFIXES: &[&str] = &[
    "DB_",
    "REDIS_",
    "NATS_",
    "RETRY_",
    "CIRCUIT_",
    "BULKHEAD_",
    "TIMEOUT_",
    "RATE_LIMIT_",
    "SECURITY_",
    "OBSERVABILITY_",
    "FEATURE_",
    "SERVER_",
    "PEER_",
];

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
    /// `SECURITY_TRUSTED_PROXY_HOPS`, `SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS`: where the
    /// gateway takes a caller's address from.
    pub client_address: ClientAddressConfig,
    /// `OBSERVABILITY_*`.
    pub observability: ObservabilityConfig,
    /// `FEATURE_*`.
    pub features: FeatureFlags,
    /// Per-service listen addresses and peer URLs.
    pub endpoints: Endpoints,
    /// `PEER_*`: how clients spread calls over a peer's replicas.
    pub peers: PeerConfig,
    /// `SERVER_*`.
    pub server: ServerConfig,
    /// `SECURITY_SERVICE_KEY`, `SECURITY_TRUSTED_KEYS`: the mesh's own keys.
    pub identity: IdentityConfig,
    /// Environment variables under an agentmesh prefix that nothing reads (probably
    /// misspelled); binaries log them as warnings once telemetry is up.
    pub warnings: Vec<ConfigIssue>,
    /// Every variable, for the services' [`Settings`] ([`Config::settings`]).
    raw: RawVariables,
}

/// Configuration could not be loaded: every bad value, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// Each problem, named by its variable.
    pub issues: Vec<ConfigIssue>,
}

impl Config {
    /// Loads the runtime's settings from the process environment and the file named by
    /// `AGENTMESH_CONFIG_FILE`; see [`Config::from_env_with`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_with(&[])
    }

    /// Loads from the process environment and the file named by `AGENTMESH_CONFIG_FILE`,
    /// validating the settings of `services` (those the binary runs) as well.
    pub fn from_env_with(services: &[ServiceSettings]) -> Result<Self, ConfigError> {
        Self::from_env_overridden(services, &[])
    }

    /// Like [`Config::from_env_with`], with `overrides` set on top of the environment: what
    /// a command-line flag sets (`agentmesh up --postgres URL`) wins over the variable.
    pub fn from_env_overridden(
        services: &[ServiceSettings],
        overrides: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let file = std::env::var_os(CONFIG_FILE_ENV);
        // `vars()` panics on a variable that is not UTF-8; such variables are skipped.
        let env =
            std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
        Self::load_with(file.as_deref().map(Path::new), env.chain(overrides.iter().cloned()), services)
    }

    /// Loads the runtime's settings from explicit sources: `file` first, then `env` on
    /// top. Tests use this.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        Self::load_with(file, env, &[])
    }

    /// Loads from `file` and `env` like [`Config::load`], and reads every [`Settings`] of
    /// `services` too: their bad values are reported with the runtime's, and their
    /// variables are known in the file. Variables in the file under the
    /// [`settings_prefix`](ServiceName::settings_prefix) of a service not in `services`
    /// belong to another binary and are left alone.
    pub fn load_with(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        services: &[ServiceSettings],
    ) -> Result<Self, ConfigError> {
        let mut vars = Vars::load(file, env);
        vars.raw(CONFIG_FILE_ENV);
        let mut config = Self::read(&mut vars);
        for service in services {
            for spec in service.settings {
                spec.check(&mut vars);
            }
        }
        let runs = |prefix: &str| services.iter().any(|s| s.service.settings_prefix() == prefix);
        vars.report_unknown_file_variables(|name| {
            ServiceName::ALL.iter().any(|s| name.starts_with(s.settings_prefix()) && !runs(s.settings_prefix()))
        });
        config.warnings = vars.unknown_env_variables(|name| {
            WATCHED_PREFIXES.iter().any(|p| name.starts_with(p))
                || services.iter().any(|s| name.starts_with(s.service.settings_prefix()))
        });
        config.raw = RawVariables::new(vars.values().clone());
        if vars.issues.is_empty() { Ok(config) } else { Err(ConfigError { issues: vars.issues }) }
    }

    fn read(v: &mut Vars) -> Self {
        let environment = Environment::read(v);
        let production = environment == Environment::Production;
        let (storage, use_redis) = storage::read_storage(v, environment);
        let features = FeatureFlags::read(v);
        let config = Config {
            environment,
            debug: v.get("DEBUG", environment == Environment::Development),
            app_name: v.get("APP_NAME", "agentmesh".to_owned()),
            workers: v.get("WORKERS", 0),
            storage,
            use_redis,
            endpoints: Endpoints::read(v),
            peers: PeerConfig::read(v),
            database: DatabaseConfig::read(v),
            redis: RedisConfig::read(v),
            nats: NatsConfig::read(v),
            resilience: ResilienceSettings::read(v, &features),
            rate_limit: RateLimitConfig::read(v),
            security: SecurityConfig::read(v, environment),
            client_address: ClientAddressConfig::read(v),
            observability: ObservabilityConfig::read(v, environment, &features),
            features,
            server: ServerConfig::read(v),
            identity: IdentityConfig::parse(v, environment.is_strict()),
            warnings: Vec::new(),
            raw: RawVariables::default(),
        };
        if production {
            if config.debug {
                v.issue("DEBUG", "debug mode must be disabled in production");
            }
            if config.workers == 1 {
                v.issue("WORKERS", "production needs at least 2 workers");
            }
        }
        config
    }

    /// A service's own settings, read from the variables this configuration was loaded
    /// from. Binaries that registered `T` (see [`Config::load_with`]) have already
    /// refused to start with a bad value; otherwise the bad values are returned here.
    pub fn settings<T: Settings>(&self) -> Result<T, ConfigError> {
        settings::read(&self.raw).map_err(|issues| ConfigError { issues })
    }

    /// The listen address of `service`.
    pub fn listen_addr(&self, service: ServiceName) -> std::net::SocketAddr {
        self.endpoints.get(service).listen
    }

    /// Whether the running environment is production.
    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }
}

#[cfg(test)]
mod settings_tests;
#[cfg(test)]
mod tests;
