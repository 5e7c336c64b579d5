//! PostgreSQL backend: the seed's schema in the service's own schema, with a transactional
//! outbox for domain events.
//!
//! # Layout
//!
//! - this module: connecting (through [`agentmesh_postgres::Database`]: schema, pool,
//!   advisory-locked migrations), the [`PostgresStore`] handle and the [`SessionStore`]
//!   implementation, which runs every operation under the database policy;
//! - `error`: how failures become [`StoreError`]s (the transient list itself is the
//!   library's);
//! - `sessions` / `messages` / `append`: the SQL of each operation (appends, the hot
//!   path, combine concurrent calls into one statement); `rows`: decoding rows;
//! - events go to the library's transactional outbox ([`agentmesh_postgres::outbox`]),
//!   written in the data's own statement or transaction;
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
mod rows;
mod sessions;

use std::future::Future;
use std::sync::{Arc, LazyLock};

use agentmesh_events::Publisher;
use agentmesh_postgres::Database;
use agentmesh_postgres::error::Failure;
use agentmesh_postgres::outbox::{self, Outbox};
use agentmesh_resilience::Preset;
use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;
use uuid::Uuid;

pub use agentmesh_postgres::PoolSettings;
pub use agentmesh_postgres::outbox::{OutboxRelay, RelaySettings};

pub use self::append::BATCH_SIZE_HISTOGRAM;
use self::error::{DbError, classify, into_store_error};
use super::{
    FirstUse, MessagePatch, MessageQuery, MessageRecord, NewMessage, NewSession, Owner, Page, SessionPatch,
    SessionQuery, SessionRecord, SessionStore, StoreError,
};

/// The schema production uses (one schema per service, ARCHITECTURE §2).
pub const DEFAULT_SCHEMA: &str = "session_store";

/// The migrations in `services/session-store/migrations`.
static EMBEDDED: Migrator = sqlx::migrate!("./migrations");

/// Version of the library's outbox table among this service's migrations.
const OUTBOX_VERSION: i64 = 2;

/// Version of the library's outbox `actor` column among this service's migrations (the
/// next one of its own is 6).
const OUTBOX_ACTOR_VERSION: i64 = 5;

static MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| {
    agentmesh_postgres::with_migrations(
        &EMBEDDED,
        [outbox::migration(OUTBOX_VERSION), outbox::actor_migration(OUTBOX_ACTOR_VERSION)],
    )
});

/// Every migration of the session-store schema: its own plus the outbox table (for
/// `agentmesh migrate`).
pub fn migrations() -> &'static Migrator {
    &MIGRATIONS
}

/// The PostgreSQL store. Cheap to clone; clones share the pool, the resilience state and
/// the relay wake-up.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    database: Database,
    /// The database's pool (a shared handle), used by every operation.
    pool: PgPool,
    outbox: Outbox,
    /// Combines concurrent appends (see `append`).
    appender: append::Appender,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("schema", &self.schema()).finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` and prepares `schema` (see [`Database::connect`]: created if
    /// missing, migrated under its advisory lock, first on every pooled connection's
    /// `search_path`). Connecting again to a migrated schema is a no-op. Every operation
    /// runs under `resilience` with its bulkhead sized to the pool.
    pub async fn connect(url: &str, schema: &str, pool: PoolSettings, resilience: &Preset) -> Result<Self, StoreError> {
        let database = Database::connect(url, schema, pool, resilience, migrations()).await.map_err(Failure::from)?;
        let lanes = append_lanes(database.settings());
        let outbox = Outbox::new(database.schema());
        let pool = database.pool().clone();
        Ok(Self { inner: Arc::new(Inner { database, pool, outbox, appender: append::Appender::new(lanes) }) })
    }

    /// The schema this store lives in.
    pub fn schema(&self) -> &str {
        self.inner.database.schema().as_str()
    }

    /// The connection pool (for tests, benchmarks and maintenance tooling).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The database policy's state (breaker for health output).
    pub fn resilience(&self) -> &agentmesh_resilience::Resilience {
        self.inner.database.resilience()
    }

    /// A relay publishing this store's outbox to `publisher` (and purging expired
    /// idempotency keys); drive it with [`OutboxRelay::run`].
    pub fn relay(&self, publisher: Arc<dyn Publisher>) -> OutboxRelay {
        self.inner.outbox.relay(&self.inner.database, publisher).with_purge(idempotency::PURGE_EXPIRED)
    }

    /// Runs one operation under the database policy. `op` is one attempt; whether a failed
    /// attempt is retried is decided by the error's `Judge` outcome.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        self.inner.database.run(op).await.map_err(into_store_error)
    }

    /// Tells the relays that events were queued.
    fn wake_relay(&self) {
        self.inner.outbox.committed();
    }
}

/// How many append statements may run at once: a quarter of the pool, 1 to 8. Fewer
/// statements in flight means bigger batches and less work per append; measured on the
/// 2-core reference machine (docs/benchmarks.md), 4 lanes beat 8 and 16 at 16 and 64
/// writers alike.
fn append_lanes(pool: &PoolSettings) -> usize {
    usize::try_from(pool.max / 4).unwrap_or(1).clamp(1, 8)
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

    async fn create_message_first_use(
        &self,
        owner: &Owner,
        session_id: Uuid,
        message: NewMessage,
        first_use: FirstUse<'_>,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.create_message_first_use_impl(owner, session_id, message, first_use).await
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn append_lanes_follow_the_pool() {
        let lanes = |max| append_lanes(&PoolSettings { min: 0, max, acquire_timeout: Duration::from_secs(1) });
        assert_eq!((lanes(1), lanes(16), lanes(20), lanes(100)), (1, 4, 5, 8));
    }

    #[test]
    fn migrations_include_the_outbox_once() {
        let versions: Vec<i64> = migrations().iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5]);
        assert_eq!(migrations().iter().filter(|m| m.description == "outbox").count(), 1);
        assert_eq!(migrations().iter().filter(|m| m.description == "outbox actor").count(), 1);
    }
}
