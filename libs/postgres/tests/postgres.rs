//! The library on the real PostgreSQL: replicas preparing one schema at once, failed
//! migrations and the advisory lock, the transient classification of real server
//! errors, the breaker during an outage, and the outbox with its relay (rows read from
//! the table, and events handed over by their writers). Each test works in a schema of
//! its own (testkit's `PgSchema`), dropped when it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_events::{Event, EventsError, PublishAck, Publisher};
use agentmesh_postgres::outbox::{self, Outbox, RelaySettings};
use agentmesh_postgres::{Database, DbError, PoolSettings, SetupError, classify, classify_commit};
use agentmesh_resilience::{BreakerState, Preset, ResilienceError, RetryPolicy};
use agentmesh_testkit::PgSchema;
use agentmesh_testkit::outbox::{RunningRelay, quick_relay};
use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection as _, SqlSafeStr as _};

fn pool() -> PoolSettings {
    PoolSettings { min: 0, max: 4, acquire_timeout: Duration::from_secs(10) }
}

fn migration(version: i64, sql: &str) -> Migration {
    let sql = sqlx::AssertSqlSafe(sql.to_owned()).into_sql_str();
    Migration::new(version, Cow::Owned(format!("step {version}")), MigrationType::Simple, sql, false)
}

/// Migrations that fail if any of them runs twice (plain CREATE TABLE) and count how
/// often they ran.
fn counting_migrations() -> Migrator {
    Migrator::with_migrations(vec![
        migration(1, "CREATE TABLE runs (n int); INSERT INTO runs VALUES (1)"),
        // Slow enough that concurrent replicas really overlap.
        migration(2, "SELECT pg_sleep(0.2); CREATE TABLE things (id int PRIMARY KEY); INSERT INTO runs VALUES (2)"),
    ])
}

async fn scalar<T>(database: &Database, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(database.pool()).await.unwrap()
}

#[tokio::test]
async fn concurrent_replicas_prepare_one_schema_and_migrate_once() {
    let Some(schema) = PgSchema::start("pgrep").await else { return };
    let migrations = Arc::new(counting_migrations());
    let replicas: Vec<_> = (0..4)
        .map(|_| {
            let (url, name, migrations) = (schema.url().to_owned(), schema.name().to_owned(), Arc::clone(&migrations));
            tokio::spawn(async move { Database::connect(&url, &name, pool(), &Preset::database(), &migrations).await })
        })
        .collect();
    let mut databases = Vec::new();
    for replica in replicas {
        databases.push(replica.await.unwrap().unwrap());
    }
    let first = &databases[0];
    assert_eq!(scalar::<i64>(first, "SELECT count(*) FROM runs").await, 2, "each migration ran once");
    assert_eq!(scalar::<i64>(first, "SELECT count(*) FROM _sqlx_migrations WHERE success").await, 2);
    // Tables and bookkeeping are in the service's schema (first on the search_path).
    let sql = format!(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' \
         AND table_name IN ('runs', 'things', '_sqlx_migrations')",
        schema.name()
    );
    assert_eq!(scalar::<i64>(first, &sql).await, 3);
    assert!(first.pending(&migrations).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_migration_leaves_no_lock_and_a_fixed_one_applies() {
    let Some(schema) = PgSchema::start("pgfail").await else { return };
    let broken = Migrator::with_migrations(vec![
        migration(1, "CREATE TABLE runs (n int)"),
        migration(2, "INSERT INTO no_such_table VALUES (1)"),
    ]);
    let database = Database::lazy(schema.url(), schema.name(), pool(), &Preset::database()).unwrap();
    let error = database.migrate(&broken).await.unwrap_err();
    assert!(matches!(error, SetupError::Migrate { .. }), "{error:?}");
    assert!(!error.is_unavailable());

    // Nobody holds the schema's migration lock any more.
    let mut other = sqlx::PgConnection::connect(schema.url()).await.unwrap();
    let key = format!("agentmesh.migrate.{}", schema.name());
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&key)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(free, "the failed migration left its advisory lock behind");
    other.close().await.unwrap();

    // A second attempt is not blocked: the first step stays applied, the fixed second runs.
    let pending = database.pending(&broken).await.unwrap();
    assert_eq!(pending.iter().map(|m| m.version).collect::<Vec<_>>(), [2]);
    let fixed = Migrator::with_migrations(vec![
        migration(1, "CREATE TABLE runs (n int)"),
        migration(2, "CREATE TABLE no_such_table (n int); INSERT INTO no_such_table VALUES (1)"),
    ]);
    database.migrate(&fixed).await.unwrap();
    assert_eq!(scalar::<i64>(&database, "SELECT count(*) FROM no_such_table").await, 1);
}

#[tokio::test]
async fn real_server_errors_are_classified() {
    let Some(schema) = PgSchema::start("pgcls").await else { return };
    let database = Database::lazy(schema.url(), schema.name(), pool(), &Preset::database()).unwrap();
    let mut conn = database.pool().acquire().await.unwrap();

    // 57014: cancelled by statement_timeout.
    sqlx::query("SET statement_timeout = '20ms'").execute(&mut *conn).await.unwrap();
    let error = sqlx::query("SELECT pg_sleep(2)").execute(&mut *conn).await.unwrap_err();
    assert!(matches!(classify(error), DbError::Transient(_)));
    sqlx::query("RESET statement_timeout").execute(&mut *conn).await.unwrap();

    // 42P01: a bug, not an outage.
    let error = sqlx::query("SELECT * FROM missing_table").execute(&mut *conn).await.unwrap_err();
    assert!(matches!(classify(error), DbError::Internal(_)));

    // 57P01 / a dropped connection: transient before a commit, ambiguous during one.
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(schema.url()).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut admin).await.unwrap();
    admin.close().await.unwrap();
    let error = sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap_err();
    assert!(agentmesh_postgres::is_transient(&error), "{error:?}");
    let committing = classify_commit(error);
    assert!(committing.is_unavailable(), "{committing:?}");
    conn.detach();
}

