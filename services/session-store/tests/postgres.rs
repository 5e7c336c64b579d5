//! The conformance suite on a real PostgreSQL, plus what only this backend has: the
//! transactional outbox and its relay (including a NATS outage), migrations, triggers,
//! counters under concurrency, search escaping and SQL-level tenant isolation.
//!
//! Each test works in a schema of its own (testkit's `PgSchema`) that is dropped when the
//! test ends, even when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_events::{
    Event, EventsError, MemoryBus, NatsBus, NatsConfig, PublishAck, Publisher, Subscriber, SubscriptionSpec,
};
use agentmesh_resilience::Preset;
use agentmesh_session_store::idempotency::{Claim, IdempotencyStore};
use agentmesh_session_store::store::postgres::{PoolSettings, PostgresStore, RelaySettings};
use agentmesh_session_store::store::{
    Direction, FirstUse, MessagePatch, MessageQuery, MessageRecord, NewMessage, NewSession, Owner, Role, SessionPatch,
    SessionStore, StoreError, ToolCall,
};
use agentmesh_testkit::outbox::{RunningRelay, quick_relay, test_pool};
use agentmesh_testkit::{PgSchema, unique_name};
use async_trait::async_trait;
use conformance::Fixture;
use futures::StreamExt;
use uuid::Uuid;

/// A store in a fresh schema, and the schema's guard.
struct TestStore {
    store: PostgresStore,
    url: String,
    schema: PgSchema,
}

impl TestStore {
    async fn start() -> Option<Self> {
        let schema = PgSchema::start("ss").await?;
        let store =
            PostgresStore::connect(schema.url(), schema.name(), test_pool(), &Preset::database()).await.unwrap();
        Some(Self { store, url: schema.url().to_owned(), schema })
    }

    /// Runs `sql` returning one scalar, in the test's schema.
    async fn scalar<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(self.store.pool()).await.unwrap()
    }

    fn relay(&self, publisher: Arc<dyn Publisher>, settings: RelaySettings) -> RunningRelay {
        RunningRelay::start(self.store.relay(publisher).with_settings(settings))
    }
}

/// Stops the relay, then drops the schema (field order).
struct FixtureGuard {
    _relay: RunningRelay,
    _schema: PgSchema,
}

async fn fixture() -> Option<Fixture> {
    let TestStore { store, schema, .. } = TestStore::start().await?;
    let bus = MemoryBus::default();
    let relay = RunningRelay::start(store.relay(Arc::new(bus.clone())).with_settings(quick_relay()));
    let store = Arc::new(store);
    Some(Fixture {
        store: store.clone(),
        idempotency: store,
        bus,
        guard: Box::new(FixtureGuard { _relay: relay, _schema: schema }),
    })
}

conformance_tests!(fixture);

fn owner(user: &str) -> Owner {
    Owner { tenant_id: "tenant-a".into(), user_id: user.into() }
}

fn text(role: Role, content: &str) -> NewMessage {
    NewMessage {
        role,
        content: content.into(),
        metadata: Default::default(),
        tool_calls: vec![],
        tool_call_id: None,
        parent_message_id: None,
    }
}

async fn session(store: &PostgresStore, who: &Owner) -> Uuid {
    store.create_sessions(who, vec![NewSession::default()]).await.unwrap()[0].id
}

fn messages(limit: u32) -> MessageQuery {
    MessageQuery { role: None, search: None, limit, offset: 0, after: None, direction: Direction::Asc }
}

#[tokio::test]
async fn migrations_are_idempotent_and_live_in_the_schema() {
    let Some(t) = TestStore::start().await else { return };
    let again = PostgresStore::connect(&t.url, t.store.schema(), test_pool(), &Preset::database()).await.unwrap();
    again.ping().await.unwrap();
    let applied: i64 = t.scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").await;
    assert_eq!(applied, 5);
    let tables: i64 = t
        .scalar(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' \
             AND table_name IN ('sessions', 'messages', 'outbox', 'idempotency_keys', '_sqlx_migrations')",
            t.store.schema()
        ))
        .await;
    assert_eq!(tables, 5);
    let trgm: String =
        t.scalar("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_trgm'").await;
    assert_eq!(trgm, "public");
}

