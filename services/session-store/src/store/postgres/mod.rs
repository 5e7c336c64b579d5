//! PostgreSQL backend: the seed's schema in the service's own schema, with a transactional
//! outbox for domain events.
//!
//! # Layout
//!
//! - this module: connecting (pool, `search_path`, migrations), the [`PostgresStore`]
//!   handle and the [`SessionStore`] implementation, which runs every operation under the
//!   database [`Resilience`] policy;
//! - `error`: how sqlx failures become [`StoreError`]s, and which are retried (and why);
//! - `sessions` / `messages` / `append`: the SQL of each operation (appends, the hot
//!   path, combine concurrent calls into one statement); `rows`: decoding rows;
//! - `outbox`: writing events in the data's transaction; [`relay`]: publishing them;
//! - `idempotency`: [`IdempotencyStore`](crate::idempotency::IdempotencyStore) on a table.
//!
//! # Design choices
//!
//! - **One clock.** Ids (UUID v7) and timestamps (µs-truncated, see [`super::now`]) come
//!   from the store, not from `now()` in SQL, so a write knows its whole record before it
//!   runs and can insert its event in the *same statement*: an append is one round trip
//!   (session counters, message row and outbox row in one implicit transaction), and
//!   appends arriving together share one. Updates and single deletes need the stored row
//!   to build their event and use a short transaction.
//! - **Counters** are maintained in the write's statement/transaction under the session
//!   row's lock, so `message_count` is exact under any concurrency and `last_activity` is
//!   `GREATEST(last_activity, created_at)`.
//! - **Ownership** is part of every `WHERE`: another owner's row is simply not found.
//! - **Events** never leave from here: rows in `outbox` are published by the
//!   [`OutboxRelay`] (see [`PostgresStore::relay`]), woken in-process after each write.

mod append;
mod error;
mod idempotency;
mod messages;
mod outbox;
pub mod relay;
mod rows;
mod sessions;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::Publisher;
use agentmesh_resilience::{Preset, Resilience};
use agentmesh_runtime::config::DatabaseConfig;
use async_trait::async_trait;
use chrono::{DateTime, Timelike as _, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _};
use tokio::sync::Notify;
use uuid::Uuid;

pub use self::append::BATCH_SIZE_HISTOGRAM;
use self::error::{DbError, classify, into_store_error};
pub use self::relay::{OutboxRelay, RelaySettings};
use super::{
    MessagePatch, MessageQuery, MessageRecord, NewMessage, NewSession, Owner, Page, SessionPatch, SessionQuery,
    SessionRecord, SessionStore, StoreError,
};

/// The schema production uses (one schema per service, ARCHITECTURE §2).
pub const DEFAULT_SCHEMA: &str = "session_store";

/// Longest accepted schema name: PostgreSQL identifiers have 63 bytes, and the relay's
/// notification channel `<schema>_outbox` must fit too.
const MAX_SCHEMA_LENGTH: usize = 56;

/// Idle time after which a pooled connection is pinged before use. Fresher connections
/// are used without the extra round trip; a dead one fails its statement, which is then
/// retried if that is safe (see the `error` module).
const PING_AFTER_IDLE: Duration = Duration::from_secs(10);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection pool sizing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections kept open when idle.
    pub min: u32,
    /// Most connections open at once.
    pub max: u32,
    /// How long a call waits for a free connection before failing as unavailable.
    pub acquire_timeout: Duration,
}

impl From<&DatabaseConfig> for PoolSettings {
    fn from(config: &DatabaseConfig) -> Self {
        Self { min: config.min_pool_size, max: config.max_pool_size, acquire_timeout: config.pool_timeout }
    }
}

/// The PostgreSQL store. Cheap to clone; clones share the pool, the resilience state and
/// the relay wake-up.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Options and sizing the pool was made with, for the relay's own pool.
    connect: PgConnectOptions,
    settings: PoolSettings,
    schema: String,
    resilience: Resilience,
    /// Wakes this store's relays after a write queued events.
    wake: Arc<Notify>,
    /// Combines concurrent appends (see `append`).
    appender: append::Appender,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("schema", &self.inner.schema).finish_non_exhaustive()
    }
}

