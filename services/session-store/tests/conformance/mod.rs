//! The behaviour every `SessionStore` backend must have, written once.
//!
//! A backend's test file provides `async fn fixture() -> Option<Fixture>` (None = the
//! backend's server is unreachable and the test skips) and invokes
//! `conformance_tests!(fixture);`, which generates one test per behaviour below.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::{MemoryBus, Subscriber, SubscriptionSpec};
use agentmesh_proto::agentmesh::events::v1 as pb;
use agentmesh_session_store::idempotency::{Claim, IdempotencyStore};
use agentmesh_session_store::store::{
    Cursor, Direction, JsonObject, MessagePatch, MessageQuery, MessageRecord, NewMessage, NewSession, Owner, Page,
    Role, SessionPatch, SessionQuery, SessionSort, SessionStore, StoreError,
};
use futures::StreamExt;
use prost::Message as _;
use uuid::Uuid;

mod messages;
pub use messages::*;

/// One backend under test.
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn SessionStore>,
    /// The same backend's idempotency keys.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Where the store's events arrive.
    pub bus: MemoryBus,
    /// Dropped at the end of the test: removes the test's data.
    pub guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per behaviour for `$fixture`.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:path) => {
        agentmesh_testkit::suite_tests!(conformance, $fixture;
            session_round_trip, other_owners_see_nothing, sessions_sort_filter_and_page,
            session_cursor_walks_every_item_once, session_updates_and_activity, deleting_sessions_cascades,
            bulk_create_and_delete, messages_round_trip_with_parents, invalid_parents_are_refused,
            messages_filter_search_and_page, message_cursor_walks_every_item_once,
            messages_newest_first_page_and_walk_back, message_updates_and_deletes,
            concurrent_appends_count_exactly, idempotency_keys, writes_emit_domain_events,
            tool_calls_and_links_round_trip, message_updates_keep_or_replace_tool_fields,
            message_shape_rules_through_the_service, nul_characters_are_refused_before_storage,
            extreme_numbers_in_metadata_round_trip
        );
    };
}

fn owner(user: &str) -> Owner {
    Owner { tenant_id: "tenant-a".into(), user_id: user.into() }
}

fn object(json: serde_json::Value) -> JsonObject {
    json.as_object().cloned().unwrap()
}

fn new_session(title: &str) -> NewSession {
    NewSession {
        user_id: Some("end-user-1".into()),
        title: Some(title.into()),
        metadata: object(serde_json::json!({"k": 1})),
    }
}

fn new_message(role: Role, content: &str) -> NewMessage {
    NewMessage {
        role,
        content: content.into(),
        metadata: object(serde_json::json!({"lang": "en", "n": [1, 2.5, null]})),
        tool_calls: vec![],
        tool_call_id: None,
        parent_message_id: None,
    }
}

fn sessions(limit: u32) -> SessionQuery {
    SessionQuery {
        user_id: None,
        sort: SessionSort::LastActivity,
        direction: Direction::Desc,
        limit,
        offset: 0,
        after: None,
    }
}

fn messages(limit: u32) -> MessageQuery {
    MessageQuery { role: None, search: None, limit, offset: 0, after: None, direction: Direction::Asc }
}

async fn one_session(f: &Fixture, who: &Owner, title: &str) -> Uuid {
    f.store.create_sessions(who, vec![new_session(title)]).await.unwrap()[0].id
}

/// Distinct timestamps even on fast backends.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

pub async fn session_round_trip(f: &Fixture) {
    let alice = owner("alice");
    let created = f.store.create_sessions(&alice, vec![new_session("first")]).await.unwrap().remove(0);
    assert_eq!(created.owner, alice);
    assert_eq!(created.title.as_deref(), Some("first"));
    assert_eq!(created.user_id.as_deref(), Some("end-user-1"));
    assert_eq!(created.metadata, object(serde_json::json!({"k": 1})));
    assert_eq!(created.message_count, 0);
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(created.last_activity, created.created_at);
    assert_eq!(created.id.get_version_num(), 7);
    let read = f.store.get_session(&alice, created.id).await.unwrap();
    assert_eq!(read, created, "a session reads back exactly as created");
    let empty = f.store.create_sessions(&alice, vec![NewSession::default()]).await.unwrap().remove(0);
    assert_eq!((empty.title, empty.user_id, empty.metadata.len()), (None, None, 0));
    assert!(matches!(f.store.get_session(&alice, Uuid::now_v7()).await, Err(StoreError::NotFound)));
    f.store.ping().await.unwrap();
}

