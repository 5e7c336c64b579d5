//! A service's database handle: the pool in the service's schema and the resilience
//! policy every call runs under.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_resilience::{Outcome, Preset, Resilience, ResilienceError};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _};

use crate::error::{DbError, Judge};
use crate::migrate::{self, PendingMigration};
use crate::schema::{Schema, SchemaError};

/// Idle time after which a pooled connection is pinged before use. Fresher connections
/// are used without the extra round trip; a dead one fails its statement, which is then
/// retried if that is safe (see [`crate::error`]).
const PING_AFTER_IDLE: Duration = Duration::from_secs(10);

/// Connection pool sizing: `DB_MIN_POOL_SIZE`, `DB_MAX_POOL_SIZE`, `DB_POOL_TIMEOUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections kept open when idle.
    pub min: u32,
    /// Most connections open at once.
    pub max: u32,
    /// How long a call waits for a free connection before failing as unavailable.
    pub acquire_timeout: Duration,
}

/// Why a database could not be set up or migrated.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The schema name cannot be used.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The pool settings cannot work.
    #[error("invalid pool settings: need 1 <= DB_MAX_POOL_SIZE and DB_MIN_POOL_SIZE <= DB_MAX_POOL_SIZE")]
    InvalidPool,
    /// The connection URL does not parse (not repeated: it may hold a password).
    #[error("invalid database URL")]
    InvalidUrl(#[source] sqlx::Error),
    /// The database failed (unreachable, or a statement failed).
    #[error(transparent)]
    Database(#[from] DbError),
    /// A migration failed or the applied migrations do not match the embedded ones.
    #[error("migrating schema {schema}: {source}")]
    Migrate {
        /// The schema being migrated.
        schema: String,
        /// What failed.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

impl SetupError {
    /// Whether trying again later may succeed (the database is unreachable or overloaded).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SetupError::Database(error) if error.is_unavailable())
    }
}

/// One service's database. Cheap to clone; clones share the pool and the policy state.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// What the pool connects with, for side pools.
    options: PgConnectOptions,
    settings: PoolSettings,
    schema: Schema,
    resilience: Resilience,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("schema", &self.inner.schema).finish_non_exhaustive()
    }
}

impl Database {
    /// A handle for `schema` on the database at `url`, without connecting: connections
    /// open on first use, each with its `search_path` set to `<schema>, public`.
    ///
    /// The policy is `preset` with its bulkhead sized to the pool (`max` calls in flight,
    /// waiting up to `acquire_timeout` for a slot, like the pool itself), so a burst larger
    /// than the pool queues briefly instead of being refused at once. Its name, for
    /// metrics and breaker events, is `postgres.<schema>`.
    pub fn lazy(url: &str, schema: &str, pool: PoolSettings, preset: &Preset) -> Result<Self, SetupError> {
        let schema = Schema::new(schema)?;
        if pool.max == 0 || pool.min > pool.max {
            return Err(SetupError::InvalidPool);
        }
        let options: PgConnectOptions = url.parse().map_err(SetupError::InvalidUrl)?;
        let preset = Preset {
            max_concurrency: usize::try_from(pool.max).unwrap_or(usize::MAX),
            max_queue_wait: pool.acquire_timeout,
            ..preset.clone()
        };
        let resilience = Resilience::new(format!("postgres.{schema}"), &preset);
        let handle = pool_options(&schema, &pool).connect_lazy_with(options.clone());
        Ok(Self { inner: Arc::new(Inner { pool: handle, options, settings: pool, schema, resilience }) })
    }

    /// [`Database::lazy`], then prepares the schema: creates it if missing and applies
    /// `migrations` under the schema's advisory lock (see [`migrate`](crate::migrate())).
    /// Preparing a migrated schema again is a no-op.
    pub async fn connect(
        url: &str,
        schema: &str,
        pool: PoolSettings,
        preset: &Preset,
        migrations: &Migrator,
    ) -> Result<Self, SetupError> {
        let database = Self::lazy(url, schema, pool, preset)?;
        database.migrate(migrations).await?;
        Ok(database)
    }

