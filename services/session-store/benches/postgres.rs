//! Load driver for the PostgreSQL store (results in `docs/benchmarks.md`).
//!
//! Run manually, against the real server (never part of `cargo test`):
//!
//! ```text
//! cargo bench -p agentmesh-session-store --bench postgres
//! ```
//!
//! 1. **Appends**: N writer tasks call `PostgresStore::create_message` (message row,
//!    session counters and outbox row: one statement, one commit) for a fixed time, each
//!    on its own session, then N writers on one shared session (the worst case: every
//!    append queues on the same row lock).
//! 2. **Listing**: bulk-loads 1,000,000 messages (one session of 100,000 plus 900 of
//!    1,000) with `INSERT ... SELECT generate_series`, then times `list_messages`
//!    (limit 50) on the big session: first page, a deep keyset page, and for comparison a
//!    deep offset page and a filtered page (which must count its matches); then appends
//!    once more, into the loaded store.
//! 3. **Relay**: drains the outbox filled by (1), first into a publisher that only counts
//!    (the database side of the relay), then into NATS JetStream when a server is
//!    reachable at `AGENTMESH_TEST_NATS_URL` (a stream of its own, deleted afterwards).
//!
//! Everything happens in a schema of its own, dropped at the end even on failure. Bounds
//! (env): `BENCH_SECONDS` per append run (default 10), `BENCH_WRITERS` (default `16,64`),
//! `BENCH_POOL` connections (default 16), `BENCH_LIST_ITERATIONS` (default 2000);
//! `BENCH_SKIP_LIST=true` stops after the appends and the relay. The server comes from
//! `AGENTMESH_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentmesh_events::{Event, EventsError, NatsBus, NatsConfig, PublishAck, Publisher};
use agentmesh_resilience::Preset;
use agentmesh_session_store::store::postgres::{PoolSettings, PostgresStore, RelaySettings};
use agentmesh_session_store::store::{
    Cursor, Direction, MessageQuery, NewMessage, NewSession, Owner, Role, SessionStore,
};
use agentmesh_testkit::{PgSchema, Service, unique_name};
use async_trait::async_trait;
use uuid::Uuid;

const BIG_SESSION: i64 = 100_000;
const OTHER_SESSIONS: i64 = 900;
const PER_OTHER_SESSION: i64 = 1_000;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    format!(
        "p50 {}  p90 {}  p99 {}  max {}  (n = {})",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len()
    )
}

fn message(i: u64) -> NewMessage {
    NewMessage {
        role: if i.is_multiple_of(2) { Role::User } else { Role::Assistant },
        content: format!("benchmark message {i}: what is the weather like in Lisbon today, and tomorrow?"),
        metadata: serde_json::json!({"client": "bench", "i": i}).as_object().cloned().unwrap(),
        tool_calls: vec![],
        tool_call_id: None,
        parent_message_id: None,
    }
}

/// CPU time (user + system) of process `pid` ("self" for this one) so far, when readable.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time of this process and of the store's server backends (same host only).
async fn cpu(store: &PostgresStore) -> (Option<Duration>, Option<Duration>) {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()")
            .bind(store.schema())
            .fetch_all(store.pool())
            .await
            .unwrap_or_default();
    let server = pids.iter().map(|pid| cpu_time(&pid.to_string())).sum::<Option<Duration>>();
    (cpu_time("self"), server.filter(|_| !pids.is_empty()))
}

fn per_op(before: Option<Duration>, after: Option<Duration>, ops: usize) -> String {
    match (before, after) {
        (Some(b), Some(a)) if ops > 0 => format!("{:.0} µs", (a.saturating_sub(b)).as_secs_f64() * 1e6 / ops as f64),
        _ => "n/a".to_owned(),
    }
}

/// `writers` tasks appending for `seconds`, each to `sessions[task % sessions.len()]`.
async fn appends(store: &PostgresStore, owner: &Owner, sessions: &[Uuid], writers: usize, seconds: u64) {
    // Every append leaves a dead version of its session row behind. The reference server
    // runs with autovacuum off, so clean up between runs as autovacuum would.
    for table in ["sessions", "messages", "outbox"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}"))).execute(store.pool()).await.unwrap();
    }
    let (client_before, server_before) = cpu(store).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, owner, errors) = (store.clone(), owner.clone(), Arc::clone(&errors));
            let session = sessions[w % sessions.len()];
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let begin = Instant::now();
                    match store.create_message(&owner, session, message(i)).await {
                        Ok(_) => latencies.push(begin.elapsed()),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (client_after, server_after) = cpu(store).await;
    let layout = if sessions.len() == 1 { "one shared session" } else { "one session each" };
    println!(
        "appends: {writers:>3} writers, {layout:<18} {:>7.0} appends/s  ({} ok, {} errors in {elapsed:.1} s)\n    \
         latency {}\n    CPU per append: client {}, server backends {}",
        latencies.len() as f64 / elapsed,
        latencies.len(),
        errors.load(Ordering::Relaxed),
        summary(latencies.clone()),
        per_op(client_before, client_after, latencies.len()),
        per_op(server_before, server_after, latencies.len()),
    );
}

