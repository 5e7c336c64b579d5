//! Where data and events live: the storage selection (`USE_MEMORY`/`USE_REDIS`/
//! `USE_DATABASE`), PostgreSQL (`DB_*`), Redis (`REDIS_*`) and NATS (`NATS_*`).

use std::time::Duration;

use super::environment::{Environment, Secret};
use super::vars::Vars;

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

/// The backend the `USE_*` flags select, and whether Redis is available (`USE_REDIS`).
pub(super) fn read_storage(v: &mut Vars, environment: Environment) -> (StorageBackend, bool) {
    let production = environment == Environment::Production;
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
    (storage, use_redis)
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
    /// `DB_URL` (or `DATABASE_URL`): a full connection URL that overrides the parts above.
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
    pub(super) fn read(v: &mut Vars) -> Self {
        // Both names are read, so neither is reported as unknown when the other is set.
        let url = v.opt::<String>("DB_URL");
        let database_url = v.opt::<String>("DATABASE_URL");
        let config = DatabaseConfig {
            host: v.get("DB_HOST", "localhost".to_owned()),
            port: v.get("DB_PORT", 5432),
            name: v.get("DB_NAME", "ai_agent".to_owned()),
            user: v.get("DB_USER", "postgres".to_owned()),
            password: Secret::new(v.get("DB_PASSWORD", String::new())),
            url_override: url.or(database_url).map(Secret::new),
            min_pool_size: v.get("DB_MIN_POOL_SIZE", 5),
            max_pool_size: v.get("DB_MAX_POOL_SIZE", 20),
            pool_timeout: v.get("DB_POOL_TIMEOUT", Duration::from_secs(30)),
            echo: v.get("DB_ECHO", false),
        };
        if config.min_pool_size > config.max_pool_size {
            v.issue("DB_MIN_POOL_SIZE", "must not exceed DB_MAX_POOL_SIZE");
        }
        if config.max_pool_size == 0 {
            v.issue("DB_MAX_POOL_SIZE", "must be at least 1");
        }
        config
    }

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
    pub(super) fn read(v: &mut Vars) -> Self {
        let config = RedisConfig {
            host: v.get("REDIS_HOST", "localhost".to_owned()),
            port: v.get("REDIS_PORT", 6379),
            db: v.get("REDIS_DB", 0),
            password: Secret::new(v.get("REDIS_PASSWORD", String::new())),
            url_override: v.opt::<String>("REDIS_URL").map(Secret::new),
            max_connections: v.get("REDIS_MAX_CONNECTIONS", 20),
            retry_on_timeout: v.get("REDIS_RETRY_ON_TIMEOUT", true),
            health_check_interval: v.get("REDIS_HEALTH_CHECK_INTERVAL", Duration::from_secs(30)),
            session_ttl: v.get("REDIS_SESSION_TTL", Duration::from_secs(3600)),
        };
        if config.max_connections == 0 {
            v.issue("REDIS_MAX_CONNECTIONS", "must be at least 1");
        }
        config
    }

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
    /// `NATS_SUBJECT_ROOT`: the first subject token(s) of every event (`agentmesh` gives
    /// `agentmesh.session.created`); deployments sharing one NATS account keep apart with
    /// their own root and stream.
    pub subject_root: String,
}

impl NatsConfig {
    pub(super) fn read(v: &mut Vars) -> Self {
        let config = NatsConfig {
            url: v.opt("NATS_URL"),
            stream: v.get("NATS_STREAM", "AGENTMESH".to_owned()),
            subject_root: v.get("NATS_SUBJECT_ROOT", "agentmesh".to_owned()),
        };
        let token =
            |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !config.subject_root.split('.').all(token) {
            v.issue("NATS_SUBJECT_ROOT", "must be dot-separated tokens of ASCII letters, digits, `-` and `_`");
        }
        if let Some(url) = &config.url
            && !url.starts_with("nats://")
            && !url.starts_with("tls://")
        {
            v.issue("NATS_URL", "must start with nats:// or tls://");
        }
        config
    }
}
