//! `agentmesh up --postgres/--redis/--nats` as a person runs it: a backend that cannot be
//! reached stops it with exit 1 and one line saying what to do (after its progress line,
//! the password never shown), and a reachable PostgreSQL is reported with its migrations
//! applied before the mesh starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use agentmesh_testkit::PgDatabase;

fn up(args: &[&str]) -> Command {
    let port = agentmesh_testkit::ports::reserve().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentmesh"));
    command
        .env_clear()
        .env("OBSERVABILITY_LOG_LEVEL", "ERROR")
        .env("OBSERVABILITY_TRACING_ENABLED", "false")
        .args(["up", "--http", &format!("127.0.0.1:{port}")])
        .args(args);
    command
}

/// A loopback port nothing listens on (reserved, so no other test starts a server there).
fn closed_port() -> u16 {
    agentmesh_testkit::ports::reserve().unwrap()
}

#[test]
fn an_unreachable_backend_stops_up_with_one_line_saying_what_to_do() {
    let port = closed_port();
    let cases = [
        ("--postgres", format!("postgres://me:hunter2@127.0.0.1:{port}/app"), "PostgreSQL", "fix --postgres / DB_URL"),
        ("--redis", format!("redis://127.0.0.1:{port}"), "Redis", "fix --redis / REDIS_URL"),
        ("--nats", format!("nats://127.0.0.1:{port}"), "NATS", "fix --nats / NATS_URL"),
    ];
    for (flag, url, backend, advice) in cases {
        let output = up(&[flag, &url]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(output.stdout.is_empty(), "no banner");
        // JSON log lines are for log shippers (stderr is not a terminal here); the rest is
        // for people: the progress line, then the one line of the error.
        let lines: Vec<&str> = stderr.lines().filter(|line| !line.starts_with('{')).collect();
        assert_eq!(lines.len(), 2, "{stderr}");
        assert!(lines[0].starts_with(&format!("connecting to {backend} at ")), "{stderr}");
        assert!(lines[0].ends_with("… failed"), "{stderr}");
        assert!(lines[1].starts_with(&format!("agentmesh: cannot reach {backend} at ")), "{stderr}");
        assert!(lines[1].contains(advice), "{stderr}");
        assert!(!stderr.contains("hunter2"), "the password is never shown: {stderr}");
    }
}

#[tokio::test]
async fn a_reachable_postgres_is_migrated_before_the_mesh_starts() {
    let Some(database) = PgDatabase::create("up_backends").await else { return };
    let mut child = up(&["--postgres", database.url()]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr).lines().map_while(Result::ok).find(|line| !line.starts_with('{'))
    });
    let first = tokio::time::timeout(std::time::Duration::from_secs(60), first).await.unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let first = first.unwrap_or_default();
    assert!(first.starts_with("connecting to PostgreSQL at postgres://"), "{first}");
    assert!(first.ends_with("… ok (migrations applied)"), "{first}");
}