async fn time_lists(store: &PostgresStore, owner: &Owner, session: Uuid, query: &MessageQuery, n: usize) -> String {
    let expected = store.list_messages(owner, session, query).await.unwrap();
    assert!(!expected.items.is_empty());
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let begin = Instant::now();
        let page = store.list_messages(owner, session, query).await.unwrap();
        latencies.push(begin.elapsed());
        assert_eq!(page.items.len(), expected.items.len());
    }
    format!("{} items, total {}: {}", expected.items.len(), expected.total, summary(latencies))
}

/// Bulk-loads the listing data set; returns the big session's id.
async fn load(store: &PostgresStore, owner: &Owner) -> Uuid {
    let pool = store.pool();
    let big = store.create_sessions(owner, vec![NewSession::default()]).await.unwrap()[0].id;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO sessions (id, tenant_id, owner_id, title, metadata, message_count, last_activity, created_at, updated_at) \
         SELECT gen_random_uuid(), 'bench', 'others', 'other ' || i, '{}', 0, now(), now(), now() \
         FROM generate_series(1, $1) AS i",
    )
    .bind(OTHER_SESSIONS)
    .execute(pool)
    .await
    .unwrap();
    // Building the trigram index once after the load is much faster than maintaining it
    // row by row; it is recreated exactly as the migration defines it.
    sqlx::query("DROP INDEX messages_content_trgm").execute(pool).await.unwrap();
    let content = "'message ' || i || ' about ' || (ARRAY['rust', 'postgres', 'agents', 'tools', 'search'])[1 + i % 5] \
                   || ' ' || md5(i::text)";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO messages (id, session_id, role, content, metadata, tool_calls, created_at, updated_at) \
         SELECT md5('big' || i)::uuid, $1, (ARRAY['user', 'assistant'])[1 + i % 2], {content}, '{{}}', '[]', \
         t, t FROM generate_series(1, $2) AS i, LATERAL (SELECT now() - interval '1 day' + i * interval '1 ms' AS t) x"
    )))
    .bind(big)
    .bind(BIG_SESSION)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO messages (id, session_id, role, content, metadata, tool_calls, created_at, updated_at) \
         SELECT md5(s.id::text || i)::uuid, s.id, (ARRAY['user', 'assistant'])[1 + i % 2], {content}, '{{}}', '[]', \
         t, t FROM sessions s, generate_series(1, $1) AS i, \
         LATERAL (SELECT now() - interval '1 day' + i * interval '1 ms' AS t) x WHERE s.owner_id = 'others'"
    )))
    .bind(PER_OTHER_SESSION)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE sessions s SET message_count = c.n, last_activity = c.latest \
         FROM (SELECT session_id, count(*) AS n, max(created_at) AS latest FROM messages GROUP BY session_id) c \
         WHERE s.id = c.session_id",
    )
    .execute(pool)
    .await
    .unwrap();
    let loaded = started.elapsed();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET maintenance_work_mem = '256MB'").execute(&mut *conn).await.unwrap();
    sqlx::query("CREATE INDEX messages_content_trgm ON messages USING gin (content public.gin_trgm_ops)")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("RESET maintenance_work_mem").execute(&mut *conn).await.unwrap();
    drop(conn);
    let indexed = started.elapsed();
    sqlx::query("VACUUM ANALYZE sessions").execute(pool).await.unwrap();
    sqlx::query("VACUUM ANALYZE messages").execute(pool).await.unwrap();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(pool).await.unwrap();
    println!(
        "load: {total} messages in the store ({BIG_SESSION} in the listed session): rows {:.1} s, trigram index {:.1} s, vacuum {:.1} s",
        loaded.as_secs_f64(),
        (indexed - loaded).as_secs_f64(),
        (started.elapsed() - indexed).as_secs_f64()
    );
    big
}

/// Counts publishes and drops the events: measures the relay's own cost.
#[derive(Default)]
struct NullPublisher(AtomicU64);

#[async_trait]
impl Publisher for NullPublisher {
    async fn publish(&self, _event: Event) -> Result<PublishAck, EventsError> {
        let sequence = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(PublishAck { sequence, duplicate: false })
    }
}