#[tokio::test]
async fn invalid_settings_and_unreachable_servers_are_reported() {
    let Some(t) = TestStore::start().await else { return };
    for schema in ["", "1x", "bad-name", "quote\"d"] {
        let result = PostgresStore::connect(&t.url, schema, test_pool(), &Preset::database()).await;
        assert!(matches!(result, Err(StoreError::Internal(_))), "{schema:?}");
    }
    let empty = PoolSettings { max: 0, ..test_pool() };
    assert!(matches!(
        PostgresStore::connect(&t.url, "x", empty, &Preset::database()).await,
        Err(StoreError::Internal(_))
    ));
    let unreachable = PoolSettings { acquire_timeout: Duration::from_secs(1), ..test_pool() };
    let result =
        PostgresStore::connect("postgres://postgres@127.0.0.1:1/test", "x", unreachable, &Preset::database()).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_appends_count_exactly() {
    let Some(t) = TestStore::start().await else { return };
    let alice = owner("alice");
    let id = session(&t.store, &alice).await;
    let appends = (0..50).map(|i| {
        let (store, alice) = (t.store.clone(), alice.clone());
        tokio::spawn(async move { store.create_message(&alice, id, text(Role::User, &format!("m{i}"))).await })
    });
    for result in futures::future::join_all(appends).await {
        result.unwrap().unwrap();
    }
    let count: i32 = t.scalar(&format!("SELECT message_count FROM sessions WHERE id = '{id}'")).await;
    let rows: i64 = t.scalar(&format!("SELECT count(*) FROM messages WHERE session_id = '{id}'")).await;
    let latest: bool = t
        .scalar(&format!(
            "SELECT last_activity = (SELECT max(created_at) FROM messages WHERE session_id = '{id}') \
             FROM sessions WHERE id = '{id}'"
        ))
        .await;
    assert_eq!((count, rows, latest), (50, 50, true));
    let events: i64 = t.scalar("SELECT count(*) FROM outbox WHERE topic = 'message.created'").await;
    assert_eq!(events, 50, "each append queued its event in its own transaction");
}

/// Concurrent appends to one session are combined into shared statements; each caller
/// still gets its own outcome, and a statement failing as a whole (here: a NUL byte,
/// which PostgreSQL text cannot hold) falls back to one-by-one without losing the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_appends_report_each_outcome() {
    let Some(t) = TestStore::start().await else { return };
    let (alice, mallory) = (owner("alice"), owner("mallory"));
    let id = session(&t.store, &alice).await;
    let parent = t.store.create_message(&alice, id, text(Role::User, "parent")).await.unwrap().id;
    let calls = (0..84).map(|i| {
        let store = t.store.clone();
        let (who, mut message) = match i % 7 {
            0 | 1 => (alice.clone(), text(Role::User, &format!("plain {i}"))),
            2 | 3 => (alice.clone(), text(Role::Assistant, &format!("reply {i}"))),
            4 => (alice.clone(), text(Role::User, "orphan")),
            5 => (mallory.clone(), text(Role::User, "intruder")),
            _ => (alice.clone(), text(Role::User, "nul \0 byte")),
        };
        message.parent_message_id = match i % 7 {
            2 | 3 => Some(parent),
            4 => Some(Uuid::now_v7()),
            _ => None,
        };
        tokio::spawn(async move { (i % 7, store.create_message(&who, id, message).await) })
    });
    for (kind, result) in futures::future::join_all(calls).await.into_iter().map(Result::unwrap) {
        match kind {
            0..=3 => assert!(result.is_ok(), "{kind}: {result:?}"),
            4 => assert!(matches!(result, Err(StoreError::InvalidParent)), "{result:?}"),
            5 => assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}"),
            _ => assert!(matches!(result, Err(StoreError::Internal(_))), "{result:?}"),
        }
    }
    let count: i32 = t.scalar("SELECT message_count FROM sessions").await;
    let rows: i64 = t.scalar("SELECT count(*) FROM messages").await;
    let replies: i64 = t.scalar(&format!("SELECT count(*) FROM messages WHERE parent_message_id = '{parent}'")).await;
    let events: i64 = t.scalar("SELECT count(*) FROM outbox WHERE topic = 'message.created'").await;
    assert_eq!((count, rows, replies, events), (49, 49, 24, 49));
}

