//! PostgreSQL for every agentmesh service that owns data, so that session-store, the
//! gateway's key store and the services still to come (agent-orchestrator, mcp-broker)
//! share one implementation of the parts that are easy to get subtly wrong:
//!
//! - [`Schema`]: one schema per service (ARCHITECTURE §2), a validated identifier,
//!   created if missing, first on the `search_path` of every pooled connection;
//! - [`Database`]: the pool (`DB_MIN_POOL_SIZE`, `DB_MAX_POOL_SIZE`, `DB_POOL_TIMEOUT` as
//!   [`PoolSettings`]) and the database [`Resilience`](agentmesh_resilience::Resilience)
//!   policy every call runs under ([`Database::run`]: breaker → timeout → retry →
//!   bulkhead), so an outage is answered fast by an open breaker instead of every caller
//!   waiting out the pool timeout;
//! - [`migrate()`]: the owner's embedded sqlx migrations, applied under an advisory lock
//!   keyed by the schema, so replicas starting together take turns and a failed migration
//!   leaves no lock behind; [`pending()`] lists what is not applied yet;
//! - [`error`]: the one classification of transient failures (SQLSTATE classes, pool
//!   timeouts, I/O) that decides what is retried and what counts against the breaker;
//! - [`listing`]: the rows of a paged listing (one statement: the page joined onto the
//!   count of matches);
//! - [`outbox`]: the transactional outbox (events written in the data's transaction) and
//!   the [`OutboxRelay`](outbox::OutboxRelay) that publishes them to the event bus.
//!
//! The crate takes its settings as plain values (a URL, a schema name, [`PoolSettings`],
//! a resilience [`Preset`](agentmesh_resilience::Preset)) and does not depend on the
//! runtime's configuration layout.

pub mod database;
pub mod error;
pub mod listing;
pub mod migrate;
pub mod outbox;
pub mod schema;

use chrono::{DateTime, Timelike as _, Utc};

pub use database::{Database, PoolSettings, SetupError};
pub use error::{DbError, Judge, classify, classify_commit, is_transient, is_transient_state};
pub use migrate::{PendingMigration, migrate, pending, with_migrations};
pub use schema::{Schema, SchemaError};

/// `at` truncated to the microsecond PostgreSQL stores, so a value written and read back
/// compares equal.
pub fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(at.nanosecond() / 1_000 * 1_000).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_drops_only_the_nanoseconds() {
        let at = DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap_or_default();
        assert_eq!(micros(at).nanosecond(), 123_456_000);
        assert_eq!(micros(at).timestamp(), 1_800_000_000);
    }
}
