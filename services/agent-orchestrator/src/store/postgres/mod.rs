//! PostgreSQL backend: agents, runs and checkpoints in the service's own schema
//! (`agent_orchestrator`), with a transactional outbox for its domain events.
//!
//! # Layout
//!
//! - this module: connecting (through [`agentmesh_postgres::Database`]: schema, pool,
//!   advisory-locked migrations), the [`PostgresStore`] handle and the
//!   [`OrchestratorStore`] implementation, every operation running under the database
//!   policy;
//! - `agents` / `runs`: the SQL of each operation; `rows`: decoding rows; `error`: how
//!   failures become [`StoreError`]s.
//!
//! # Design choices
//!
//! - **Static SQL**, checked at run time by the tests against the real server; optional
//!   filters are `($n IS NULL OR ...)`.
//! - **Writes are short transactions** that change the rows and queue their events in the
//!   outbox together ([`agentmesh_postgres::outbox`]); the [`OutboxRelay`] publishes them
//!   after the commit.
//! - **Run changes serialise per session, never per agent.** An agent's status is derived
//!   from its runs when the agent is read (`rows::agent_status!`), not stored, so no run
//!   writes the agent's row: an admission only keeps the agent from being deleted
//!   (`FOR KEY SHARE`, which admissions do not wait on among themselves). Admissions and
//!   transitions that change the session's holder lock the session (a transaction-scoped
//!   advisory lock), then the run rows — one session per transaction, always in that
//!   order, so they cannot deadlock. The partial unique index on the session's holder
//!   backs the lock up: a violation is retried as a whole. A transition that leaves the
//!   holder alone (start, user message, progress: most of a run's writes) locks only the
//!   run's row. What a transition does is [`lifecycle::apply`], shared with the memory
//!   backend.
//! - **Claims skip locked rows** (`FOR UPDATE SKIP LOCKED`), so replicas claiming at once
//!   take disjoint runs.
//!
//! [`lifecycle::apply`]: crate::store::lifecycle::apply

mod agents;
mod error;
mod rows;
mod runs;

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use agentmesh_events::Event;
use agentmesh_postgres::error::Failure;
use agentmesh_postgres::outbox::{self, Outbox, OutboxDatabase};
use agentmesh_resilience::Preset;
use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;
use uuid::Uuid;

pub use agentmesh_postgres::PoolSettings;
pub use agentmesh_postgres::outbox::{OutboxRelay, RelaySettings};

use self::error::{DbError, classify, into_store_error};
use super::{
    Admission, Admitted, AgentDefinition, AgentQuery, AgentRecord, NewRun, OrchestratorStore, Page, RunQuery,
    RunRecord, RunTransition, SavedStep, StoreError, StoredCheckpoint, Transitioned,
};

/// The migrations in `services/agent-orchestrator/migrations`.
static EMBEDDED: Migrator = sqlx::migrate!("./migrations");

/// Version of the library's outbox table among this service's migrations.
const OUTBOX_VERSION: i64 = 2;

/// Version of the library's outbox `actor` column (the service's own migrations go on at 4).
const OUTBOX_ACTOR_VERSION: i64 = 3;

static MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| {
    agentmesh_postgres::with_migrations(
        &EMBEDDED,
        [outbox::migration(OUTBOX_VERSION), outbox::actor_migration(OUTBOX_ACTOR_VERSION)],
    )
});

/// Every migration of the agent-orchestrator schema: its own plus the outbox (for
/// `agentmesh migrate`).
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

    /// Runs a write under the policy, then hands the relay the events it queued (returned
    /// with its result).
    async fn write_events<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(T, Vec<Event>), DbError>>,
    {
        self.database.write_events(op).await.map_err(into_store_error)
    }
}

#[async_trait]
impl OrchestratorStore for PostgresStore {
    async fn create_agent(&self, user_id: &str, agent: AgentDefinition) -> Result<AgentRecord, StoreError> {
        self.create_agent_impl(user_id, agent).await
    }

    async fn get_agent(&self, user_id: &str, id: Uuid) -> Result<AgentRecord, StoreError> {
        self.get_agent_impl(user_id, id).await
    }

    async fn list_agents(&self, user_id: &str, query: &AgentQuery) -> Result<Page<AgentRecord>, StoreError> {
        self.list_agents_impl(user_id, query).await
    }

    async fn update_agent(&self, user_id: &str, id: Uuid, agent: AgentDefinition) -> Result<AgentRecord, StoreError> {
        self.update_agent_impl(user_id, id, agent).await
    }

    async fn delete_agent(&self, user_id: &str, id: Uuid) -> Result<AgentRecord, StoreError> {
        self.delete_agent_impl(user_id, id).await
    }

    async fn admit_run(&self, run: NewRun, admission: Option<Admission>) -> Result<Admitted, StoreError> {
        self.admit_run_impl(&run, admission).await
    }

    async fn get_run(&self, user_id: &str, id: Uuid) -> Result<RunRecord, StoreError> {
        self.get_run_impl(Some(user_id), id).await
    }

    async fn load_run(&self, id: Uuid) -> Result<RunRecord, StoreError> {
        self.get_run_impl(None, id).await
    }

    async fn find_run_by_key(&self, user_id: &str, key: &str) -> Result<Option<RunRecord>, StoreError> {
        self.find_run_by_key_impl(user_id, key).await
    }

    async fn list_session_runs(
        &self,
        user_id: &str,
        session_id: Uuid,
        query: &RunQuery,
    ) -> Result<Page<RunRecord>, StoreError> {
        self.list_session_runs_impl(user_id, session_id, query).await
    }

    async fn list_unfinished_runs(&self, user_id: &str, agent_id: Uuid) -> Result<Vec<RunRecord>, StoreError> {
        self.list_unfinished_runs_impl(user_id, agent_id).await
    }

    async fn transition_run(&self, id: Uuid, transition: RunTransition) -> Result<Transitioned, StoreError> {
        self.transition_run_impl(id, &transition).await
    }

    async fn renew_leases(&self, owner: &str, ids: &[Uuid], lease: Duration) -> Result<Vec<Uuid>, StoreError> {
        self.renew_leases_impl(owner, ids, lease).await
    }

    async fn claim_abandoned_runs(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.claim_abandoned_runs_impl(owner, lease, limit).await
    }

    async fn save_checkpoint(&self, run_id: Uuid, step: u32, checkpoint: String) -> Result<(), StoreError> {
        self.save_checkpoint_impl(run_id, step, &checkpoint).await
    }

    async fn save_step(&self, run_id: Uuid, step: SavedStep) -> Result<(), StoreError> {
        self.save_step_impl(run_id, &step).await
    }

    async fn load_checkpoint(&self, run_id: Uuid) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.load_checkpoint_impl(run_id).await
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
        assert_eq!(versions, [1, 2, 3, 4]);
    }
}