/// An idempotency key's first use is recorded by the append's own write, with the response
/// a repeat gets; a key that has a row writes nothing (the caller takes the claim path);
/// a refused append records no key. Concurrent first uses, combined into shared
/// statements, each insert once, and a key used twice among them goes in once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_uses_of_idempotency_keys_are_recorded_with_their_append() {
    let Some(t) = TestStore::start().await else { return };
    let (alice, mallory) = (owner("alice"), owner("mallory"));
    let id = session(&t.store, &alice).await;
    let encode = |record: &MessageRecord| format!("response for {}", record.id).into_bytes();
    let first_use =
        |key| FirstUse { key, fingerprint: [7; 32], retention: Duration::from_secs(3600), response: &encode };

    let record = t.store.create_message_first_use(&alice, id, text(Role::User, "once"), first_use("k1")).await;
    let record = record.unwrap().expect("a new key goes in with its append");
    let claim = t.store.claim(&alice, "k1", &[7; 32], Duration::from_secs(60)).await.unwrap();
    assert_eq!(claim, Claim::Replay(encode(&record)), "the key answers the append's response");
    let again = t.store.create_message_first_use(&alice, id, text(Role::User, "twice"), first_use("k1")).await;
    assert!(again.unwrap().is_none(), "a used key writes nothing");

    let refused = t.store.create_message_first_use(&mallory, id, text(Role::User, "x"), first_use("k2")).await;
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    let orphan = NewMessage { parent_message_id: Some(Uuid::now_v7()), ..text(Role::User, "orphan") };
    let refused = t.store.create_message_first_use(&alice, id, orphan, first_use("k3")).await;
    assert!(matches!(refused, Err(StoreError::InvalidParent)), "{refused:?}");
    let keys: i64 = t.scalar("SELECT count(*) FROM idempotency_keys WHERE key IN ('k2', 'k3')").await;
    assert_eq!(keys, 0, "refused appends record no key");

    let calls = (0..60).map(|i| {
        let (store, alice) = (t.store.clone(), alice.clone());
        // Every tenth call repeats the key of the call before it.
        let key = format!("c{}", if i % 10 == 9 { i - 1 } else { i });
        tokio::spawn(async move {
            let first_use =
                FirstUse { key: &key, fingerprint: [7; 32], retention: Duration::from_secs(3600), response: &encode };
            (i, store.create_message_first_use(&alice, id, text(Role::User, &format!("c{i}")), first_use).await)
        })
    });
    let mut written = 0_i64;
    for (i, result) in futures::future::join_all(calls).await.into_iter().map(Result::unwrap) {
        match result.unwrap() {
            Some(_) => written += 1,
            None => assert!(i % 10 >= 8, "call {i}: only a key used twice can be in use"),
        }
    }
    assert_eq!(written, 54, "each of the 54 keys went in once");
    let count: i32 = t.scalar(&format!("SELECT message_count FROM sessions WHERE id = '{id}'")).await;
    let rows: i64 = t.scalar(&format!("SELECT count(*) FROM messages WHERE session_id = '{id}'")).await;
    let keys: i64 = t.scalar("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'c%'").await;
    let events: i64 = t.scalar("SELECT count(*) FROM outbox WHERE topic = 'message.created'").await;
    assert_eq!((i64::from(count), rows, keys, events), (55, 55, 54, 55));
}