/// Why connecting failed, beyond the database being unreachable.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The schema name cannot be used.
    #[error(
        "invalid schema name {0:?}: use 1 to {MAX_SCHEMA_LENGTH} ASCII letters, digits or `_`, not starting with a digit"
    )]
    InvalidSchema(String),
    /// The pool settings cannot work.
    #[error("invalid pool settings: {0}")]
    InvalidPool(&'static str),
    /// The connection URL does not parse.
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migrating schema {schema}: {source}")]
    Migrate {
        /// The schema being migrated.
        schema: String,
        /// What failed.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

impl PostgresStore {
    /// Connects to `url`, creates `schema` if missing, points every pooled connection's
    /// `search_path` at `<schema>, public` and applies the migrations (their bookkeeping
    /// table lives in `schema` too). Connecting again to a migrated schema is a no-op.
    ///
    /// The bulkhead of `resilience` is sized to the pool (`max` calls in flight, waiting
    /// up to `acquire_timeout` for a slot, like the pool itself), so a burst larger than
    /// the pool queues briefly instead of being refused at once.
    pub async fn connect(url: &str, schema: &str, pool: PoolSettings, resilience: &Preset) -> Result<Self, StoreError> {
        validate_schema(schema).map_err(internal)?;
        if pool.max == 0 || pool.min > pool.max {
            return Err(internal(ConnectError::InvalidPool("need 1 <= max and min <= max")));
        }
        let connect: PgConnectOptions = url.parse().map_err(|e| internal(ConnectError::InvalidUrl(e)))?;
        let handle = pool_options(schema, &pool)
            .connect_with(connect.clone())
            .await
            .map_err(|e| into_store_error_plain(classify(e)))?;
        create_schema(&handle, schema).await?;
        migrate(&handle, schema).await?;
        let preset = Preset {
            max_concurrency: usize::try_from(pool.max).unwrap_or(usize::MAX),
            max_queue_wait: pool.acquire_timeout,
            ..resilience.clone()
        };
        let resilience = Resilience::new(format!("postgres.{schema}"), &preset);
        let lanes = append_lanes(&pool);
        Ok(Self {
            inner: Arc::new(Inner {
                pool: handle,
                connect,
                settings: pool,
                schema: schema.to_owned(),
                resilience,
                wake: Arc::new(Notify::new()),
                appender: append::Appender::new(lanes),
            }),
        })
    }

    /// The schema this store lives in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The connection pool (for tests, benchmarks and maintenance tooling).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The database policy's state (breaker for health output).
    pub fn resilience(&self) -> &Resilience {
        &self.inner.resilience
    }

    /// A relay publishing this store's outbox to `publisher`; drive it with
    /// [`OutboxRelay::run`]. It has its own two connections (one listening, one working)
    /// so it neither waits for nor starves the request pool.
    pub fn relay(&self, publisher: Arc<dyn Publisher>) -> OutboxRelay {
        let settings = PoolSettings { min: 0, max: 2, acquire_timeout: self.inner.settings.acquire_timeout };
        let pool = pool_options(&self.inner.schema, &settings).connect_lazy_with(self.inner.connect.clone());
        OutboxRelay::new(pool, publisher, Arc::clone(&self.inner.wake), channel(&self.inner.schema))
    }

    /// Runs one operation under the database policy. `op` is one attempt; whether a failed
    /// attempt is retried is decided by `error::outcome`.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        self.inner.resilience.call(&error::outcome::<T>, op).await.map_err(into_store_error)
    }

    /// Tells the relays that events were queued.
    fn wake_relay(&self) {
        self.inner.wake.notify_one();
    }
}

/// How many append statements may run at once: a quarter of the pool, 1 to 8. Fewer
/// statements in flight means bigger batches and less work per append; measured on the
/// 2-core reference machine (docs/benchmarks.md), 4 lanes beat 8 and 16 at 16 and 64
/// writers alike.
fn append_lanes(pool: &PoolSettings) -> usize {
    usize::try_from(pool.max / 4).unwrap_or(1).clamp(1, 8)
}

/// Pool options shared by the request pool and the relay's pool.
fn pool_options(schema: &str, settings: &PoolSettings) -> PgPoolOptions {
    let set_path: Arc<str> = Arc::from(format!("SET search_path TO {}, public", quote_ident(schema)));
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

async fn create_schema(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema));
    let mut conn = pool.acquire().await.map_err(|e| into_store_error_plain(classify(e)))?;
    match conn.execute(sqlx::AssertSqlSafe(sql)).await {
        Ok(_) => Ok(()),
        // Two replicas starting at once: both see the schema missing, one creates it.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => Ok(()),
        Err(e) => Err(into_store_error_plain(classify(e))),
    }
}