/// Every number a JSON client can send (protobuf `Struct` numbers are doubles) reads back
/// exactly, also from PostgreSQL's `jsonb`, which prints `f64::MAX` as a 309-digit integer.
pub async fn extreme_numbers_in_metadata_round_trip(f: &Fixture) {
    let alice = owner("alice");
    let extremes = object(serde_json::json!({
        "max": f64::MAX, "lowest": f64::MIN, "tiny": 8.968_684_327_444_173e-250,
        "smallest": f64::MIN_POSITIVE, "large": 1.375_626_869_533_567_4e44, "integer": -25_756_264_317_i64,
    }));
    let session = NewSession { metadata: extremes.clone(), ..NewSession::default() };
    let created = f.store.create_sessions(&alice, vec![session]).await.unwrap().remove(0);
    assert_eq!(f.store.get_session(&alice, created.id).await.unwrap().metadata, extremes);
    let listed = f.store.list_sessions(&alice, &sessions(10)).await.unwrap();
    assert_eq!(listed.items[0].metadata, extremes);
}

pub async fn other_owners_see_nothing(f: &Fixture) {
    let (alice, bob) = (owner("alice"), owner("bob"));
    let other_tenant = Owner { tenant_id: "tenant-b".into(), user_id: "alice".into() };
    let session = one_session(f, &alice, "private").await;
    let message = f.store.create_message(&alice, session, new_message(Role::User, "secret")).await.unwrap().id;
    for intruder in [&bob, &other_tenant] {
        assert!(matches!(f.store.get_session(intruder, session).await, Err(StoreError::NotFound)));
        assert!(matches!(
            f.store
                .update_session(intruder, session, SessionPatch { title: Some("x".into()), ..Default::default() })
                .await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(f.store.delete_sessions(intruder, &[session]).await.unwrap(), Vec::<Uuid>::new());
        assert!(matches!(f.store.list_messages(intruder, session, &messages(10)).await, Err(StoreError::NotFound)));
        assert!(matches!(
            f.store.create_message(intruder, session, new_message(Role::User, "x")).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(f.store.get_message(intruder, message).await, Err(StoreError::NotFound)));
        assert!(matches!(
            f.store
                .update_message(intruder, message, MessagePatch { content: Some("x".into()), ..Default::default() })
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(f.store.delete_message(intruder, message).await, Err(StoreError::NotFound)));
        assert_eq!(f.store.list_sessions(intruder, &sessions(100)).await.unwrap().total, 0);
    }
    let unchanged = f.store.get_session(&alice, session).await.unwrap();
    assert_eq!((unchanged.title.as_deref(), unchanged.message_count), (Some("private"), 1));
    assert_eq!(f.store.get_message(&alice, message).await.unwrap().content, "secret");
}

pub async fn sessions_sort_filter_and_page(f: &Fixture) {
    let alice = owner("alice");
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut new = new_session(&format!("s{i}"));
        new.user_id = Some(if i % 2 == 0 { "even" } else { "odd" }.into());
        ids.push(f.store.create_sessions(&alice, vec![new]).await.unwrap()[0].id);
        tick().await;
    }
    one_session(f, &owner("bob"), "not alice's").await;
    // Activity reorders: s1 gets a message last; s3 is updated last.
    f.store.create_message(&alice, ids[1], new_message(Role::User, "hi")).await.unwrap();
    tick().await;
    f.store
        .update_session(&alice, ids[3], SessionPatch { title: Some("s3b".into()), ..Default::default() })
        .await
        .unwrap();

    let order =
        |page: Vec<agentmesh_session_store::store::SessionRecord>| page.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let by = |sort, direction| SessionQuery { sort, direction, ..sessions(100) };
    let created_asc = f.store.list_sessions(&alice, &by(SessionSort::CreatedAt, Direction::Asc)).await.unwrap();
    assert_eq!(created_asc.total, 5);
    assert_eq!(order(created_asc.items), ids);
    let created_desc = f.store.list_sessions(&alice, &by(SessionSort::CreatedAt, Direction::Desc)).await.unwrap();
    assert_eq!(order(created_desc.items), ids.iter().rev().copied().collect::<Vec<_>>());
    let activity = f.store.list_sessions(&alice, &by(SessionSort::LastActivity, Direction::Desc)).await.unwrap();
    assert_eq!(order(activity.items)[0], ids[1], "the session with the newest message comes first");
    let updated = f.store.list_sessions(&alice, &by(SessionSort::UpdatedAt, Direction::Desc)).await.unwrap();
    assert_eq!(order(updated.items)[0], ids[3], "the last updated session comes first");

    let even = SessionQuery { user_id: Some("even".into()), ..by(SessionSort::CreatedAt, Direction::Asc) };
    let even = f.store.list_sessions(&alice, &even).await.unwrap();
    assert_eq!((even.total, order(even.items)), (3, vec![ids[0], ids[2], ids[4]]));

    let paged = SessionQuery { limit: 2, offset: 1, ..by(SessionSort::CreatedAt, Direction::Asc) };
    let paged = f.store.list_sessions(&alice, &paged).await.unwrap();
    assert_eq!((paged.total, paged.has_more), (5, true));
    assert_eq!(order(paged.items), vec![ids[1], ids[2]]);
    let tail = SessionQuery { limit: 2, offset: 3, ..by(SessionSort::CreatedAt, Direction::Asc) };
    let tail = f.store.list_sessions(&alice, &tail).await.unwrap();
    assert_eq!((tail.items.len(), tail.has_more), (2, false));
    let beyond = SessionQuery { offset: 50, ..by(SessionSort::CreatedAt, Direction::Asc) };
    let beyond = f.store.list_sessions(&alice, &beyond).await.unwrap();
    assert_eq!((beyond.items.len(), beyond.total, beyond.has_more), (0, 5, false));
}

pub async fn session_cursor_walks_every_item_once(f: &Fixture) {
    let alice = owner("alice");
    let created =
        f.store.create_sessions(&alice, (0..7).map(|i| new_session(&format!("b{i}"))).collect()).await.unwrap();
    let expected: HashSet<Uuid> = created.iter().map(|s| s.id).collect();
    for direction in [Direction::Asc, Direction::Desc] {
        for sort in [SessionSort::CreatedAt, SessionSort::UpdatedAt, SessionSort::LastActivity] {
            let mut seen = Vec::new();
            let mut after: Option<Cursor> = None;
            loop {
                let query = SessionQuery { sort, direction, limit: 3, after, ..sessions(3) };
                let page = f.store.list_sessions(&alice, &query).await.unwrap();
                assert!(page.items.len() <= 3);
                seen.extend(page.items.iter().map(|s| s.id));
                let Some(last) = page.items.last() else { break };
                let key = match sort {
                    SessionSort::CreatedAt => last.created_at,
                    SessionSort::UpdatedAt => last.updated_at,
                    SessionSort::LastActivity => last.last_activity,
                };
                after = Some(Cursor { key, id: last.id });
                if !page.has_more {
                    break;
                }
            }
            assert_eq!(seen.len(), 7, "{sort:?} {direction:?}: {seen:?}");
            assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), expected);
            let by_created: Vec<Uuid> = if direction == Direction::Asc {
                created.iter().map(|s| s.id).collect()
            } else {
                created.iter().rev().map(|s| s.id).collect()
            };
            if sort == SessionSort::CreatedAt {
                assert_eq!(seen, by_created, "bulk-created sessions keep creation order");
            }
        }
    }
}

pub async fn session_updates_and_activity(f: &Fixture) {
    let alice = owner("alice");
    let created = f.store.create_sessions(&alice, vec![new_session("before")]).await.unwrap().remove(0);
    tick().await;
    let patch = SessionPatch { title: Some("after".into()), ..Default::default() };
    let updated = f.store.update_session(&alice, created.id, patch).await.unwrap();
    assert_eq!(updated.title.as_deref(), Some("after"));
    assert_eq!(updated.metadata, created.metadata, "absent fields are kept");
    assert_eq!(updated.user_id, created.user_id);
    assert!(updated.updated_at > created.updated_at);
    assert_eq!(updated.created_at, created.created_at);
    let metadata = object(serde_json::json!({"new": true}));
    let replaced = f
        .store
        .update_session(
            &alice,
            created.id,
            SessionPatch { metadata: Some(metadata.clone()), user_id: Some("u2".into()), title: None },
        )
        .await
        .unwrap();
    assert_eq!(
        (replaced.metadata, replaced.user_id.as_deref(), replaced.title.as_deref()),
        (metadata, Some("u2"), Some("after"))
    );

    tick().await;
    let before_append = f.store.get_session(&alice, created.id).await.unwrap();
    let message = f.store.create_message(&alice, created.id, new_message(Role::User, "hello")).await.unwrap();
    let after_append = f.store.get_session(&alice, created.id).await.unwrap();
    assert_eq!(after_append.message_count, 1);
    assert_eq!(after_append.last_activity, message.created_at, "last_activity is the latest append");
    assert_eq!(after_append.updated_at, before_append.updated_at, "appends do not touch updated_at");
    assert!(matches!(
        f.store.update_session(&alice, Uuid::now_v7(), SessionPatch::default()).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn deleting_sessions_cascades(f: &Fixture) {
    let alice = owner("alice");
    let session = one_session(f, &alice, "doomed").await;
    let keep = one_session(f, &alice, "kept").await;
    let message = f.store.create_message(&alice, session, new_message(Role::User, "bye")).await.unwrap().id;
    let kept_message = f.store.create_message(&alice, keep, new_message(Role::User, "stay")).await.unwrap().id;
    assert_eq!(f.store.delete_sessions(&alice, &[session]).await.unwrap(), vec![session]);
    assert!(matches!(f.store.get_session(&alice, session).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.get_message(&alice, message).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.list_messages(&alice, session, &messages(10)).await, Err(StoreError::NotFound)));
    assert_eq!(f.store.delete_sessions(&alice, &[session]).await.unwrap(), Vec::<Uuid>::new(), "deleting twice");
    assert_eq!(f.store.get_message(&alice, kept_message).await.unwrap().content, "stay");
    assert_eq!(f.store.list_sessions(&alice, &sessions(10)).await.unwrap().total, 1);
}

pub async fn bulk_create_and_delete(f: &Fixture) {
    let (alice, bob) = (owner("alice"), owner("bob"));
    let created =
        f.store.create_sessions(&alice, (0..100).map(|i| new_session(&format!("n{i}"))).collect()).await.unwrap();
    assert_eq!(created.len(), 100);
    assert_eq!(created.iter().map(|s| s.id).collect::<HashSet<_>>().len(), 100);
    assert_eq!(created[42].title.as_deref(), Some("n42"), "results keep request order");
    assert_eq!(f.store.list_sessions(&alice, &sessions(1)).await.unwrap().total, 100);
    let bobs = one_session(f, &bob, "bob's").await;
    let mut ids: Vec<Uuid> = created.iter().take(10).map(|s| s.id).collect();
    ids.push(bobs);
    ids.push(Uuid::now_v7());
    let mut deleted = f.store.delete_sessions(&alice, &ids).await.unwrap();
    deleted.sort();
    let mut expected: Vec<Uuid> = created.iter().take(10).map(|s| s.id).collect();
    expected.sort();
    assert_eq!(deleted, expected, "only the caller's existing sessions are deleted");
    assert_eq!(f.store.list_sessions(&alice, &sessions(1)).await.unwrap().total, 90);
    assert!(f.store.get_session(&bob, bobs).await.is_ok());
}

pub async fn messages_round_trip_with_parents(f: &Fixture) {
    let alice = owner("alice");
    let session = one_session(f, &alice, "chat").await;
    let question = f.store.create_message(&alice, session, new_message(Role::User, "2+2?")).await.unwrap();
    assert_eq!((question.session_id, question.role, question.content.as_str()), (session, Role::User, "2+2?"));
    assert_eq!(question.metadata, object(serde_json::json!({"lang": "en", "n": [1, 2.5, null]})));
    assert_eq!(question.created_at, question.updated_at);
    let mut reply = new_message(Role::Assistant, "4");
    reply.parent_message_id = Some(question.id);
    let answer = f.store.create_message(&alice, session, reply).await.unwrap();
    assert_eq!(answer.parent_message_id, Some(question.id));
    assert_eq!(f.store.get_message(&alice, answer.id).await.unwrap(), answer, "reads back exactly");
    assert_eq!(f.store.get_session(&alice, session).await.unwrap().message_count, 2);
    assert!(matches!(f.store.get_message(&alice, Uuid::now_v7()).await, Err(StoreError::NotFound)));
    assert!(matches!(
        f.store.create_message(&alice, Uuid::now_v7(), new_message(Role::User, "x")).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn invalid_parents_are_refused(f: &Fixture) {
    let alice = owner("alice");
    let first = one_session(f, &alice, "a").await;
    let second = one_session(f, &alice, "b").await;
    let elsewhere = f.store.create_message(&alice, second, new_message(Role::User, "other")).await.unwrap().id;
    for parent in [elsewhere, Uuid::now_v7()] {
        let mut message = new_message(Role::User, "orphan");
        message.parent_message_id = Some(parent);
        assert!(matches!(f.store.create_message(&alice, first, message).await, Err(StoreError::InvalidParent)));
    }
    assert_eq!(f.store.get_session(&alice, first).await.unwrap().message_count, 0, "a refused append changes nothing");
    assert_eq!(f.store.list_messages(&alice, first, &messages(10)).await.unwrap().total, 0);
}

pub async fn messages_filter_search_and_page(f: &Fixture) {
    let alice = owner("alice");
    let session = one_session(f, &alice, "search").await;
    let contents = [
        (Role::System, "You are helpful"),
        (Role::User, "Find the 100% CASE"),
        (Role::Assistant, "Here is the case"),
        (Role::User, "snake_case please"),
        (Role::Tool, "ÉCOLE result"),
        (Role::User, "nothing"),
    ];
    let mut ids = Vec::new();
    for (role, content) in contents {
        ids.push(f.store.create_message(&alice, session, new_message(role, content)).await.unwrap().id);
    }
    let all = f.store.list_messages(&alice, session, &messages(200)).await.unwrap();
    assert_eq!(all.items.iter().map(|m| m.id).collect::<Vec<_>>(), ids, "conversation order");
    assert_eq!((all.total, all.has_more), (6, false));

    let users = MessageQuery { role: Some(Role::User), ..messages(200) };
    let users = f.store.list_messages(&alice, session, &users).await.unwrap();
    assert_eq!((users.total, users.items.iter().map(|m| m.id).collect::<Vec<_>>()), (3, vec![ids[1], ids[3], ids[5]]));

    let search = |needle: &str| MessageQuery { search: Some(needle.into()), ..messages(200) };
    let case = f.store.list_messages(&alice, session, &search("case")).await.unwrap();
    assert_eq!(case.items.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[1], ids[2], ids[3]], "case-insensitive");
    assert_eq!(case.total, 3);
    let percent = f.store.list_messages(&alice, session, &search("100%")).await.unwrap();
    assert_eq!(percent.items.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[1]], "% is literal");
    let underscore = f.store.list_messages(&alice, session, &search("e_c")).await.unwrap();
    assert_eq!(underscore.items.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[3]], "_ is literal");
    let unicode = f.store.list_messages(&alice, session, &search("école")).await.unwrap();
    assert_eq!(unicode.items.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[4]], "Unicode case folding");
    let both = MessageQuery { role: Some(Role::User), search: Some("CASE".into()), ..messages(200) };
    assert_eq!(f.store.list_messages(&alice, session, &both).await.unwrap().total, 2);

    let paged = MessageQuery { limit: 2, offset: 2, ..messages(2) };
    let paged = f.store.list_messages(&alice, session, &paged).await.unwrap();
    assert_eq!(paged.items.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[2], ids[3]]);
    assert_eq!((paged.total, paged.has_more), (6, true));
}

pub async fn message_cursor_walks_every_item_once(f: &Fixture) {
    let alice = owner("alice");
    let session = one_session(f, &alice, "cursor").await;
    let mut ids = Vec::new();
    for i in 0..11 {
        ids.push(f.store.create_message(&alice, session, new_message(Role::User, &format!("m{i}"))).await.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = f.store.list_messages(&alice, session, &MessageQuery { after, ..messages(4) }).await.unwrap();
        seen.extend(page.items.iter().map(|m| m.id));
        let Some(last) = page.items.last() else { break };
        after = Some(Cursor { key: last.created_at, id: last.id });
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, ids);
}

pub async fn messages_newest_first_page_and_walk_back(f: &Fixture) {
    let alice = owner("alice");
    let session = one_session(f, &alice, "newest first").await;
    let mut ids = Vec::new();
    for i in 0..11 {
        let role = if i % 2 == 0 { Role::User } else { Role::Assistant };
        ids.push(f.store.create_message(&alice, session, new_message(role, &format!("m{i}"))).await.unwrap().id);
    }
    let newest = |query: MessageQuery| MessageQuery { direction: Direction::Desc, ..query };
    let ids_of = |page: &Page<MessageRecord>| page.items.iter().map(|m| m.id).collect::<Vec<_>>();

    // The latest window in one call, then the rest by offset.
    let latest = f.store.list_messages(&alice, session, &newest(messages(3))).await.unwrap();
    assert_eq!(ids_of(&latest), vec![ids[10], ids[9], ids[8]]);
    assert_eq!((latest.total, latest.has_more), (11, true));
    let skipped = f.store.list_messages(&alice, session, &newest(MessageQuery { offset: 9, ..messages(3) })).await;
    let skipped = skipped.unwrap();
    assert_eq!((ids_of(&skipped), skipped.has_more), (vec![ids[1], ids[0]], false));

    // A cursor walks back through every message once, filtered or not.
    for (role, expected) in [
        (None, ids.iter().rev().copied().collect::<Vec<_>>()),
        (Some(Role::User), ids.iter().step_by(2).rev().copied().collect()),
    ] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let query = newest(MessageQuery { role, after, ..messages(4) });
            let page = f.store.list_messages(&alice, session, &query).await.unwrap();
            seen.extend(ids_of(&page));
            let Some(last) = page.items.last() else { break };
            after = Some(Cursor { key: last.created_at, id: last.id });
            if !page.has_more {
                break;
            }
        }
        assert_eq!(seen, expected, "role {role:?}");
    }
    let searched = newest(MessageQuery { search: Some("M1".into()), ..messages(200) });
    let searched = f.store.list_messages(&alice, session, &searched).await.unwrap();
    assert_eq!((ids_of(&searched), searched.total), (vec![ids[10], ids[1]], 2));
}

pub async fn message_updates_and_deletes(f: &Fixture) {
    let alice = owner("alice");
    let session = one_session(f, &alice, "edits").await;
    let parent = f.store.create_message(&alice, session, new_message(Role::User, "draft")).await.unwrap();
    let mut reply = new_message(Role::Assistant, "reply");
    reply.parent_message_id = Some(parent.id);
    let reply = f.store.create_message(&alice, session, reply).await.unwrap();
    tick().await;
    let patch = MessagePatch { content: Some("final".into()), role: Some(Role::System), ..Default::default() };
    let updated = f.store.update_message(&alice, parent.id, patch).await.unwrap();
    assert_eq!((updated.content.as_str(), updated.role), ("final", Role::System));
    assert_eq!(updated.metadata, parent.metadata);
    assert!(updated.updated_at > parent.updated_at);
    assert_eq!(updated.created_at, parent.created_at);

    let deleted = f.store.delete_message(&alice, parent.id).await.unwrap();
    assert_eq!(deleted.id, parent.id);
    assert!(matches!(f.store.get_message(&alice, parent.id).await, Err(StoreError::NotFound)));
    assert_eq!(
        f.store.get_message(&alice, reply.id).await.unwrap().parent_message_id,
        None,
        "replies lose their parent"
    );
    let session_after = f.store.get_session(&alice, session).await.unwrap();
    assert_eq!(session_after.message_count, 1);
    let listed = f.store.list_messages(&alice, session, &messages(10)).await.unwrap();
    assert_eq!((listed.total, listed.items.len()), (1, 1));
    assert!(matches!(f.store.delete_message(&alice, parent.id).await, Err(StoreError::NotFound)));
}

pub async fn concurrent_appends_count_exactly(f: &Fixture) {
    let alice = owner("alice");
    let session = one_session(f, &alice, "busy").await;
    let appends = (0..50).map(|i| {
        let store = Arc::clone(&f.store);
        let alice = alice.clone();
        tokio::spawn(
            async move { store.create_message(&alice, session, new_message(Role::User, &format!("c{i}"))).await },
        )
    });
    let results = futures::future::join_all(appends).await;
    assert!(results.into_iter().all(|r| r.unwrap().is_ok()));
    let after = f.store.get_session(&alice, session).await.unwrap();
    assert_eq!(after.message_count, 50);
    let listed = f.store.list_messages(&alice, session, &messages(200)).await.unwrap();
    assert_eq!((listed.total, listed.items.len()), (50, 50));
    let latest = listed.items.iter().map(|m| m.created_at).max().unwrap();
    assert_eq!(after.last_activity, latest);
}

pub async fn idempotency_keys(f: &Fixture) {
    let (alice, bob) = (owner("alice"), owner("bob"));
    let lease = Duration::from_secs(60);
    let (body, other_body) = ([1u8; 32], [2u8; 32]);
    let idem = &f.idempotency;
    assert_eq!(idem.claim(&alice, "k1", &body, lease).await.unwrap(), Claim::Acquired);
    assert_eq!(idem.claim(&alice, "k1", &body, lease).await.unwrap(), Claim::InProgress);
    assert_eq!(idem.claim(&alice, "k1", &other_body, lease).await.unwrap(), Claim::Mismatch);
    assert_eq!(idem.claim(&bob, "k1", &other_body, lease).await.unwrap(), Claim::Acquired, "keys are per owner");
    idem.complete(&alice, "k1", b"first response", Duration::from_secs(3600)).await.unwrap();
    assert_eq!(idem.claim(&alice, "k1", &body, lease).await.unwrap(), Claim::Replay(b"first response".to_vec()));
    assert_eq!(idem.claim(&alice, "k1", &other_body, lease).await.unwrap(), Claim::Mismatch);
    idem.release(&alice, "k1").await.unwrap();
    assert_eq!(
        idem.claim(&alice, "k1", &body, lease).await.unwrap(),
        Claim::Replay(b"first response".to_vec()),
        "release never drops a completed response"
    );

    assert_eq!(idem.claim(&alice, "k2", &body, lease).await.unwrap(), Claim::Acquired);
    idem.release(&alice, "k2").await.unwrap();
    assert_eq!(idem.claim(&alice, "k2", &other_body, lease).await.unwrap(), Claim::Acquired, "released keys are free");

    assert_eq!(idem.claim(&alice, "k3", &body, Duration::from_millis(200)).await.unwrap(), Claim::Acquired);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        idem.claim(&alice, "k3", &body, lease).await.unwrap(),
        Claim::Acquired,
        "an expired lease can be taken over"
    );
}