#[tokio::test]
async fn search_is_case_insensitive_and_wildcards_are_literal() {
    let Some(t) = TestStore::start().await else { return };
    let alice = owner("alice");
    let id = session(&t.store, &alice).await;
    let contents = ["Rate: 100% SURE", "rate 100 percent", "snake_case", "snakeXcase", r"C:\Temp\x", "C:Tempx"];
    let mut ids = Vec::new();
    for content in contents {
        ids.push(t.store.create_message(&alice, id, text(Role::User, content)).await.unwrap().id);
    }
    let search = |needle: &str| MessageQuery { search: Some(needle.into()), ..messages(50) };
    for (needle, expected) in [
        ("100%", vec![ids[0]]),
        ("RATE", vec![ids[0], ids[1]]),
        ("e_c", vec![ids[2]]),
        (r"\temp\", vec![ids[4]]),
        ("%", vec![ids[0]]),
        ("_", vec![ids[2]]),
        ("", ids.clone()),
    ] {
        let page = t.store.list_messages(&alice, id, &search(needle)).await.unwrap();
        assert_eq!(page.items.iter().map(|m| m.id).collect::<Vec<_>>(), expected, "{needle:?}");
        assert_eq!(page.total, expected.len() as u64, "{needle:?}");
    }
}

#[tokio::test]
async fn other_owners_rows_are_missing_rows() {
    let Some(t) = TestStore::start().await else { return };
    let alice = owner("alice");
    let id = session(&t.store, &alice).await;
    let message = t.store.create_message(&alice, id, text(Role::User, "mine")).await.unwrap().id;
    let intruders = [owner("mallory"), Owner { tenant_id: "tenant-b".into(), user_id: "alice".into() }];
    for intruder in &intruders {
        let not_found = |r: Result<(), StoreError>| assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        not_found(t.store.get_session(intruder, id).await.map(drop));
        not_found(t.store.update_session(intruder, id, SessionPatch::default()).await.map(drop));
        not_found(t.store.list_messages(intruder, id, &messages(10)).await.map(drop));
        not_found(t.store.create_message(intruder, id, text(Role::User, "x")).await.map(drop));
        not_found(t.store.get_message(intruder, message).await.map(drop));
        not_found(t.store.update_message(intruder, message, MessagePatch::default()).await.map(drop));
        not_found(t.store.delete_message(intruder, message).await.map(drop));
        assert!(t.store.delete_sessions(intruder, &[id]).await.unwrap().is_empty());
    }
    let (count, outbox): (i32, i64) =
        (t.scalar("SELECT message_count FROM sessions").await, t.scalar("SELECT count(*) FROM outbox").await);
    assert_eq!((count, outbox), (1, 2), "refused calls change nothing and queue no event");
}

#[tokio::test]
async fn updated_at_moves_only_with_the_sessions_own_fields() {
    let Some(t) = TestStore::start().await else { return };
    let alice = owner("alice");
    let created = t.store.create_sessions(&alice, vec![NewSession::default()]).await.unwrap().remove(0);
    t.store.create_message(&alice, created.id, text(Role::User, "hi")).await.unwrap();
    let message = t.store.create_message(&alice, created.id, text(Role::User, "bye")).await.unwrap();
    t.store.delete_message(&alice, message.id).await.unwrap();
    let after = t.store.get_session(&alice, created.id).await.unwrap();
    assert_eq!((after.updated_at, after.message_count), (created.updated_at, 1));
    assert!(after.last_activity > created.last_activity);

    // Manual SQL that changes a session field without setting updated_at: the trigger does.
    sqlx::query("UPDATE sessions SET title = 'by hand'").execute(t.store.pool()).await.unwrap();
    let touched = t.store.get_session(&alice, created.id).await.unwrap();
    assert!(touched.updated_at > after.updated_at);
    sqlx::query("UPDATE sessions SET message_count = message_count").execute(t.store.pool()).await.unwrap();
    assert_eq!(t.store.get_session(&alice, created.id).await.unwrap().updated_at, touched.updated_at);
}

#[tokio::test]
async fn failed_writes_queue_no_events_and_deletes_queue_only_found_ones() {
    let Some(t) = TestStore::start().await else { return };
    let alice = owner("alice");
    let id = session(&t.store, &alice).await;
    let mut orphan = text(Role::User, "orphan");
    orphan.parent_message_id = Some(Uuid::now_v7());
    assert!(matches!(t.store.create_message(&alice, id, orphan).await, Err(StoreError::InvalidParent)));
    assert!(matches!(
        t.store.update_message(&alice, Uuid::now_v7(), MessagePatch::default()).await,
        Err(StoreError::NotFound)
    ));
    let deleted = t.store.delete_sessions(&alice, &[id, Uuid::now_v7(), id]).await.unwrap();
    assert_eq!(deleted, vec![id]);
    let topics: Vec<String> =
        sqlx::query_scalar("SELECT topic FROM outbox ORDER BY seq").fetch_all(t.store.pool()).await.unwrap();
    assert_eq!(topics, ["session.created", "session.deleted"]);
}

/// Counts every publish per event id, and fails every `fail_every`-th call.
struct CountingPublisher {
    calls: AtomicU64,
    fail_every: u64,
    published: Mutex<Vec<String>>,
}

impl CountingPublisher {
    fn new(fail_every: u64) -> Arc<Self> {
        Arc::new(Self { calls: AtomicU64::new(0), fail_every, published: Mutex::new(Vec::new()) })
    }

    fn published(&self) -> Vec<String> {
        self.published.lock().unwrap().clone()
    }
}

#[async_trait]
impl Publisher for CountingPublisher {
    async fn publish(&self, event: Event) -> Result<PublishAck, EventsError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_every > 0 && call.is_multiple_of(self.fail_every) {
            return Err(EventsError::Unavailable { operation: "publish", source: "flaky bus".into() });
        }
        let mut published = self.published.lock().unwrap();
        published.push(event.id().to_owned());
        Ok(PublishAck { sequence: published.len() as u64, duplicate: false })
    }
}

