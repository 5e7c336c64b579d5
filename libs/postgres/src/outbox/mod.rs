//! The transactional outbox: an owner of data writes the domain events of a change in the
//! same transaction as the change, into an `outbox` table in its own schema, and an
//! [`OutboxRelay`] publishes them to the event bus afterwards. An event is therefore
//! published if and only if its change committed, even when the bus is down at the time.
//!
//! # What the owner does
//!
//! 1. Includes the table: its migrator is its embedded migrations plus [`migration`] and
//!    [`actor_migration`] at versions of its choosing, combined with
//!    [`with_migrations`](crate::with_migrations).
//! 2. Writes events in its transactions with [`Outbox::enqueue`] (or, to save the round
//!    trip, embeds [`outbox_insert!`](crate::outbox_insert) in its own statement and binds
//!    [`OutboxRows`]). After committing it hands the events to the relay with
//!    [`Outbox::committed_events`], which publishes them at once without reading them
//!    back ([`handoff`]), or, when it no longer holds them, calls [`Outbox::committed`],
//!    which has the relay read the table now instead of at its next poll.
//! 3. Runs [`Outbox::relay`] in the background until shutdown.
//!
//! [`OutboxDatabase`] does all three for a store: its database and outbox in one handle,
//! with [`OutboxDatabase::write`] waking the relay after every successful write and
//! [`OutboxDatabase::write_events`] handing it the write's events.
//!
//! # What the relay guarantees
//!
//! See [`relay`]: every committed event is published at least once, with the event id it
//! was queued with as the bus's deduplication id (JetStream's `Nats-Msg-Id`), so a repeat
//! after a crash is dropped by the bus. Events read from the table are published in the
//! order they were queued (`seq`); handed events in the order they were handed over,
//! which for the events of one record is the order their writes committed. With
//! pipelining, an event whose publish failed may be overtaken by the few sent after it.

mod handoff;
pub mod relay;
mod rows;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use agentmesh_events::{Event, Publisher};
use agentmesh_resilience::{Preset, Resilience, ResilienceError};
use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Postgres, Transaction};

pub use self::relay::{BatchReport, OutboxRelay, RelayError, RelaySettings};
pub use self::rows::{INSERT_ALL, OutboxRow, OutboxRows, bind_optional};
use crate::database::{Database, PoolSettings, SetupError};
use crate::error::{DbError, Judge, classify};
use crate::schema::Schema;

/// The `outbox` table's DDL, applied into the owner's schema by [`migration`].
pub const TABLE_SQL: &str = include_str!("../../migrations/outbox.sql");

/// The migration creating the `outbox` table, as version `version` of the owner's
/// migrations. Its checksum is that of [`TABLE_SQL`]: an owner must keep the version it
/// first shipped it with, and the file must never change, not even a comment (it is
/// byte for byte session-store's original migration 2, so databases migrated before the
/// outbox moved here keep starting).
pub fn migration(version: i64) -> Migration {
    let sql = sqlx::AssertSqlSafe(TABLE_SQL).into_sql_str();
    Migration::new(version, Cow::Borrowed("outbox"), MigrationType::Simple, sql, false)
}

/// The DDL adding the `actor` column (the calling service recorded with each event).
pub const ACTOR_SQL: &str = include_str!("../../migrations/outbox_actor.sql");

/// The migration adding the `actor` column to the table [`migration`] creates, as version
/// `version` (after the table's) of the owner's migrations. Every owner includes both: the
/// inserts and the relay read and write the column.
pub fn actor_migration(version: i64) -> Migration {
    let sql = sqlx::AssertSqlSafe(ACTOR_SQL).into_sql_str();
    Migration::new(version, Cow::Borrowed("outbox actor"), MigrationType::Simple, sql, false)
}

/// One owner's outbox: where events are written and who to tell after a commit. Cheap to
/// clone; clones share the relay's queue and wake-up.
#[derive(Debug, Clone)]
pub struct Outbox {
    handoff: Arc<handoff::Handoff>,
    channel: String,
}

impl Outbox {
    /// The outbox in `schema`. Its relays also LISTEN on `<schema>_outbox`, so writers
    /// outside this process can wake them with `pg_notify`.
    pub fn new(schema: &Schema) -> Self {
        Self { handoff: Arc::default(), channel: schema.channel("outbox") }
    }