pub async fn writes_emit_domain_events(f: &Fixture) {
    let alice = owner("alice");
    let created = f.store.create_sessions(&alice, vec![new_session("e1"), new_session("e2")]).await.unwrap();
    let session = created[0].id;
    let message = f.store.create_message(&alice, session, new_message(Role::User, "ev")).await.unwrap().id;
    f.store
        .update_message(&alice, message, MessagePatch { content: Some("ev2".into()), ..Default::default() })
        .await
        .unwrap();
    f.store
        .update_session(&alice, session, SessionPatch { title: Some("e1b".into()), ..Default::default() })
        .await
        .unwrap();
    f.store.delete_message(&alice, message).await.unwrap();
    f.store.delete_sessions(&alice, &[session]).await.unwrap();

    let expected = [
        ("agentmesh.session.created", created[0].id),
        ("agentmesh.session.created", created[1].id),
        ("agentmesh.message.created", message),
        ("agentmesh.message.updated", message),
        ("agentmesh.session.updated", session),
        ("agentmesh.message.deleted", message),
        ("agentmesh.session.deleted", session),
    ];
    let mut stream = f.bus.subscribe(SubscriptionSpec::ephemeral(vec![">".into()])).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events arrived: {seen:?}", seen.len(), expected.len()))
            .unwrap()
            .unwrap();
        let event = delivery.event().clone();
        delivery.ack().await.unwrap();
        assert_eq!(event.source(), "agentmesh/session-store");
        assert_eq!(event.tenant(), Some("tenant-a"));
        seen.push((event.event_type().to_owned(), event.subject().unwrap_or_default().parse::<Uuid>().unwrap(), event));
    }
    let kinds: Vec<(&str, Uuid)> = seen.iter().map(|(t, s, _)| (t.as_str(), *s)).collect();
    assert_eq!(kinds, expected, "one event per write, in write order");

    let created_event = &seen[0].2;
    assert_eq!(created_event.data_schema(), Some("agentmesh.events.v1.SessionCreated"));
    let payload = pb::SessionCreated::decode(created_event.data().clone()).unwrap();
    assert_eq!(payload.session.unwrap().title.as_deref(), Some("e1"));
    let updated = pb::MessageUpdated::decode(seen[3].2.data().clone()).unwrap();
    assert_eq!(updated.message.unwrap().content, "ev2");
    let deleted = pb::MessageDeleted::decode(seen[5].2.data().clone()).unwrap();
    assert_eq!(deleted.session_id, session.to_string());
}