async fn wait_until(what: &str, deadline: Duration, mut done: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    while !done().await {
        assert!(tokio::time::Instant::now() < until, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes 121 queued events through a bus failing every 7th publish; returns the
/// queued event ids in seq order and what the bus took.
async fn relay_through_flaky_bus(publish_concurrency: usize) -> Option<(Vec<String>, Vec<String>)> {
    let t = TestStore::start().await?;
    let alice = owner("alice");
    let id = session(&t.store, &alice).await;
    for i in 0..120 {
        t.store.create_message(&alice, id, text(Role::User, &format!("m{i}"))).await.unwrap();
    }
    let queued: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY seq").fetch_all(t.store.pool()).await.unwrap();
    let flaky = CountingPublisher::new(7);
    let settings = RelaySettings { batch_size: 16, publish_concurrency, ..quick_relay() };
    let relay = t.relay(flaky.clone(), settings);
    wait_until("the outbox is drained", Duration::from_secs(60), async || flaky.published().len() >= queued.len())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more may come
    relay.stop().await;
    let pending: i64 = t.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await;
    assert_eq!(pending, 0);
    Some((queued.iter().map(Uuid::to_string).collect(), flaky.published()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_retries_failures_in_order_without_loss_or_duplicates() {
    let Some((queued, published)) = relay_through_flaky_bus(1).await else { return };
    assert_eq!(published, queued, "every event once, in seq order, despite failures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_relay_retries_failures_without_loss_or_duplicates() {
    let Some((queued, published)) = relay_through_flaky_bus(8).await else { return };
    assert_eq!(published.len(), queued.len(), "no event sent twice");
    assert_eq!(published.iter().collect::<HashSet<_>>(), queued.iter().collect::<HashSet<_>>(), "none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_several_replicas_share_the_queue() {
    let Some(t) = TestStore::start().await else { return };
    let alice = owner("alice");
    let sessions = t.store.create_sessions(&alice, vec![NewSession::default(); 100]).await.unwrap();
    let (first, second) = (CountingPublisher::new(0), CountingPublisher::new(0));
    let settings = RelaySettings { batch_size: 8, ..quick_relay() };
    let relays = [t.relay(first.clone(), settings.clone()), t.relay(second.clone(), settings)];
    let total = || first.published().len() + second.published().len();
    wait_until("both relays drained the outbox", Duration::from_secs(30), async || total() >= 100).await;
    for relay in relays {
        relay.stop().await;
    }
    let all: Vec<String> = first.published().into_iter().chain(second.published()).collect();
    assert_eq!(all.len(), sessions.len());
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), sessions.len(), "no event went out twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_wakes_on_writes_and_on_notify_without_polling() {
    let Some(t) = TestStore::start().await else { return };
    let publisher = CountingPublisher::new(0);
    let relay = t.relay(publisher.clone(), RelaySettings { poll_interval: Duration::from_secs(300), ..quick_relay() });
    tokio::time::sleep(Duration::from_millis(500)).await; // the relay is idle, listening
    t.store.create_sessions(&owner("alice"), vec![NewSession::default()]).await.unwrap();
    wait_until("the write woke the relay", Duration::from_secs(5), async || publisher.published().len() == 1).await;

    // A writer outside this process: an insert plus NOTIFY <schema>_outbox.
    let event = Event::builder("session.created", "elsewhere", "agentmesh.session.created").build().unwrap();
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, event_type, source, data_content_type, data, time) \
         VALUES ($1::uuid, 'session.created', 'agentmesh.session.created', 'elsewhere', 'application/protobuf', '', now())",
    )
    .bind(event.id())
    .execute(t.store.pool())
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("NOTIFY {}_outbox", t.store.schema())))
        .execute(t.store.pool())
        .await
        .unwrap();
    wait_until("NOTIFY woke the relay", Duration::from_secs(5), async || publisher.published().len() == 2).await;
    assert_eq!(publisher.published()[1], event.id());
    relay.stop().await;
}

#[tokio::test]
async fn invalid_rows_are_set_aside_and_housekeeping_purges() {
    let Some(t) = TestStore::start().await else { return };
    let alice = owner("alice");
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, event_type, source, data_content_type, data, time) \
         VALUES (gen_random_uuid(), 'not a topic', 't', 's', 'application/protobuf', '', now())",
    )
    .execute(t.store.pool())
    .await
    .unwrap();
    t.store.create_sessions(&alice, vec![NewSession::default()]).await.unwrap();
    let publisher = CountingPublisher::new(0);
    let mut relay =
        t.store.relay(publisher.clone()).with_settings(RelaySettings { retention: Duration::ZERO, ..quick_relay() });
    let report = relay.publish_batch().await.unwrap();
    assert_eq!((report.fetched, report.published, report.dead), (2, 1, 1));
    let reason: String = t.scalar("SELECT last_error FROM outbox WHERE dead_at IS NOT NULL").await;
    assert!(reason.contains("topic"), "{reason}");
    assert_eq!(relay.pending().await.unwrap(), 0);

    t.store.claim(&alice, "k", &[0; 32], Duration::from_millis(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    relay.maintain().await.unwrap();
    let (published, dead, keys): (i64, i64, i64) = (
        t.scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL").await,
        t.scalar("SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL").await,
        t.scalar("SELECT count(*) FROM idempotency_keys").await,
    );
    assert_eq!((published, dead, keys), (0, 1, 0), "published rows and expired keys go; dead rows stay");
}

/// A private `nats-server` with JetStream on a free port, killed when dropped.
struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    const BINARY: &str = "/usr/sbin/nats-server";

    fn start() -> Option<Self> {
        if !std::path::Path::new(Self::BINARY).exists() {
            assert!(!agentmesh_testkit::services_required(), "{} is missing", Self::BINARY);
            eprintln!("skipped: {} is missing", Self::BINARY);
            return None;
        }
        let port = agentmesh_testkit::ports::reserve().unwrap();
        let dir = std::env::temp_dir().join(unique_name("nats"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self { port, dir, child: None };
        server.resume();
        Some(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store directory.
    fn resume(&mut self) {
        let child = Command::new(Self::BINARY)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The issue's acceptance test: with NATS down, 1,000 appends succeed; once NATS is back,
/// every one of their events is stored on the stream exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_delivers_every_event_exactly_once_across_a_nats_outage() {
    let Some(t) = TestStore::start().await else { return };
    let Some(mut nats) = NatsServer::start() else { return };
    tokio::time::timeout(Duration::from_secs(240), async {
        let config = NatsConfig {
            url: nats.url(),
            stream_name: unique_name("SS"),
            request_timeout: Duration::from_secs(2),
            ..NatsConfig::default()
        };
        let bus = NatsBus::connect(config).await.unwrap();
        let settings = RelaySettings { backoff_max: Duration::from_secs(1), ..quick_relay() };
        let relay = t.relay(Arc::new(bus.clone()), settings);
        let alice = owner("alice");
        let id = session(&t.store, &alice).await;

        nats.kill();
        let appends = futures::stream::iter(0..1000)
            .map(|i| {
                let (store, alice) = (t.store.clone(), alice.clone());
                async move { store.create_message(&alice, id, text(Role::User, &format!("m{i}"))).await.unwrap().id }
            })
            .buffer_unordered(8);
        let created: HashSet<Uuid> = appends.collect().await;
        assert_eq!(created.len(), 1000, "writes only need PostgreSQL");
        tokio::time::sleep(Duration::from_secs(3)).await; // the relay fails and backs off meanwhile
        let waiting: i64 = t.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await;
        assert!(waiting >= 1000, "events wait in the outbox while NATS is down ({waiting})");

        nats.resume();
        let spec = SubscriptionSpec::ephemeral(vec!["message.created".into()]);
        let mut deliveries = loop {
            match bus.subscribe(spec.clone()).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let mut stored: HashMap<Uuid, HashSet<u64>> = HashMap::new();
        let mut quiet_until = None;
        loop {
            let wait = if quiet_until.is_some() { Duration::from_secs(3) } else { Duration::from_secs(120) };
            let Ok(next) = tokio::time::timeout(wait, deliveries.next()).await else {
                assert!(quiet_until.is_some(), "only {} of 1000 events arrived", stored.len());
                break;
            };
            let delivery = next.unwrap().unwrap();
            let subject: Uuid = delivery.event().subject().unwrap().parse().unwrap();
            stored.entry(subject).or_default().insert(delivery.sequence());
            delivery.ack().await.unwrap();
            if stored.len() == 1000 && quiet_until.is_none() {
                quiet_until = Some(()); // now listen a little longer for duplicates
            }
        }
        assert_eq!(stored.keys().copied().collect::<HashSet<_>>(), created, "every event arrived");
        let repeated: Vec<_> = stored.iter().filter(|(_, sequences)| sequences.len() > 1).collect();
        assert!(repeated.is_empty(), "events stored twice: {repeated:?}");
        wait_until("the outbox is marked published", Duration::from_secs(30), async || {
            t.scalar::<i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0
        })
        .await;
        assert!(!relay.is_finished(), "the relay survived the outage");
        relay.stop().await;
        bus.delete_stream().await.unwrap();
    })
    .await
    .expect("the outage test finishes in time");
}

#[tokio::test]
async fn migration_0004_rewrites_free_form_tool_calls_as_typed_ones() {
    let Some(t) = TestStore::start().await else { return };
    let alice = owner("alice");
    let session = session(&t.store, &alice).await;
    let message = t.store.create_message(&alice, session, text(Role::Assistant, "legacy")).await.unwrap();
    // The table as it was before 0004, holding tool calls written as free-form objects.
    let pool = t.store.pool();
    sqlx::query("ALTER TABLE messages DROP COLUMN tool_call_id").execute(pool).await.unwrap();
    let legacy = r#"[{"id": "c1", "name": "search", "arguments": {"q": "x"}}, {"name": "clock"}, {"id": "c3", "name": "f", "arguments": "{\"a\": 1}"}]"#;
    let update = sqlx::query("UPDATE messages SET tool_calls = $1::text::jsonb WHERE id = $2");
    update.bind(legacy).bind(message.id).execute(pool).await.unwrap();
    sqlx::raw_sql(include_str!("../migrations/0004_tool_calls.sql")).execute(pool).await.unwrap();
    let read = t.store.get_message(&alice, message.id).await.unwrap();
    let call = |id: &str, name: &str, arguments: &str| ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    };
    assert_eq!(
        read.tool_calls,
        [call("c1", "search", r#"{"q": "x"}"#), call("", "clock", ""), call("c3", "f", r#"{"a": 1}"#)]
    );
    assert_eq!(read.tool_call_id, None);
}
