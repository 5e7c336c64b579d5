//! `agentmesh migrate [--check]` as an operator runs it: the real binary against a
//! database of its own on the real PostgreSQL (created and dropped by the test), so the
//! services' default schemas can be used without touching anything else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use agentmesh_testkit::PgDatabase;
use sqlx::Connection as _;

/// Runs `agentmesh migrate <args>` against `url` with only the needed environment.
fn migrate(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .env_clear()
        .env("OBSERVABILITY_LOG_LEVEL", "ERROR")
        .env("OBSERVABILITY_TRACING_ENABLED", "false")
        .env("DB_URL", url)
        .arg("migrate")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn check_lists_pending_migrations_until_migrate_applies_them() {
    let Some(database) = PgDatabase::create("migrate").await else { return };

    // A fresh database: everything is pending, per service, and --check exits 1.
    let before = migrate(database.url(), &["--check"]);
    assert_eq!(before.status.code(), Some(1), "{}", text(&before.stderr));
    let listed = text(&before.stdout);
    assert!(listed.contains("session-store (schema session_store): 5 pending"), "{listed}");
    assert!(listed.contains("  0002 outbox"), "{listed}");
    assert!(listed.contains("mcp-broker (schema mcp_broker): 3 pending"), "{listed}");
    assert!(listed.contains("  0001 registry"), "{listed}");
    assert!(listed.contains("agent-orchestrator (schema agent_orchestrator): 4 pending"), "{listed}");
    assert!(listed.contains("  0001 agents runs"), "{listed}");
    assert!(listed.contains("gateway (schema gateway): 1 pending"), "{listed}");
    assert!(listed.contains("  0001 api keys"), "{listed}");

    // --check creates nothing.
    let mut conn = sqlx::PgConnection::connect(database.url()).await.unwrap();
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname IN ('session_store', 'mcp_broker', 'gateway')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(schemas, 0);

    let applied = migrate(database.url(), &[]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    let out = text(&applied.stdout);
    assert!(out.contains("session-store (schema session_store): applied 5"), "{out}");
    assert!(out.contains("mcp-broker (schema mcp_broker): applied 3"), "{out}");
    assert!(out.contains("agent-orchestrator (schema agent_orchestrator): applied 4"), "{out}");
    assert!(out.contains("gateway (schema gateway): applied 1"), "{out}");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_schema IN ('session_store', 'mcp_broker', 'gateway') \
         AND table_name IN ('sessions', 'outbox', 'api_keys', 'tools', 'mcp_servers') \
         ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "gateway.api_keys",
            "mcp_broker.mcp_servers",
            "mcp_broker.outbox",
            "mcp_broker.tools",
            "session_store.outbox",
            "session_store.sessions"
        ]
    );

    // Up to date: --check exits 0, and migrating again changes nothing.
    let after = migrate(database.url(), &["--check"]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after.stderr));
    let out = text(&after.stdout);
    assert!(out.contains("session-store (schema session_store): up to date"), "{out}");
    assert!(out.contains("mcp-broker (schema mcp_broker): up to date"), "{out}");
    assert!(out.contains("agent-orchestrator (schema agent_orchestrator): up to date"), "{out}");
    assert!(out.contains("gateway (schema gateway): up to date"), "{out}");
    let again = migrate(database.url(), &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("gateway (schema gateway): up to date"));
    sqlx::Connection::close(conn).await.unwrap();
}

#[test]
fn an_unreachable_database_fails_with_exit_1() {
    let output = migrate("postgres://postgres@127.0.0.1:1/none?connect_timeout=2", &["--check"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("session-store"), "{}", text(&output.stderr));
}