#[tokio::test]
async fn an_outage_opens_the_breaker_and_calls_fail_fast() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{closed}/test");
    let preset = Preset {
        retry: RetryPolicy { max_attempts: 2, base_delay: Duration::from_millis(10), ..Preset::database().retry },
        ..Preset::database()
    };
    let settings = PoolSettings { min: 0, max: 2, acquire_timeout: Duration::from_millis(300) };
    let database = Database::lazy(&url, "outage", settings, &preset).unwrap();
    let ping = || async {
        let result: Result<(), ResilienceError<DbError>> = database
            .run(|| async {
                let mut conn = database.pool().acquire().await.map_err(classify)?;
                sqlx::query("SELECT 1").execute(&mut *conn).await.map_err(classify)?;
                Ok(())
            })
            .await;
        result.unwrap_err()
    };
    for _ in 0..preset.breaker.failure_threshold {
        assert!(matches!(ping().await, ResilienceError::Inner(DbError::Transient(_))));
    }
    assert_eq!(database.resilience().breaker().state(), BreakerState::Open);
    let error = ping().await;
    assert!(matches!(error, ResilienceError::CircuitOpen { .. }), "{error:?}");
    assert!(DbError::unavailable(&error));
    // Connecting (preparing the schema) reports the outage as unavailable, not a bug.
    let setup = Database::connect(&url, "outage", pool(), &preset, &counting_migrations()).await.unwrap_err();
    assert!(setup.is_unavailable(), "{setup:?}");
}

/// Records what it publishes; refuses the next `failures` publishes as unavailable.
#[derive(Default)]
struct Recorder {
    published: Mutex<Vec<Event>>,
    failures: AtomicUsize,
}

impl Recorder {
    fn ids(&self) -> Vec<String> {
        self.published.lock().unwrap().iter().map(|event| event.id().to_owned()).collect()
    }
}

#[async_trait]
impl Publisher for Recorder {
    async fn publish(&self, event: Event) -> Result<PublishAck, EventsError> {
        if self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(EventsError::Unavailable { operation: "publish", source: "test bus down".into() });
        }
        let mut published = self.published.lock().unwrap();
        published.push(event);
        Ok(PublishAck { sequence: published.len() as u64, duplicate: false })
    }
}

/// A schema with an outbox, and the outbox.
async fn outbox_schema(schema: &PgSchema) -> (Database, Outbox) {
    let migrations = agentmesh_postgres::with_migrations(
        &Migrator::with_migrations(vec![]),
        [outbox::migration(1), outbox::actor_migration(2)],
    );
    let database =
        Database::connect(schema.url(), schema.name(), pool(), &Preset::database(), &migrations).await.unwrap();
    let outbox = Outbox::new(database.schema());
    (database, outbox)
}

fn order_event(n: u8) -> Event {
    Event::builder("order.created", "orders", "agentmesh.order.created").data(vec![n]).build().unwrap()
}

