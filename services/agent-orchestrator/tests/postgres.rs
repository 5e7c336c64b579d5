//! The conformance suite on a real PostgreSQL (two store instances on one schema, as two
//! replicas have), plus what only this backend has: migrations in the service's own
//! schema, and admissions racing on one session.
//!
//! Each test works in a schema of its own (testkit's `PgSchema`) that is dropped when the
//! test ends, even when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use agentmesh_agent_orchestrator::store::postgres::{PoolSettings, PostgresStore};
use agentmesh_agent_orchestrator::store::{
    Admission, Admitted, AgentDefinition, Approval, Concurrency, JsonObject, ModelSettings, NewRun, OrchestratorStore,
    RunPrincipal, RunRequest, StoreError,
};
use agentmesh_events::MemoryBus;
use agentmesh_resilience::Preset;
use agentmesh_testkit::PgSchema;
use agentmesh_testkit::outbox::{RunningRelay, quick_relay, test_pool};
use conformance::Fixture;
use uuid::Uuid;

/// Stops the relay, then drops the schema (field order).
struct FixtureGuard {
    _relay: RunningRelay,
    _schema: PgSchema,
}

async fn connect(schema: &PgSchema) -> PostgresStore {
    PostgresStore::connect(schema.url(), schema.name(), test_pool(), &Preset::database()).await.unwrap()
}

async fn fixture() -> Option<Fixture> {
    let schema = PgSchema::start("orch").await?;
    let store = connect(&schema).await;
    let twin = connect(&schema).await;
    let bus = MemoryBus::default();
    let relay = RunningRelay::start(store.database().relay(Arc::new(bus.clone())).with_settings(quick_relay()));
    Some(Fixture {
        store: Arc::new(store),
        twin: Arc::new(twin),
        bus,
        guard: Box::new(FixtureGuard { _relay: relay, _schema: schema }),
    })
}

conformance_tests!(fixture);

async fn scalar<T>(store: &PostgresStore, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(store.pool()).await.unwrap()
}

#[tokio::test]
async fn migrations_are_idempotent_and_live_in_the_schema() {
    let Some(schema) = PgSchema::start("orch").await else { return };
    let store = connect(&schema).await;
    connect(&schema).await.ping().await.unwrap();
    let applied: i64 = scalar(&store, "SELECT count(*) FROM _sqlx_migrations WHERE success").await;
    assert_eq!(applied, 4);
    let tables: i64 = scalar(
        &store,
        &format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' \
             AND table_name IN ('agents', 'runs', 'run_checkpoints', 'outbox')",
            store.database().schema()
        ),
    )
    .await;
    assert_eq!(tables, 4);
    let unreachable = PoolSettings { acquire_timeout: Duration::from_secs(1), ..test_pool() };
    let result =
        PostgresStore::connect("postgres://postgres@127.0.0.1:1/test", "x", unreachable, &Preset::database()).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
}

/// Replicas admitting runs on one session at once, each by the reject policy: exactly one
/// holds the session, every other is told it is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_admissions_leave_one_holder() {
    let Some(schema) = PgSchema::start("orch").await else { return };
    let stores = [Arc::new(connect(&schema).await), Arc::new(connect(&schema).await)];
    let definition = AgentDefinition {
        name: "racer".into(),
        description: None,
        system_prompt: None,
        model: ModelSettings::default(),
        tools: vec![],
        approval: Approval::default(),
        concurrency: Concurrency::Reject,
        metadata: JsonObject::new(),
    };
    let agent = stores[0].create_agent("alice", definition).await.unwrap();
    let session = Uuid::now_v7();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let run = NewRun {
                id: Uuid::now_v7(),
                agent_id: agent.id,
                session_id: session,
                principal: RunPrincipal { user_id: "alice".into(), tenant: None, tier: "basic".into(), scopes: vec![] },
                request: RunRequest { message: "hi".into(), cancel_on_disconnect: false },
                idempotency_key: None,
                metadata: JsonObject::new(),
                starter: None,
            };
            store.admit_run(run, Some(Admission::Reject)).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Admitted::Created { ready: true, .. }) => created += 1,
            Err(StoreError::SessionBusy(_)) => {}
            other => panic!("unexpected admission: {other:?}"),
        }
    }
    assert_eq!(created, 1);
    let holders: i64 = scalar(&stores[0], "SELECT count(*) FROM runs WHERE holds_session").await;
    assert_eq!(holders, 1);
}
