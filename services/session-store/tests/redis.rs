//! The conformance suite on a real Redis, plus what only the Redis backend has: TTL
//! expiry and refresh, lazy index cleanup, atomicity as seen by readers, key escaping and
//! key hygiene. Each test uses its own key prefix and deletes its keys when it ends, even
//! when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::MemoryBus;
use agentmesh_resilience::Preset;
use agentmesh_session_store::events::PublishDirect;
use agentmesh_session_store::store::redis::RedisStore;
use agentmesh_session_store::store::{
    Direction, JsonObject, MessageQuery, NewMessage, NewSession, Owner, Role, SessionPatch, SessionQuery, SessionSort,
    SessionStore, StoreError,
};
use agentmesh_testkit::redis::{self, RedisPrefix};
use agentmesh_testkit::{Service, unique_name};
use conformance::Fixture;
use fred::prelude::{Client, KeysInterface, SortedSetsInterface};
use uuid::Uuid;

async fn client(url: &str) -> Client {
    redis::connect(url).await.unwrap()
}

/// Every key under `prefix`.
async fn keys(client: &Client, prefix: &str) -> Vec<String> {
    redis::keys(client, prefix).await.unwrap()
}

/// The database preset, except that a burst beyond the bulkhead waits for a slot instead
/// of being refused, so 50 concurrent appends all go through.
fn preset() -> Preset {
    Preset { max_queue_wait: Duration::from_secs(5), ..Preset::database() }
}

struct Harness {
    store: Arc<RedisStore>,
    bus: MemoryBus,
    url: String,
    prefix: String,
    cleanup: RedisPrefix,
}

async fn harness(session_ttl: Duration) -> Option<Harness> {
    let url = agentmesh_testkit::require(Service::Redis).await?;
    let prefix = format!("{}:", unique_name("ss"));
    let cleanup = RedisPrefix::new(url.clone(), prefix.clone());
    let bus = MemoryBus::default();
    let sink = Arc::new(PublishDirect::new(Arc::new(bus.clone())));
    let store = RedisStore::connect(&url, &prefix, 4, session_ttl, &preset(), sink).await.unwrap();
    Some(Harness { store: Arc::new(store), bus, url, prefix, cleanup })
}

async fn fixture() -> Option<Fixture> {
    let harness = harness(Duration::from_secs(3600)).await?;
    Some(Fixture {
        store: harness.store.clone(),
        idempotency: harness.store,
        bus: harness.bus,
        guard: Box::new(harness.cleanup),
    })
}

conformance_tests!(fixture);

fn alice() -> Owner {
    Owner { tenant_id: "tenant-a".into(), user_id: "alice".into() }
}

fn message(content: &str) -> NewMessage {
    NewMessage {
        role: Role::User,
        content: content.into(),
        metadata: JsonObject::new(),
        tool_calls: Vec::new(),
        tool_call_id: None,
        parent_message_id: None,
    }
}

fn all_sessions() -> SessionQuery {
    SessionQuery {
        user_id: None,
        sort: SessionSort::CreatedAt,
        direction: Direction::Asc,
        limit: 100,
        offset: 0,
        after: None,
    }
}