/// Queues `events` in one committed transaction.
async fn commit_events(database: &Database, outbox: &Outbox, events: &[Event]) {
    let mut tx = database.pool().begin().await.unwrap();
    outbox.enqueue_all(&mut tx, events.iter().cloned()).await.unwrap();
    tx.commit().await.unwrap();
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(tokio::time::Instant::now() < until, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids_of(events: &[Event]) -> Vec<String> {
    events.iter().map(|event| event.id().to_owned()).collect()
}

/// Starts a relay and returns once its first look at the table is behind it (that look
/// would publish from the table what a test means to hand over), with `recorder` empty.
async fn relay_past_its_first_look(
    database: &Database,
    outbox: &Outbox,
    recorder: &Arc<Recorder>,
    settings: RelaySettings,
) -> RunningRelay {
    let relay = RunningRelay::start(outbox.relay(database, recorder.clone()).with_settings(settings));
    commit_events(database, outbox, &[order_event(0)]).await;
    outbox.committed();
    wait_for("the relay has looked at the table", async || recorder.ids().len() == 1).await;
    recorder.published.lock().unwrap().clear();
    relay
}

#[tokio::test]
async fn handed_events_are_published_without_reading_them_back_and_marked() {
    let Some(schema) = PgSchema::start("pghand").await else { return };
    let (database, outbox) = outbox_schema(&schema).await;
    let recorder = Arc::new(Recorder::default());
    let settings = RelaySettings { poll_interval: Duration::from_secs(300), ..quick_relay() };
    let relay = relay_past_its_first_look(&database, &outbox, &recorder, settings).await;
    let events = [order_event(1), order_event(2), order_event(3)];
    commit_events(&database, &outbox, &events).await;
    // The table's copies now differ from the events the writer holds: what is published
    // shows where the relay took it from.
    sqlx::query("UPDATE outbox SET data = '\\x00' WHERE published_at IS NULL").execute(database.pool()).await.unwrap();
    outbox.committed_events(events.iter().cloned());
    wait_for("the rows are marked published", async || {
        scalar::<i64>(&database, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0
    })
    .await;
    relay.stop().await;
    assert_eq!(recorder.ids(), ids_of(&events), "each once, in the order handed over");
    let data: Vec<Vec<u8>> = recorder.published.lock().unwrap().iter().map(|event| event.data().to_vec()).collect();
    assert_eq!(data, [[1], [2], [3]], "published as handed, not read back");
}

#[tokio::test]
async fn a_handed_event_the_bus_fails_is_published_from_the_table_in_order() {
    let Some(schema) = PgSchema::start("pghfail").await else { return };
    let (database, outbox) = outbox_schema(&schema).await;
    let recorder = Arc::new(Recorder::default());
    let settings = RelaySettings { publish_concurrency: 1, poll_interval: Duration::from_secs(300), ..quick_relay() };
    let relay = relay_past_its_first_look(&database, &outbox, &recorder, settings).await;
    recorder.failures.store(1, Ordering::SeqCst);
    let events = [order_event(1), order_event(2), order_event(3)];
    commit_events(&database, &outbox, &events).await;
    outbox.committed_events(events.iter().cloned());
    wait_for("every row is marked published", async || {
        scalar::<i64>(&database, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more may come
    relay.stop().await;
    assert_eq!(recorder.failures.load(Ordering::SeqCst), 0, "the first handed event failed");
    assert_eq!(recorder.ids(), ids_of(&events), "each once, in queue order, after the failure");
}

#[tokio::test]
async fn handed_events_a_relay_died_before_marking_are_published_again_with_their_ids() {
    let Some(schema) = PgSchema::start("pghcrash").await else { return };
    let (database, outbox) = outbox_schema(&schema).await;
    let unpublished = async || scalar::<i64>(&database, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await;
    // Handed before the relay starts, this one is marked by its first look at the table;
    // after that, with no timed looks and a long mark delay, nothing marks the next one.
    let earlier = order_event(1);
    commit_events(&database, &outbox, std::slice::from_ref(&earlier)).await;
    outbox.committed_events([earlier.clone()]);
    let first = Arc::new(Recorder::default());
    let settings = RelaySettings {
        poll_interval: Duration::from_secs(300),
        mark_delay: Duration::from_secs(300),
        ..quick_relay()
    };
    let relay =
        tokio::spawn(outbox.relay(&database, first.clone()).with_settings(settings).run(std::future::pending()));
    wait_for("the first look marks the earlier event", async || unpublished().await == 0).await;
    let event = order_event(7);
    commit_events(&database, &outbox, std::slice::from_ref(&event)).await;
    outbox.committed_events([event.clone()]);
    wait_for("the handed event is published", async || first.ids().len() == 2).await;
    relay.abort();
    let _ = relay.await;
    assert_eq!(unpublished().await, 1, "the relay died before marking");

    let second = Arc::new(Recorder::default());
    let relay = RunningRelay::start(outbox.relay(&database, second.clone()).with_settings(quick_relay()));
    wait_for("the row is published again", async || second.ids().len() == 1).await;
    relay.stop().await;
    assert_eq!(second.ids(), [event.id()], "with the id the bus deduplicates by");
    assert_eq!(unpublished().await, 0);
}

#[tokio::test]
async fn timed_looks_leave_young_rows_to_the_replica_they_were_handed_to() {
    let Some(schema) = PgSchema::start("pghgrace").await else { return };
    let (database, outbox) = outbox_schema(&schema).await;
    let recorder = Arc::new(Recorder::default());
    let settings = RelaySettings {
        poll_interval: Duration::from_millis(100),
        poll_grace: Duration::from_millis(1500),
        mark_delay: Duration::from_millis(10),
        ..quick_relay()
    };
    let relay = RunningRelay::start(outbox.relay(&database, recorder.clone()).with_settings(settings));
    // Once a handed event is marked, the relay's first look at the table is behind it.
    let handed = order_event(1);
    commit_events(&database, &outbox, std::slice::from_ref(&handed)).await;
    outbox.committed_events([handed.clone()]);
    wait_for("the handed event is marked", async || {
        scalar::<i64>(&database, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0
    })
    .await;

    // Another replica's event: committed here, handed to nobody in this process.
    let elsewhere = order_event(2);
    let queued_at = tokio::time::Instant::now();
    commit_events(&database, &outbox, std::slice::from_ref(&elsewhere)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(recorder.ids(), [handed.id()], "several timed looks left the young row alone");
    wait_for("the row is published once it is old", async || recorder.ids().len() == 2).await;
    assert!(queued_at.elapsed() >= Duration::from_millis(1500));
    relay.stop().await;
    assert_eq!(recorder.ids(), [handed.id(), elsewhere.id()]);
}

#[tokio::test]
async fn the_outbox_publishes_committed_events_in_order_with_their_ids() {
    let Some(schema) = PgSchema::start("pgobx").await else { return };
    let migrations = agentmesh_postgres::with_migrations(
        &Migrator::with_migrations(vec![migration(1, "CREATE TABLE orders (id int PRIMARY KEY)")]),
        [outbox::migration(2), outbox::actor_migration(3)],
    );
    let database =
        Database::connect(schema.url(), schema.name(), pool(), &Preset::database(), &migrations).await.unwrap();
    let outbox = Outbox::new(database.schema());
    let event = |n: u32, actor: &str| {
        Event::builder("order.created", "orders", "agentmesh.order.created")
            .data(vec![n as u8])
            .actor(actor)
            .build()
            .unwrap()
    };
    let (first, second, rolled_back) = (event(1, "agent-orchestrator"), event(2, "gateway"), event(3, "gateway"));

    let mut tx = database.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES (1)").execute(&mut *tx).await.unwrap();
    outbox.enqueue(&mut tx, first.clone()).await.unwrap();
    outbox.enqueue_all(&mut tx, [second.clone()]).await.unwrap();
    tx.commit().await.unwrap();
    outbox.committed();

    let mut tx = database.pool().begin().await.unwrap();
    outbox.enqueue(&mut tx, rolled_back).await.unwrap();
    tx.rollback().await.unwrap();

    let recorder = Arc::new(Recorder::default());
    let mut relay = outbox.relay(&database, recorder.clone());
    assert_eq!(relay.pending().await.unwrap(), 2);
    let report = relay.publish_batch().await.unwrap();
    assert_eq!((report.fetched, report.published, report.dead), (2, 2, 0));
    let published = recorder.published.lock().unwrap().clone();
    let ids: Vec<&str> = published.iter().map(Event::id).collect();
    assert_eq!(ids, [first.id(), second.id()], "in queue order, with the ids they were queued with");
    assert_eq!(published[0].data().as_ref(), [1]);
    let actors: Vec<Option<&str>> = published.iter().map(Event::actor).collect();
    assert_eq!(actors, [Some("agent-orchestrator"), Some("gateway")], "the calling service survives the outbox");
    assert_eq!(relay.pending().await.unwrap(), 0);
    assert_eq!(relay.publish_batch().await.unwrap().fetched, 0, "published once");
}

#[tokio::test]
async fn schemas_migrating_together_survive_database_wide_ddl() {
    // A fresh database, so the extension does not exist yet and every schema's first
    // migration tries to create it at the same moment.
    let Some(database) = agentmesh_testkit::PgDatabase::create("pgext").await else { return };
    let migrations = Arc::new(Migrator::with_migrations(vec![migration(
        1,
        "CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public; CREATE TABLE words (w text)",
    )]));
    let replicas: Vec<_> = (0..4)
        .map(|n| {
            let (url, migrations) = (database.url().to_owned(), Arc::clone(&migrations));
            tokio::spawn(async move {
                Database::connect(&url, &format!("s{n}"), pool(), &Preset::database(), &migrations).await
            })
        })
        .collect();
    for replica in replicas {
        let prepared = replica.await.unwrap().unwrap();
        assert_eq!(scalar::<i64>(&prepared, "SELECT count(*) FROM words").await, 0);
    }
}
