//! `agentmesh keys` as an operator runs it: the real binary against a real PostgreSQL, in
//! a schema of its own (`GATEWAY_DB_SCHEMA`), dropped when the test ends; and the refusal
//! to keep keys in memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::Duration;

use agentmesh_gateway::auth::keys::KeyHash;
use agentmesh_gateway::auth::{ApiKeyStore as _, PostgresKeyStore};
use agentmesh_postgres::PoolSettings;
use agentmesh_resilience::Preset;
use agentmesh_testkit::PgSchema;

/// Runs `agentmesh keys <args>` with only the given environment (plus quiet logs).
fn agentmesh(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentmesh"));
    command
        .env_clear()
        .env("OBSERVABILITY_LOG_LEVEL", "ERROR")
        .env("OBSERVABILITY_TRACING_ENABLED", "false")
        .arg("keys")
        .args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn create_list_and_revoke_through_the_binary() {
    let Some(schema) = PgSchema::start("gwcli").await else { return };
    let env = [("USE_DATABASE", "true"), ("DB_URL", schema.url()), ("GATEWAY_DB_SCHEMA", schema.name())];

    // create: the key alone on stdout, metadata on stderr.
    let created = agentmesh(
        &env,
        &[
            "create",
            "--user",
            "alice",
            "--tenant",
            "acme",
            "--tier",
            "premium",
            "--scope",
            "sessions:read",
            "--name",
            "ci",
        ],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let stdout = text(&created.stdout);
    let key = stdout.trim_end().to_owned();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(key.starts_with("sk-") && key.len() == 35, "{key}");
    let stderr = text(&created.stderr);
    let prefix = &key[..11];
    assert!(
        stderr.contains(prefix) && stderr.contains("alice") && stderr.contains("cannot be shown again"),
        "{stderr}"
    );
    assert!(!stderr.contains(&key), "the key goes to stdout only");

    // The gateway finds it by its hash in the same schema.
    let pool = PoolSettings { min: 0, max: 1, acquire_timeout: Duration::from_secs(10) };
    let store = PostgresKeyStore::connect(schema.url(), schema.name(), pool, &Preset::database()).await.unwrap();
    let record = store.find_by_hash(&KeyHash::of(&key)).await.unwrap().unwrap();
    assert_eq!((record.user_id.as_str(), record.tenant_id.as_str()), ("alice", "acme"));
    assert_eq!(record.scopes, ["sessions:read"]);

    let second = agentmesh(&env, &["create", "--user", "bob"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let bob_key = text(&second.stdout).trim_end().to_owned();

    // list: by prefix, never the key; filtered by user.
    let listed = agentmesh(&env, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let table = text(&listed.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(prefix) && table.contains(&bob_key[..11]), "{table}");
    assert!(!table.contains(&key) && !table.contains(&bob_key), "{table}");
    let alice_only = text(&agentmesh(&env, &["list", "--user", "alice"]).stdout);
    assert!(alice_only.contains(prefix) && !alice_only.contains(&bob_key[..11]), "{alice_only}");

    // revoke by the listed prefix: the key stops working and leaves the default listing.
    let revoked = agentmesh(&env, &["revoke", prefix]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    assert!(text(&revoked.stdout).contains(&record.id.to_string()), "{}", text(&revoked.stdout));
    assert!(!store.find_by_hash(&KeyHash::of(&key)).await.unwrap().unwrap().is_active());
    assert!(!text(&agentmesh(&env, &["list"]).stdout).contains(prefix));
    let all = text(&agentmesh(&env, &["list", "--include-revoked"]).stdout);
    assert!(all.lines().any(|line| line.contains(prefix) && line.contains("revoked")), "{all}");

    // revoke by id and by the full key work too; unknown and too-short inputs fail.
    let bob = store.find_by_hash(&KeyHash::of(&bob_key)).await.unwrap().unwrap();
    let by_key = agentmesh(&env, &["revoke", &bob_key]);
    assert!(by_key.status.success(), "{}", text(&by_key.stderr));
    assert!(!text(&by_key.stdout).contains(&bob_key));
    let again = agentmesh(&env, &["revoke", &bob.id.to_string()]);
    assert!(again.status.success() && text(&again.stdout).contains("already revoked"), "{}", text(&again.stdout));
    let unknown = agentmesh(&env, &["revoke", "sk-nothing1"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("no API key matches"), "{}", text(&unknown.stderr));
    let short = agentmesh(&env, &["revoke", "sk-"]);
    assert!(!short.status.success());
    assert!(text(&short.stderr).contains("at least"), "{}", text(&short.stderr));
    let bad_tier = agentmesh(&env, &["create", "--user", "x", "--tier", "gold"]);
    assert!(!bad_tier.status.success());
    let bad_scope = agentmesh(&env, &["create", "--user", "x", "--scope", "Not A Scope"]);
    assert!(!bad_scope.status.success());
    assert!(text(&bad_scope.stderr).contains("invalid scope"), "{}", text(&bad_scope.stderr));
}

#[test]
fn memory_storage_is_refused_with_a_clear_message() {
    for env in [vec![], vec![("USE_REDIS", "true")]] {
        let output = agentmesh(&env, &["list"]);
        assert!(!output.status.success());
        assert_ne!(output.status.code(), Some(0));
        let stderr = text(&output.stderr);
        assert!(stderr.contains("USE_DATABASE=true") && stderr.contains("DB_URL"), "{stderr}");
        assert!(output.stdout.is_empty());
    }
    let output = agentmesh(&[], &["create", "--user", "alice"]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no key is printed when none is stored");
}