async fn pttl(client: &Client, key: &str) -> i64 {
    client.pttl(key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_appends_count_exactly() {
    let Some(h) = harness(Duration::from_secs(3600)).await else { return };
    let session = h.store.create_sessions(&alice(), vec![NewSession::default()]).await.unwrap()[0].id;
    let appends = (0..50).map(|i| {
        let store = Arc::clone(&h.store);
        tokio::spawn(async move { store.create_message(&alice(), session, message(&format!("m{i}"))).await })
    });
    let ids: HashSet<Uuid> =
        futures::future::join_all(appends).await.into_iter().map(|r| r.unwrap().unwrap().id).collect();
    assert_eq!(ids.len(), 50);
    assert_eq!(h.store.get_session(&alice(), session).await.unwrap().message_count, 50);
    let redis = client(&h.url).await;
    let count: i64 = redis.zcard(format!("{}session_messages:{session}", h.prefix)).await.unwrap();
    assert_eq!(count, 50, "the message index agrees with the counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_with_their_messages_and_appends_refresh_every_key() {
    let ttl = Duration::from_millis(1000);
    let Some(h) = harness(ttl).await else { return };
    let redis = client(&h.url).await;
    let (store, owner, prefix) = (&h.store, alice(), h.prefix.as_str());
    let kept = store.create_sessions(&owner, vec![NewSession::default()]).await.unwrap()[0].id;
    let expiring = store.create_sessions(&owner, vec![NewSession::default()]).await.unwrap()[0].id;
    let first = store.create_message(&owner, kept, message("first")).await.unwrap().id;
    let mut reply = message("reply");
    reply.parent_message_id = Some(first);
    let second = store.create_message(&owner, kept, reply).await.unwrap().id;
    assert_eq!(store.list_sessions(&owner, &all_sessions()).await.unwrap().total, 2);

    let session_keys = [
        format!("{prefix}session:{kept}"),
        format!("{prefix}session_messages:{kept}"),
        format!("{prefix}session_replies:{kept}"),
    ];
    let message_keys = [format!("{prefix}message:{first}"), format!("{prefix}message:{second}")];
    for key in &session_keys {
        let left = pttl(&redis, key).await;
        assert!((1..=1000).contains(&left), "{key} expires within the ttl: {left}");
    }
    let session_left = pttl(&redis, &session_keys[0]).await;
    for key in &message_keys {
        let left = pttl(&redis, key).await;
        assert!(left >= session_left && left <= 2000, "{key} outlives its session by at most one ttl: {left}");
    }

    tokio::time::sleep(Duration::from_millis(600)).await;
    let third = store.create_message(&owner, kept, message("third")).await.unwrap().id;
    for key in &session_keys {
        let left = pttl(&redis, key).await;
        assert!(left > 700, "the append refreshed {key}: {left}");
    }
    let session_left = pttl(&redis, &session_keys[0]).await;
    for key in message_keys.iter().chain([&format!("{prefix}message:{third}")]) {
        let left = pttl(&redis, key).await;
        assert!(left >= session_left, "{key} lives at least as long as its session: {left} < {session_left}");
    }
    assert!(pttl(&redis, &format!("{prefix}session:{expiring}")).await < 500, "other sessions are not refreshed");

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(store.get_session(&owner, expiring).await, Err(StoreError::NotFound)));
    let page = store.list_sessions(&owner, &all_sessions()).await.unwrap();
    assert_eq!((page.total, page.items.iter().map(|s| s.id).collect::<Vec<_>>()), (1, vec![kept]));
    let filtered = SessionQuery { sort: SessionSort::LastActivity, direction: Direction::Desc, ..all_sessions() };
    assert_eq!(store.list_sessions(&owner, &filtered).await.unwrap().total, 1);
    let indexed: Vec<String> = redis
        .zrange(format!("{prefix}owner_sessions:tenant-a:alice:updated_at"), 0, -1, None, false, None, false)
        .await
        .unwrap();
    assert_eq!(indexed, vec![kept.to_string()], "listing removed the expired session's index entries");
    let session = store.get_session(&owner, kept).await.unwrap();
    assert_eq!(session.message_count, 3);
    assert_eq!(store.get_message(&owner, first).await.unwrap().content, "first");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(matches!(store.get_session(&owner, kept).await, Err(StoreError::NotFound)));
    assert!(matches!(store.get_message(&owner, first).await, Err(StoreError::NotFound)), "messages vanish with it");
    let everything =
        MessageQuery { role: None, search: None, limit: 10, offset: 0, after: None, direction: Direction::Asc };
    assert!(matches!(store.list_messages(&owner, kept, &everything).await, Err(StoreError::NotFound)));
    assert_eq!(store.list_sessions(&owner, &all_sessions()).await.unwrap().total, 0);

    // Two ttls after the last write nothing of the store is left in Redis.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(keys(&redis, prefix).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_create_is_seen_whole_or_not_at_all() {
    let Some(h) = harness(Duration::from_secs(3600)).await else { return };
    let create = {
        let store = Arc::clone(&h.store);
        tokio::spawn(async move {
            let new: Vec<NewSession> = (0..100).map(|_| NewSession::default()).collect();
            store.create_sessions(&alice(), new).await.unwrap().len()
        })
    };
    let mut totals = HashSet::new();
    while !create.is_finished() {
        let page = h.store.list_sessions(&alice(), &all_sessions()).await.unwrap();
        assert_eq!(page.items.len() as u64, page.total.min(100));
        totals.insert(page.total);
    }
    assert_eq!(create.await.unwrap(), 100);
    totals.insert(h.store.list_sessions(&alice(), &all_sessions()).await.unwrap().total);
    assert!(totals.iter().all(|total| *total == 0 || *total == 100), "partial bulk observed: {totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_that_differ_only_in_separators_stay_apart() {
    let Some(h) = harness(Duration::from_secs(3600)).await else { return };
    let one = Owner { tenant_id: "a:b".into(), user_id: "c".into() };
    let other = Owner { tenant_id: "a".into(), user_id: "b:c".into() };
    let percent = Owner { tenant_id: "a%3Ab".into(), user_id: "c".into() };
    let session = h.store.create_sessions(&one, vec![NewSession::default()]).await.unwrap()[0].id;
    for stranger in [&other, &percent] {
        assert_eq!(h.store.list_sessions(stranger, &all_sessions()).await.unwrap().total, 0);
        assert!(matches!(h.store.get_session(stranger, session).await, Err(StoreError::NotFound)));
    }
    assert_eq!(h.store.list_sessions(&one, &all_sessions()).await.unwrap().total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_indexes_follow_updates_and_deletes() {
    let Some(h) = harness(Duration::from_secs(3600)).await else { return };
    let labelled = |label: &str| NewSession { user_id: Some(label.into()), ..NewSession::default() };
    let created = h.store.create_sessions(&alice(), vec![labelled("x"), labelled("x:y")]).await.unwrap();
    let by = |label: &str| SessionQuery { user_id: Some(label.into()), ..all_sessions() };
    assert_eq!(h.store.list_sessions(&alice(), &by("x")).await.unwrap().total, 1, "labels are escaped");
    let patch = SessionPatch { user_id: Some("z".into()), ..SessionPatch::default() };
    h.store.update_session(&alice(), created[0].id, patch).await.unwrap();
    assert_eq!(h.store.list_sessions(&alice(), &by("x")).await.unwrap().total, 0);
    let moved = h.store.list_sessions(&alice(), &by("z")).await.unwrap();
    assert_eq!(moved.items.iter().map(|s| s.id).collect::<Vec<_>>(), vec![created[0].id]);
    h.store.delete_sessions(&alice(), &[created[0].id]).await.unwrap();
    assert_eq!(h.store.list_sessions(&alice(), &by("z")).await.unwrap().total, 0);
    assert_eq!(h.store.list_sessions(&alice(), &by("x:y")).await.unwrap().total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_numbers_round_trip_exactly() {
    let Some(h) = harness(Duration::from_secs(3600)).await else { return };
    let metadata: JsonObject =
        serde_json::from_str(r#"{"big": 12345678901234567890, "neg": -9007199254740993, "f": 0.1, "e": 1e300}"#)
            .unwrap();
    let new = NewSession { metadata: metadata.clone(), ..NewSession::default() };
    let created = h.store.create_sessions(&alice(), vec![new]).await.unwrap().remove(0);
    assert_eq!(created.metadata, metadata);
    assert_eq!(h.store.get_session(&alice(), created.id).await.unwrap().metadata, metadata);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_leaves_other_prefixes_alone() {
    let Some(h) = harness(Duration::from_secs(3600)).await else { return };
    let redis = client(&h.url).await;
    let neighbour = format!("{}:", unique_name("ss"));
    let canary = format!("{neighbour}canary");
    let lookalike = format!("{}x", h.prefix.trim_end_matches(':'));
    let _: () = redis.set(&canary, "alive", None, None, false).await.unwrap();
    let _: () = redis.set(&lookalike, "alive", None, None, false).await.unwrap();
    h.store.create_sessions(&alice(), vec![NewSession::default()]).await.unwrap();
    assert!(!keys(&redis, &h.prefix).await.is_empty());

    drop(h.cleanup);
    assert_eq!(keys(&redis, &h.prefix).await, Vec::<String>::new(), "the test's keys are gone");
    let left: Option<String> = redis.get(&canary).await.unwrap();
    assert_eq!(left.as_deref(), Some("alive"));
    let left: Option<String> = redis.get(&lookalike).await.unwrap();
    assert_eq!(left.as_deref(), Some("alive"));
    let _: i64 = redis.del(vec![canary, lookalike]).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let sink = Arc::new(PublishDirect::new(Arc::new(MemoryBus::default())));
    let result = RedisStore::connect("redis://127.0.0.1:1", "x:", 1, Duration::from_secs(1), &preset(), sink).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
}