    /// Creates the schema if missing and applies `migrations`; see [`crate::migrate()`].
    pub async fn migrate(&self, migrations: &Migrator) -> Result<(), SetupError> {
        migrate::migrate(&self.inner.options, &self.inner.schema, migrations).await
    }

    /// The migrations of `migrations` not applied yet; see [`crate::pending()`].
    pub async fn pending(&self, migrations: &Migrator) -> Result<Vec<PendingMigration>, SetupError> {
        migrate::pending(&self.inner.options, &self.inner.schema, migrations).await
    }

    /// The schema the service's tables live in.
    pub fn schema(&self) -> &Schema {
        &self.inner.schema
    }

    /// The connection pool. Calls that serve requests go through [`Database::run`].
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The pool's sizing.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// The database policy's state (breaker for health output).
    pub fn resilience(&self) -> &Resilience {
        &self.inner.resilience
    }

    /// A separate lazy pool of at most `max` connections in the same schema, for
    /// background work (such as the outbox relay) that must neither wait for nor starve
    /// the request pool.
    pub fn side_pool(&self, max: u32) -> PgPool {
        let settings = PoolSettings { min: 0, max: max.max(1), acquire_timeout: self.inner.settings.acquire_timeout };
        pool_options(&self.inner.schema, &settings).connect_lazy_with(self.inner.options.clone())
    }

    /// Runs one database call under the policy: breaker → timeout → retry → bulkhead.
    /// `op` is one attempt and is called again for each retry; each failure is judged by
    /// its [`Judge::outcome`] (transient ones are retried and count against the breaker).
    /// While the breaker is open, calls fail at once with
    /// [`ResilienceError::CircuitOpen`] instead of waiting for the pool.
    pub async fn run<T, E, F, Fut>(&self, op: F) -> Result<T, ResilienceError<E>>
    where
        E: Judge,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let judge = |result: &Result<T, E>| match result {
            Ok(_) => Outcome::Success,
            Err(error) => error.outcome(),
        };
        self.inner.resilience.call(&judge, op).await
    }
}

/// Pool options of every pool in `schema`.
fn pool_options(schema: &Schema, settings: &PoolSettings) -> PgPoolOptions {
    let set_path: Arc<str> = Arc::from(schema.set_search_path());
    PgPoolOptions::new()
        .min_connections(settings.min)
        .max_connections(settings.max)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _meta| {
            let set_path = Arc::clone(&set_path);
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(set_path.to_string())).await?;
                Ok(())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "postgres://postgres@127.0.0.1:1/none";

    fn pool(min: u32, max: u32) -> PoolSettings {
        PoolSettings { min, max, acquire_timeout: Duration::from_secs(1) }
    }

    #[tokio::test]
    async fn settings_are_checked_before_connecting() {
        let preset = Preset::database();
        assert!(matches!(Database::lazy(URL, "1x", pool(0, 1), &preset), Err(SetupError::Schema(_))));
        assert!(matches!(Database::lazy(URL, "ok", pool(0, 0), &preset), Err(SetupError::InvalidPool)));
        assert!(matches!(Database::lazy(URL, "ok", pool(3, 2), &preset), Err(SetupError::InvalidPool)));
        assert!(matches!(
            Database::lazy("postgres://h:notaport/db", "ok", pool(0, 1), &preset),
            Err(SetupError::InvalidUrl(_))
        ));
        let database = Database::lazy(URL, "ok", pool(0, 7), &preset).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(database.schema().as_str(), "ok");
        assert_eq!(database.resilience().name(), "postgres.ok");
        assert_eq!(database.resilience().bulkhead().available(), 7);
    }

    /// Callers box the connect future as `Send` (e.g. to spawn start-up work); this only
    /// has to compile.
    #[allow(dead_code)]
    fn connect_future_is_send<'a>(
        preset: &'a Preset,
        migrations: &'a Migrator,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Database, SetupError>> + Send + 'a>> {
        Box::pin(Database::connect(URL, "x", pool(0, 1), preset, migrations))
    }
}
