//! Opening the storage backend `USE_DATABASE` selects, with what it needs running
//! alongside: PostgreSQL (schema [`POSTGRES_SCHEMA`]) and its outbox relay, or memory.
//! Production never gets here with memory: the configuration refuses it
//! (`agentmesh_runtime::config`).

use std::sync::Arc;

use agentmesh_events::Publisher;
use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;
use agentmesh_runtime::config::StorageBackend;
use agentmesh_runtime::{Config, Dependency};

use crate::events::PublishDirect;
use crate::store::memory::MemoryStore;
use crate::store::postgres::{OutboxRelay, PoolSettings, PostgresStore};
use crate::store::{OrchestratorStore, StoreError};

/// agent-orchestrator's own PostgreSQL schema (ARCHITECTURE §2: one schema per service).
pub const POSTGRES_SCHEMA: &str = "agent_orchestrator";

/// A connected backend and the background work it needs.
pub struct Backend {
    /// The store.
    pub store: Arc<dyn OrchestratorStore>,
    /// PostgreSQL's outbox relay, to run until shutdown ([`OutboxRelay::run`]).
    pub relay: Option<OutboxRelay>,
    /// The backend as a reported dependency (probed with the store's `ping`).
    pub dependency: Dependency,
}

/// The backend `USE_DATABASE` selects: PostgreSQL, else memory, whose events go straight
/// to `publisher` (Redis, which session-store can use, holds no runs: `USE_REDIS` alone
/// means memory here).
pub async fn open_backend(config: &Config, publisher: Arc<dyn Publisher>) -> Result<Backend, StoreError> {
    Ok(match config.storage {
        StorageBackend::Postgres => {
            let db = &config.database;
            let pool = PoolSettings { min: db.min_pool_size, max: db.max_pool_size, acquire_timeout: db.pool_timeout };
            let url = db.url();
            let store =
                PostgresStore::connect(url.expose(), POSTGRES_SCHEMA, pool, &config.resilience.database).await?;
            let relay = store.database().relay(publisher);
            let store = Arc::new(store);
            let dependency =
                store_dependency("postgresql", store.clone()).with_resilience(store.database().resilience());
            Backend { store, relay: Some(relay), dependency }
        }
        StorageBackend::Memory | StorageBackend::Redis => {
            if config.storage == StorageBackend::Redis {
                tracing::warn!(
                    "agent-orchestrator keeps agents and runs in memory: Redis is not one of its backends \
                     (USE_DATABASE is)"
                );
            }
            let store = Arc::new(MemoryStore::new(Arc::new(PublishDirect::new(publisher))));
            let dependency = store_dependency("memory", store.clone());
            Backend { store, relay: None, dependency }
        }
    })
}

/// The store as a dependency named `name`, probed with its `ping`.
fn store_dependency(name: &str, store: Arc<dyn OrchestratorStore>) -> Dependency {
    Dependency::new(name, ExternalServiceType::Database).with_probe(move || {
        let store = store.clone();
        async move { store.ping().await }
    })
}
