//! The API-key store during a database outage: every lookup runs under the database
//! resilience policy, so once PostgreSQL has failed a few times the breaker opens and
//! authenticated requests are refused at once as "unavailable" instead of each waiting
//! out the pool timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_gateway::auth::keys::KeyHash;
use agentmesh_gateway::auth::store::StoreError;
use agentmesh_gateway::auth::{ApiKeyStore as _, PostgresKeyStore};
use agentmesh_postgres::{Database, DbError, PoolSettings};
use agentmesh_resilience::{BreakerState, Preset, ResilienceError, RetryPolicy};
use agentmesh_testkit::PgSchema;
use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn resilience_error(error: &StoreError) -> &ResilienceError<DbError> {
    let StoreError::Unavailable(source) = error else { panic!("expected unavailable, got {error:?}") };
    source.downcast_ref::<ResilienceError<DbError>>().unwrap_or_else(|| panic!("not a policy error: {source:?}"))
}

/// The database preset with quick retries.
fn preset() -> Preset {
    Preset {
        retry: RetryPolicy { max_attempts: 2, base_delay: Duration::from_millis(10), ..Preset::database().retry },
        ..Preset::database()
    }
}

/// A TCP forwarder to PostgreSQL that can be stopped: its listener closes and every
/// forwarded connection is cut, as when the database host goes away.
struct Forwarder {
    port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Forwarder {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let spawned = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                spawned.lock().unwrap().push(pipe);
            }
        });
        tasks.lock().unwrap().push(accept);
        Self { port, tasks }
    }

    fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test]
async fn a_database_that_goes_away_opens_the_breaker() {
    let Some(schema) = PgSchema::start("gwout").await else { return };
    let options: PgConnectOptions = schema.url().parse().unwrap();
    let forwarder = Forwarder::start(format!("{}:{}", options.get_host(), options.get_port())).await;
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}?application_name={}",
        options.get_username(),
        forwarder.port,
        options.get_database().unwrap_or("postgres"),
        schema.name()
    );
    let pool = PoolSettings { min: 0, max: 2, acquire_timeout: Duration::from_millis(500) };
    let store = PostgresKeyStore::connect(&url, schema.name(), pool, &preset()).await.unwrap();
    let hash = KeyHash::of("sk-not-a-real-key");
    assert!(store.find_by_hash(&hash).await.unwrap().is_none(), "works while the database is there");

    forwarder.stop();
    let threshold = preset().breaker.failure_threshold;
    for _ in 0..threshold {
        let error = store.find_by_hash(&hash).await.unwrap_err();
        assert!(matches!(resilience_error(&error), ResilienceError::Inner(DbError::Transient(_))), "{error:?}");
    }
    assert_eq!(store.resilience().breaker().state(), BreakerState::Open);
    let error = store.find_by_hash(&hash).await.unwrap_err();
    assert!(matches!(resilience_error(&error), ResilienceError::CircuitOpen { .. }), "{error:?}");
}

#[tokio::test]
async fn an_outage_opens_the_breaker_and_lookups_then_fail_fast() {
    let preset = preset();
    let threshold = preset.breaker.failure_threshold;
    let url = format!("postgres://postgres@127.0.0.1:{}/test", closed_port());
    let pool = PoolSettings { min: 0, max: 2, acquire_timeout: Duration::from_millis(300) };
    let store = PostgresKeyStore::new(Database::lazy(&url, "gateway", pool, &preset).unwrap());
    let hash = KeyHash::of("sk-not-a-real-key");

    // Each call while the breaker is closed tries the database and fails as unavailable.
    for _ in 0..threshold {
        let error = store.find_by_hash(&hash).await.unwrap_err();
        let inner = resilience_error(&error);
        assert!(matches!(inner, ResilienceError::Inner(DbError::Transient(_))), "{inner:?}");
    }
    assert_eq!(store.resilience().breaker().state(), BreakerState::Open);

    // Now the breaker answers without touching the pool, for every operation.
    let error = store.find_by_hash(&hash).await.unwrap_err();
    assert!(matches!(resilience_error(&error), ResilienceError::CircuitOpen { .. }), "{error:?}");
    let error = store.touch(uuid::Uuid::nil(), chrono::Utc::now()).await.unwrap_err();
    assert!(matches!(resilience_error(&error), ResilienceError::CircuitOpen { .. }), "{error:?}");
}