/// Applies the migrations on a dedicated connection. sqlx holds a database-wide advisory
/// lock while migrating (so concurrent starts, and other services' migrations, take
/// turns) and does not release it when a migration fails: the connection is then closed
/// instead of going back to the pool with the lock.
async fn migrate(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(|e| into_store_error_plain(classify(e)))?;
    // `run_direct` is `run` on a concrete connection, which sqlx offers because `run`'s
    // `Acquire` bound is not general enough for the future to be proven `Send` (callers
    // box `connect` as `Send`; the `connect_future_is_send` test keeps it so).
    match MIGRATOR.run_direct(None, &mut *conn, false).await {
        Ok(()) => Ok(()),
        Err(source) => {
            let _ = conn.detach().close().await;
            Err(match source {
                sqlx::migrate::MigrateError::Execute(e) => into_store_error_plain(classify(e)),
                source => internal(ConnectError::Migrate { schema: schema.to_owned(), source }),
            })
        }
    }
}

fn validate_schema(schema: &str) -> Result<(), ConnectError> {
    let valid = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_LENGTH
        && schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if valid { Ok(()) } else { Err(ConnectError::InvalidSchema(schema.to_owned())) }
}

/// `"name"`, safe for any name `validate_schema` accepts (and escaping quotes anyway).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The channel relays LISTEN on: `NOTIFY <schema>_outbox` wakes them.
fn channel(schema: &str) -> String {
    format!("{schema}_outbox")
}

/// `at` truncated to the microsecond PostgreSQL stores.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(at.nanosecond() / 1_000 * 1_000).unwrap_or(at)
}

fn internal(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Internal(Box::new(error))
}

fn into_store_error_plain(error: DbError) -> StoreError {
    into_store_error(agentmesh_resilience::ResilienceError::Inner(error))
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create_sessions(&self, owner: &Owner, new: Vec<NewSession>) -> Result<Vec<SessionRecord>, StoreError> {
        self.create_sessions_impl(owner, new).await
    }

    async fn get_session(&self, owner: &Owner, id: Uuid) -> Result<SessionRecord, StoreError> {
        self.get_session_impl(owner, id).await
    }

    async fn list_sessions(&self, owner: &Owner, query: &SessionQuery) -> Result<Page<SessionRecord>, StoreError> {
        self.list_sessions_impl(owner, query).await
    }

    async fn update_session(&self, owner: &Owner, id: Uuid, patch: SessionPatch) -> Result<SessionRecord, StoreError> {
        self.update_session_impl(owner, id, patch).await
    }

    async fn delete_sessions(&self, owner: &Owner, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        self.delete_sessions_impl(owner, ids).await
    }

    async fn create_message(
        &self,
        owner: &Owner,
        session_id: Uuid,
        message: NewMessage,
    ) -> Result<MessageRecord, StoreError> {
        self.create_message_impl(owner, session_id, message).await
    }

    async fn get_message(&self, owner: &Owner, id: Uuid) -> Result<MessageRecord, StoreError> {
        self.get_message_impl(owner, id).await
    }

    async fn list_messages(
        &self,
        owner: &Owner,
        session_id: Uuid,
        query: &MessageQuery,
    ) -> Result<Page<MessageRecord>, StoreError> {
        self.list_messages_impl(owner, session_id, query).await
    }

    async fn update_message(&self, owner: &Owner, id: Uuid, patch: MessagePatch) -> Result<MessageRecord, StoreError> {
        self.update_message_impl(owner, id, patch).await
    }

    async fn delete_message(&self, owner: &Owner, id: Uuid) -> Result<MessageRecord, StoreError> {
        self.delete_message_impl(owner, id).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            sqlx::query("SELECT 1").execute(&mut *conn).await.map_err(classify)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers box the connect future as `Send` (e.g. to spawn start-up work); this only
    /// has to compile.
    #[allow(dead_code)]
    fn connect_future_is_send<'a>(
        url: &'a str,
        preset: &'a Preset,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<PostgresStore, StoreError>> + Send + 'a>> {
        let pool = PoolSettings { min: 0, max: 1, acquire_timeout: Duration::from_secs(1) };
        Box::pin(PostgresStore::connect(url, DEFAULT_SCHEMA, pool, preset))
    }

    #[test]
    fn schema_names_are_checked() {
        for ok in ["session_store", "ss_0123456789abcdef", "_x", "A1"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "a-b", "a b", "a\"b", "é", &"x".repeat(57)] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(channel("session_store"), "session_store_outbox");
        let lanes = |max| append_lanes(&PoolSettings { min: 0, max, acquire_timeout: Duration::from_secs(1) });
        assert_eq!((lanes(1), lanes(16), lanes(20), lanes(100)), (1, 4, 5, 8));
    }
}
