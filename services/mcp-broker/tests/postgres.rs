//! The conformance suite on a real PostgreSQL, plus what only this backend has:
//! migrations in the service's own schema, and syncs racing direct creates.
//!
//! Each test works in a schema of its own (testkit's `PgSchema`) that is dropped when the
//! test ends, even when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::MemoryBus;
use agentmesh_mcp_broker::store::postgres::{PoolSettings, PostgresStore};
use agentmesh_mcp_broker::store::{
    Authentication, DiscoveredTool, JsonObject, McpStore, ServerConfig, StoreError, ToolDefinition, Transport,
};
use agentmesh_resilience::Preset;
use agentmesh_testkit::PgSchema;
use agentmesh_testkit::outbox::{RunningRelay, quick_relay, test_pool};
use conformance::Fixture;

/// Stops the relay, then drops the schema (field order).
struct FixtureGuard {
    _relay: RunningRelay,
    _schema: PgSchema,
}

async fn fixture() -> Option<Fixture> {
    let schema = PgSchema::start("mcp").await?;
    let store = PostgresStore::connect(schema.url(), schema.name(), test_pool(), &Preset::database()).await.unwrap();
    let bus = MemoryBus::default();
    let relay = RunningRelay::start(store.database().relay(Arc::new(bus.clone())).with_settings(quick_relay()));
    Some(Fixture { store: Arc::new(store), bus, guard: Box::new(FixtureGuard { _relay: relay, _schema: schema }) })
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
    let Some(schema) = PgSchema::start("mcp").await else { return };
    let store = PostgresStore::connect(schema.url(), schema.name(), test_pool(), &Preset::database()).await.unwrap();
    let again = PostgresStore::connect(schema.url(), schema.name(), test_pool(), &Preset::database()).await.unwrap();
    again.ping().await.unwrap();
    let applied: i64 = scalar(&store, "SELECT count(*) FROM _sqlx_migrations WHERE success").await;
    assert_eq!(applied, 3);
    let tables: i64 = scalar(
        &store,
        &format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' \
             AND table_name IN ('tools', 'mcp_servers', 'outbox')",
            store.database().schema()
        ),
    )
    .await;
    assert_eq!(tables, 3);
    let unreachable = PoolSettings { acquire_timeout: Duration::from_secs(1), ..test_pool() };
    let result =
        PostgresStore::connect("postgres://postgres@127.0.0.1:1/test", "x", unreachable, &Preset::database()).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
}

/// Syncs of many servers running while tools are created by hand: every name stays
/// unique, nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_syncs_and_creates_keep_names_unique() {
    let Some(schema) = PgSchema::start("mcp").await else { return };
    let store = PostgresStore::connect(schema.url(), schema.name(), test_pool(), &Preset::database()).await.unwrap();
    let mut servers = Vec::new();
    for i in 0..4 {
        let config = ServerConfig {
            name: format!("s{i}"),
            description: None,
            endpoint: "http://127.0.0.1:1/mcp".into(),
            authentication: Authentication::default(),
            capabilities: vec![],
            health_check_url: None,
            enabled: true,
            transport: Transport::StreamableHttp,
            stdio: None,
            // Every server names its tools alike: they compete for the same names.
            tool_prefix: Some("shared_".into()),
        };
        servers.push(store.create_server(config).await.unwrap().id);
    }
    let discovered: Vec<DiscoveredTool> = (0..5)
        .map(|i| DiscoveredTool {
            remote_name: format!("t{i}"),
            description: String::new(),
            title: None,
            input_schema: JsonObject::new(),
            output_schema: None,
            annotations: None,
        })
        .collect();
    let mut tasks = Vec::new();
    for server in servers {
        let (store, discovered) = (store.clone(), discovered.clone());
        tasks.push(tokio::spawn(async move { store.sync_tools(server, discovered).await.map(|_| ()) }));
    }
    for i in 0..5 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let tool = ToolDefinition {
                name: format!("shared_t{i}_2"),
                description: "by hand".into(),
                schema: JsonObject::new(),
                mcp_server_id: None,
                enabled: true,
                metadata: JsonObject::new(),
                title: None,
                output_schema: None,
                annotations: None,
            };
            match store.create_tool(tool).await {
                Ok(_) | Err(StoreError::NameTaken(_)) => Ok(()),
                Err(other) => Err(other),
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let total: i64 = scalar(&store, "SELECT count(*) FROM tools WHERE mcp_server_id IS NOT NULL").await;
    assert_eq!(total, 20, "every server got all of its tools");
    let distinct: i64 = scalar(&store, "SELECT count(DISTINCT name) FROM tools").await;
    let all: i64 = scalar(&store, "SELECT count(*) FROM tools").await;
    assert_eq!(distinct, all);
}