    /// The notification channel the relays listen on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Queues `event` in `tx`: it is published once `tx` commits, and never if it rolls
    /// back. Call [`Outbox::committed`] after the commit.
    pub async fn enqueue(&self, tx: &mut Transaction<'_, Postgres>, event: Event) -> Result<(), DbError> {
        let conn: &mut PgConnection = tx;
        OutboxRow::new(event)?
            .bind(sqlx::query(crate::outbox_insert_one!("true")))
            .execute(conn)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Queues `events` in `tx`, in order, with one statement.
    pub async fn enqueue_all(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<(), DbError> {
        let conn: &mut PgConnection = tx;
        let rows = OutboxRows::new(events.into_iter().map(|event| (uuid::Uuid::nil(), event)))?;
        rows.bind(sqlx::query(INSERT_ALL)).execute(conn).await.map_err(classify)?;
        Ok(())
    }

    /// Tells this process's relay that events were committed, so it reads the table now
    /// rather than at its next poll. Writes deliberately do not `NOTIFY` (see the table's
    /// migration): this in-process wake-up is free.
    pub fn committed(&self) {
        self.handoff.table();
    }

    /// Hands this process's relay the events a write has just committed (all of them,
    /// in the order they were queued), so it publishes them without reading them back.
    /// Never call it before the commit: an event handed over is published, committed or not.
    pub fn committed_events(&self, events: impl IntoIterator<Item = Event>) {
        self.handoff.events(events);
    }

    /// A relay publishing this outbox to `publisher`; drive it with [`OutboxRelay::run`].
    /// It has its own two connections (one listening, one working) so it neither waits
    /// for nor starves the request pool.
    pub fn relay(&self, database: &Database, publisher: Arc<dyn Publisher>) -> OutboxRelay {
        OutboxRelay::new(database.side_pool(2), publisher, Arc::clone(&self.handoff), self.channel.clone())
    }
}

/// A store's database together with the outbox in its schema: the handle a service's
/// PostgreSQL store holds. Cheap to clone; clones share the pool, the policy state and the
/// relay wake-up.
#[derive(Debug, Clone)]
pub struct OutboxDatabase {
    inner: Arc<(Database, Outbox)>,
}

impl OutboxDatabase {
    /// Connects to `url` and prepares `schema` with `migrations` (see
    /// [`Database::connect`]); calls run under `resilience`.
    pub async fn connect(
        url: &str,
        schema: &str,
        pool: PoolSettings,
        resilience: &Preset,
        migrations: &Migrator,
    ) -> Result<Self, SetupError> {
        let database = Database::connect(url, schema, pool, resilience, migrations).await?;
        let outbox = Outbox::new(database.schema());
        Ok(Self { inner: Arc::new((database, outbox)) })
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.inner.0
    }

    /// The outbox, to queue events in a write's transaction.
    pub fn outbox(&self) -> &Outbox {
        &self.inner.1
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        self.database().schema().as_str()
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        self.database().pool()
    }

    /// The database policy's state (its breaker, for health output).
    pub fn resilience(&self) -> &Resilience {
        self.database().resilience()
    }

    /// A relay publishing the outbox to `publisher`; drive it with [`OutboxRelay::run`].
    pub fn relay(&self, publisher: Arc<dyn Publisher>) -> OutboxRelay {
        self.outbox().relay(self.database(), publisher)
    }

    /// Runs a read under the policy (see [`Database::run`]).
    pub async fn run<T, E, F, Fut>(&self, op: F) -> Result<T, ResilienceError<E>>
    where
        E: Judge,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.database().run(op).await
    }

    /// Runs a write under the policy, then wakes the relay for the events it queued.
    pub async fn write<T, E, F, Fut>(&self, op: F) -> Result<T, ResilienceError<E>>
    where
        E: Judge,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let result = self.run(op).await;
        if result.is_ok() {
            self.outbox().committed();
        }
        result
    }

    /// Runs a write under the policy, then hands the relay the events the write returns
    /// with its result: those it queued in the transaction that committed.
    pub async fn write_events<T, E, F, Fut>(&self, op: F) -> Result<T, ResilienceError<E>>
    where
        E: Judge,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(T, Vec<Event>), E>>,
    {
        let (value, events) = self.run(op).await?;
        if !events.is_empty() {
            self.outbox().committed_events(events);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migration_carries_the_table() {
        let m = migration(7);
        assert_eq!((m.version, m.description.as_ref()), (7, "outbox"));
        assert!(m.sql.as_str().contains("CREATE TABLE outbox"));
        // SHA-384 of session-store's original `0002_outbox.sql`: databases migrated before
        // the outbox moved into this library must keep matching.
        let original = "34686f6ed28d166236a21af08f2b59b3d67177565e8fd34f35935cfa3d7167f5\
                        e27a354cff222ccea8841ca5b467c4fb";
        let checksum: String = m.checksum.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(checksum, original);
        let schema = Schema::new("orchestrator").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Outbox::new(&schema).channel(), "orchestrator_outbox");
    }
}
