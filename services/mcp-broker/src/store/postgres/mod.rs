//! PostgreSQL backend: the registry in the service's own schema (`mcp_broker`), with a
//! transactional outbox for its domain events.
//!
//! # Layout
//!
//! - this module: connecting (through [`agentmesh_postgres::Database`]: schema, pool,
//!   advisory-locked migrations), the [`PostgresStore`] handle and the [`McpStore`]
//!   implementation, every operation running under the database policy;
//! - `tools` / `servers`: the SQL of each operation; `rows`: decoding rows; `error`: how
//!   failures become [`StoreError`]s.
//!
//! # Design choices
//!
//! - **Static SQL**, checked at run time by the tests against the real server; optional
//!   filters are `($n IS NULL OR ...)`, so each operation is one statement.
//! - **Writes are short transactions** that change the rows and queue their events in the
//!   outbox together ([`agentmesh_postgres::outbox`]); the [`OutboxRelay`] publishes them
//!   after the commit. Ids and timestamps come from the store ([`super::now`]).
//! - **Uniqueness** is the database's: a taken name is the unique constraint's violation,
//!   an unknown server the foreign key's. A sync names tools under a transaction-scoped
//!   advisory lock, so two syncs never pick the same free name; a direct create racing
//!   a sync fails the sync's insert, which is then retried as a whole.

mod error;
mod rows;
mod servers;
mod tools;

use std::future::Future;
use std::sync::LazyLock;

use agentmesh_postgres::error::Failure;
use agentmesh_postgres::outbox::{self, Outbox, OutboxDatabase};
use agentmesh_resilience::Preset;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;
use uuid::Uuid;

pub use agentmesh_postgres::PoolSettings;
pub use agentmesh_postgres::outbox::{OutboxRelay, RelaySettings};

use self::error::{DbError, classify, into_store_error};
use super::{
    DiscoveredTool, Handshake, HealthChange, McpServerRecord, McpStore, Page, ServerConfig, ServerQuery, ServerStatus,
    StoreError, SyncOutcome, ToolDefinition, ToolQuery, ToolRecord,
};

/// The migrations in `services/mcp-broker/migrations`.
static EMBEDDED: Migrator = sqlx::migrate!("./migrations");

/// Version of the library's outbox table among this service's migrations.
const OUTBOX_VERSION: i64 = 2;

/// Version of the library's outbox `actor` column (the next migration of its own is 4).
const OUTBOX_ACTOR_VERSION: i64 = 3;

static MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| {
    agentmesh_postgres::with_migrations(
        &EMBEDDED,
        [outbox::migration(OUTBOX_VERSION), outbox::actor_migration(OUTBOX_ACTOR_VERSION)],
    )
});

/// Every migration of the mcp-broker schema: its own plus the outbox (for `agentmesh migrate`).
pub fn migrations() -> &'static Migrator {
    &MIGRATIONS
}

/// The PostgreSQL store. Cheap to clone; clones share the pool, the policy state and the
/// relay wake-up.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    database: OutboxDatabase,
}

impl PostgresStore {
    /// Connects to `url` and prepares `schema` (created if missing, migrated under its
    /// advisory lock); operations run under `resilience`. Connecting again is a no-op.
    pub async fn connect(url: &str, schema: &str, pool: PoolSettings, resilience: &Preset) -> Result<Self, StoreError> {
        let database =
            OutboxDatabase::connect(url, schema, pool, resilience, migrations()).await.map_err(Failure::from)?;
        Ok(Self { database })
    }

    /// The database and its outbox: schema, pool, policy state (for health output) and
    /// the relay publishing this store's events.
    pub fn database(&self) -> &OutboxDatabase {
        &self.database
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        self.database.pool()
    }

    /// The outbox, to queue a write's events in its transaction.
    fn outbox(&self) -> &Outbox {
        self.database.outbox()
    }

    /// Runs one operation under the database policy; `op` is one attempt.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        self.database.run(op).await.map_err(into_store_error)
    }

    /// Runs a write under the policy, then wakes the relay for the events it queued.
    async fn write<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        self.database.write(op).await.map_err(into_store_error)
    }
}

#[async_trait]
impl McpStore for PostgresStore {
    async fn create_tool(&self, tool: ToolDefinition) -> Result<ToolRecord, StoreError> {
        self.create_tool_impl(tool).await
    }

    async fn get_tool(&self, id: Uuid) -> Result<ToolRecord, StoreError> {
        self.get_tool_impl(id).await
    }

    async fn get_tool_by_name(&self, name: &str) -> Result<ToolRecord, StoreError> {
        self.get_tool_by_name_impl(name).await
    }

    async fn list_tools(&self, query: &ToolQuery) -> Result<Page<ToolRecord>, StoreError> {
        self.list_tools_impl(query).await
    }

    async fn update_tool(&self, id: Uuid, tool: ToolDefinition) -> Result<ToolRecord, StoreError> {
        self.update_tool_impl(id, tool).await
    }

    async fn delete_tool(&self, id: Uuid) -> Result<ToolRecord, StoreError> {
        self.delete_tool_impl(id).await
    }

    async fn create_server(&self, server: ServerConfig) -> Result<McpServerRecord, StoreError> {
        self.create_server_impl(server).await
    }

    async fn get_server(&self, id: Uuid) -> Result<McpServerRecord, StoreError> {
        self.get_server_impl(id).await
    }

    async fn list_servers(&self, query: &ServerQuery) -> Result<Page<McpServerRecord>, StoreError> {
        self.list_servers_impl(query).await
    }

    async fn update_server(&self, id: Uuid, server: ServerConfig) -> Result<McpServerRecord, StoreError> {
        self.update_server_impl(id, server).await
    }

    async fn delete_server(&self, id: Uuid) -> Result<(McpServerRecord, Vec<ToolRecord>), StoreError> {
        self.delete_server_impl(id).await
    }

    async fn sync_tools(&self, server_id: Uuid, discovered: Vec<DiscoveredTool>) -> Result<SyncOutcome, StoreError> {
        self.sync_tools_impl(server_id, &discovered).await
    }

    async fn record_handshake(&self, server_id: Uuid, handshake: Handshake) -> Result<McpServerRecord, StoreError> {
        self.record_handshake_impl(server_id, &handshake).await
    }

    async fn record_health(
        &self,
        server_id: Uuid,
        status: ServerStatus,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<HealthChange, StoreError> {
        self.record_health_impl(server_id, status, at, reason).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|| async {
            sqlx::query("SELECT 1").execute(self.pool()).await.map_err(classify)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_include_the_outbox_once() {
        let versions: Vec<i64> = migrations().iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 3]);
    }
}