/// Publishes up to `limit` queued events to `publisher` within `deadline`; prints the rate.
async fn relay(store: &PostgresStore, label: &str, publisher: Arc<dyn Publisher>, limit: u64, deadline: Duration) {
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let limit = limit.min(u64::try_from(pending).unwrap_or(0));
    let mut relay = store.relay(publisher).with_settings(RelaySettings { batch_size: 500, ..RelaySettings::default() });
    let started = Instant::now();
    let mut published = 0;
    while published < limit && started.elapsed() < deadline {
        published += relay.publish_batch().await.unwrap().published as u64;
    }
    println!(
        "relay to {label}: {published} events in {:.1} s = {:.0} events/s (batches of 500; {pending} were queued)",
        started.elapsed().as_secs_f64(),
        published as f64 / started.elapsed().as_secs_f64()
    );
}

/// The real bus when a NATS server is reachable: a stream of its own, deleted afterwards.
async fn nats() -> Option<NatsBus> {
    let url = agentmesh_testkit::require(Service::Nats).await?;
    let config = NatsConfig {
        url,
        stream_name: unique_name("BENCH"),
        subject_root: unique_name("bench"),
        ..NatsConfig::default()
    };
    NatsBus::connect(config).await.ok()
}

#[tokio::main]
async fn main() {
    let Some(schema) = PgSchema::start("bench").await else { return };
    let seconds: u64 = env("BENCH_SECONDS", 10);
    let pool_size: u32 = env("BENCH_POOL", 16);
    let iterations: usize = env("BENCH_LIST_ITERATIONS", 2000);
    let writers: Vec<usize> =
        env("BENCH_WRITERS", "16,64".to_owned()).split(',').filter_map(|w| w.trim().parse().ok()).collect();
    let pool = PoolSettings { min: pool_size, max: pool_size, acquire_timeout: Duration::from_secs(30) };
    let store = PostgresStore::connect(schema.url(), schema.name(), pool, &Preset::database()).await.unwrap();
    let server: String = sqlx::query_scalar("SELECT version()").fetch_one(store.pool()).await.unwrap();
    let commit: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(store.pool()).await.unwrap();
    println!("server: {server}; synchronous_commit = {commit}; pool {pool_size}; {} cores", num_cpus());
    println!("load average at start: {}", load_average());

    let owner = Owner { tenant_id: "bench".into(), user_id: "writer".into() };
    let most = writers.iter().copied().max().unwrap_or(1);
    let sessions: Vec<Uuid> = store
        .create_sessions(&owner, vec![NewSession::default(); most])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    appends(&store, &owner, &sessions, 8, 2).await; // warm-up: connections, plans, caches
    for &n in &writers {
        appends(&store, &owner, &sessions[..n], n, seconds).await;
    }
    appends(&store, &owner, &sessions[..1], 16, seconds).await;
    relay(&store, "a no-op publisher", Arc::new(NullPublisher::default()), 30_000, Duration::from_secs(60)).await;
    if let Some(bus) = nats().await {
        relay(&store, "NATS JetStream", Arc::new(bus.clone()), 30_000, Duration::from_secs(60)).await;
        bus.delete_stream().await.unwrap();
    }

    if env("BENCH_SKIP_LIST", false) {
        println!("load average at end: {}", load_average());
        return;
    }
    let reader = Owner { tenant_id: "bench".into(), user_id: "reader".into() };
    let big = load(&store, &reader).await;
    let (key, id): (chrono::DateTime<chrono::Utc>, Uuid) = sqlx::query_as(
        "SELECT created_at, id FROM messages WHERE session_id = $1 ORDER BY created_at, id OFFSET 89999 LIMIT 1",
    )
    .bind(big)
    .fetch_one(store.pool())
    .await
    .unwrap();
    let first = MessageQuery { role: None, search: None, limit: 50, offset: 0, after: None, direction: Direction::Asc };
    let keyset = MessageQuery { after: Some(Cursor { key, id }), ..first.clone() };
    let offset = MessageQuery { offset: 90_000, ..first.clone() };
    let filtered = MessageQuery { search: Some("postgres".into()), ..first.clone() };
    println!("list first page:        {}", time_lists(&store, &reader, big, &first, iterations).await);
    println!("list keyset page @90k:  {}", time_lists(&store, &reader, big, &keyset, iterations).await);
    println!("list offset page @90k:  {}", time_lists(&store, &reader, big, &offset, 50).await);
    println!("list search 'postgres': {}", time_lists(&store, &reader, big, &filtered, 50).await);
    // Appends again, now into the 1M-message store (bigger indexes, colder pages).
    appends(&store, &owner, &sessions[..most], most, seconds).await;
    println!("load average at end: {}", load_average());
}

/// Other work on the machine skews every number above; print it alongside.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}
