//! Messages the agent loop needs, on every backend: typed tool calls, the tool call a tool
//! message answers, parent links, and the shape rules (checked by the service, kept
//! atomic by the store); plus the NUL rule, which the service answers before a backend
//! that cannot store NUL (PostgreSQL) ever sees the value.

use agentmesh_proto::agentmesh::common::v1::MessageRole;
use agentmesh_proto::agentmesh::session::v1 as rpc;
use agentmesh_proto::agentmesh::session::v1::session_service_server::SessionService as _;
use agentmesh_runtime::auth::{Principal, Tier};
use agentmesh_runtime::{ApiError, ErrorCode, RequestContext};
use agentmesh_session_store::service::SessionService;
use agentmesh_session_store::settings::SessionLimits;
use agentmesh_session_store::store::{MessageShape, ToolCall};
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tonic::{Request, Status};

use super::*;

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall { id: id.into(), name: name.into(), arguments: arguments.into() }
}

fn assistant_calling(calls: Vec<ToolCall>) -> NewMessage {
    NewMessage { tool_calls: calls, ..plain(Role::Assistant, "") }
}

fn plain(role: Role, content: &str) -> NewMessage {
    NewMessage {
        role,
        content: content.into(),
        metadata: JsonObject::new(),
        tool_calls: vec![],
        tool_call_id: None,
        parent_message_id: None,
    }
}

pub async fn tool_calls_and_links_round_trip(f: &Fixture) {
    let alice = owner("alice");
    let session = one_session(f, &alice, "tools").await;
    let question = f.store.create_message(&alice, session, plain(Role::User, "weather in Lisbon?")).await.unwrap();
    let calls = vec![
        call("call_1", "weather", r#"{"city": "Lisbon", "units": ["C"], "n": 1.50}"#),
        call("toolu_01é", "clock", "{}"),
    ];
    let asked = f
        .store
        .create_message(
            &alice,
            session,
            NewMessage { parent_message_id: Some(question.id), ..assistant_calling(calls.clone()) },
        )
        .await
        .unwrap();
    assert_eq!((asked.content.as_str(), &asked.tool_calls, asked.tool_call_id.as_deref()), ("", &calls, None));
    let result = NewMessage {
        tool_call_id: Some("call_1".into()),
        parent_message_id: Some(asked.id),
        ..plain(Role::Tool, "18 °C")
    };
    let answered = f.store.create_message(&alice, session, result).await.unwrap();
    assert_eq!((answered.tool_call_id.as_deref(), answered.parent_message_id), (Some("call_1"), Some(asked.id)));
    for written in [&asked, &answered] {
        assert_eq!(&f.store.get_message(&alice, written.id).await.unwrap(), written, "reads back exactly");
    }
    let listed = f.store.list_messages(&alice, session, &messages(10)).await.unwrap().items;
    assert_eq!(listed, vec![question, asked.clone(), answered.clone()], "listings carry the new fields too");

    // MessageCreated carries the message, new fields included.
    let mut stream = f.bus.subscribe(SubscriptionSpec::ephemeral(vec![">".into()])).await.unwrap();
    let mut created = Vec::new();
    while created.len() < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        if delivery.event().event_type() == "agentmesh.message.created" {
            created.push(pb::MessageCreated::decode(delivery.event().data().clone()).unwrap().message.unwrap());
        }
        delivery.ack().await.unwrap();
    }
    created.sort_by(|a, b| a.id.cmp(&b.id));
    let wire_calls: Vec<(String, String, String)> =
        created[1].tool_calls.iter().map(|c| (c.id.clone(), c.name.clone(), c.arguments.clone())).collect();
    let stored_calls: Vec<(String, String, String)> =
        calls.iter().map(|c| (c.id.clone(), c.name.clone(), c.arguments.clone())).collect();
    assert_eq!((created[1].id.clone(), wire_calls), (asked.id.to_string(), stored_calls));
    assert_eq!(created[2].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(created[2].parent_message_id, Some(asked.id.to_string()));
    assert_eq!(
        asked.shape(),
        MessageShape { role: Role::Assistant, has_content: false, has_tool_calls: true, has_tool_call_id: false }
    );
}

pub async fn message_updates_keep_or_replace_tool_fields(f: &Fixture) {
    let alice = owner("alice");
    let session = one_session(f, &alice, "edits").await;
    let first = f.store.create_message(&alice, session, plain(Role::User, "first")).await.unwrap();
    let asked = f.store.create_message(&alice, session, assistant_calling(vec![call("c1", "f", "{}")])).await.unwrap();
    let linked =
        NewMessage { tool_call_id: Some("c1".into()), parent_message_id: Some(asked.id), ..plain(Role::Tool, "r") };
    let result = f.store.create_message(&alice, session, linked).await.unwrap();
    let later = f.store.create_message(&alice, session, plain(Role::User, "later")).await.unwrap();

    // Absent fields keep their value.
    let metadata = object(serde_json::json!({"edited": true}));
    let patch = MessagePatch { metadata: Some(metadata.clone()), ..Default::default() };
    let kept = f.store.update_message(&alice, result.id, patch).await.unwrap();
    assert_eq!(
        (kept.tool_call_id.as_deref(), kept.parent_message_id, kept.metadata),
        (Some("c1"), Some(asked.id), metadata)
    );
    let kept =
        f.store.update_message(&alice, asked.id, MessagePatch { content: Some("ok".into()), ..Default::default() });
    assert_eq!(kept.await.unwrap().tool_calls, asked.tool_calls);

    // Present fields replace; `Some(None)` removes.
    let calls = vec![call("c2", "g", r#"{"x": [1, 2]}"#), call("c3", "h", "null")];
    let patch = MessagePatch { tool_calls: Some(calls.clone()), content: Some(String::new()), ..Default::default() };
    let replaced = f.store.update_message(&alice, asked.id, patch).await.unwrap();
    assert_eq!((replaced.tool_calls.clone(), replaced.content.as_str()), (calls, ""));
    assert_eq!(f.store.get_message(&alice, asked.id).await.unwrap(), replaced);
    let patch = MessagePatch {
        role: Some(Role::User),
        tool_call_id: Some(None),
        parent_message_id: Some(Some(first.id)),
        ..Default::default()
    };
    let moved = f.store.update_message(&alice, result.id, patch).await.unwrap();
    assert_eq!((moved.role, moved.tool_call_id, moved.parent_message_id), (Role::User, None, Some(first.id)));
    let cleared = MessagePatch { parent_message_id: Some(None), ..Default::default() };
    assert_eq!(f.store.update_message(&alice, result.id, cleared).await.unwrap().parent_message_id, None);

    // A parent must be an earlier message of the same session: never itself, a later
    // message (no cycles) or another session's.
    let other = one_session(f, &alice, "other").await;
    let elsewhere = f.store.create_message(&alice, other, plain(Role::User, "x")).await.unwrap().id;
    for parent in [result.id, later.id, elsewhere, Uuid::now_v7()] {
        let patch =
            MessagePatch { parent_message_id: Some(Some(parent)), content: Some("no".into()), ..Default::default() };
        let refused = f.store.update_message(&alice, result.id, patch).await;
        assert!(matches!(refused, Err(StoreError::InvalidParent)), "{parent}: {refused:?}");
    }
    assert_eq!(f.store.get_message(&alice, result.id).await.unwrap().content, "r", "a refused update changes nothing");

    // An update applies only while the stored shape is the one expected.
    let stale = MessageShape { role: Role::Tool, has_content: true, has_tool_calls: false, has_tool_call_id: true };
    let patch = MessagePatch { content: Some("stale".into()), expect: Some(stale), ..Default::default() };
    assert!(matches!(f.store.update_message(&alice, result.id, patch).await, Err(StoreError::Conflict)));
    let current = f.store.get_message(&alice, result.id).await.unwrap();
    assert_eq!(current.content, "r");
    let patch = MessagePatch { content: Some("fresh".into()), expect: Some(current.shape()), ..Default::default() };
    assert_eq!(f.store.update_message(&alice, result.id, patch).await.unwrap().content, "fresh");
}

fn service(f: &Fixture) -> SessionService {
    let limits = SessionLimits {
        max_title_length: 500,
        max_content_length: 1000,
        max_metadata_bytes: 16_384,
        max_tool_calls: 4,
    };
    SessionService::new(Arc::clone(&f.store), Arc::clone(&f.idempotency), limits)
}

fn as_alice<T>(body: T) -> Request<T> {
    let mut request = Request::new(body);
    let principal =
        Principal { user_id: "alice".into(), tenant_id: "tenant-a".into(), tier: Tier::Authenticated, scopes: vec![] };
    request.extensions_mut().insert(RequestContext { principal: Some(principal), ..RequestContext::new() });
    request
}

fn refused(result: Result<impl std::fmt::Debug, Status>) -> Vec<String> {
    let status = result.expect_err("refused");
    let error = ApiError::from_status(&status);
    assert_eq!(error.code, ErrorCode::Validation, "{status:?}");
    error.field_violations.into_iter().map(|v| v.field).collect()
}

fn rpc_call(id: &str, arguments: &str) -> rpc::ToolCall {
    rpc::ToolCall { id: id.into(), name: "search".into(), arguments: arguments.into() }
}

fn create(session: &str, role: MessageRole, content: &str) -> rpc::CreateMessageRequest {
    rpc::CreateMessageRequest {
        session_id: session.into(),
        role: role as i32,
        content: content.into(),
        ..Default::default()
    }
}

pub async fn message_shape_rules_through_the_service(f: &Fixture) {
    let service = service(f);
    let alice = owner("alice");
    let session = one_session(f, &alice, "rules").await.to_string();
    let calls = vec![rpc_call("c1", r#"{"q": "x"}"#)];

    let ok = rpc::CreateMessageRequest { tool_calls: calls.clone(), ..create(&session, MessageRole::Assistant, "") };
    let asked = service.create_message(as_alice(ok)).await.unwrap().into_inner().message.unwrap();
    assert_eq!((asked.content.as_str(), asked.tool_calls.clone()), ("", calls.clone()));
    let cases: Vec<(rpc::CreateMessageRequest, Vec<&str>)> = vec![
        (create(&session, MessageRole::Assistant, ""), vec!["content"]),
        (create(&session, MessageRole::User, ""), vec!["content"]),
        (
            rpc::CreateMessageRequest { tool_calls: calls.clone(), ..create(&session, MessageRole::User, "hi") },
            vec!["tool_calls"],
        ),
        (create(&session, MessageRole::Tool, "result"), vec!["tool_call_id"]),
        (
            rpc::CreateMessageRequest { tool_call_id: Some("c1".into()), ..create(&session, MessageRole::User, "hi") },
            vec!["tool_call_id"],
        ),
        (
            rpc::CreateMessageRequest {
                tool_calls: vec![rpc_call("c1", "{not json"), rpc_call("", "{}"), rpc_call("c1", "1")],
                ..create(&session, MessageRole::Assistant, "")
            },
            vec!["tool_calls[0].arguments", "tool_calls[1].id"],
        ),
        (
            rpc::CreateMessageRequest {
                tool_calls: vec![rpc_call("a", "1"), rpc_call("a", "2")],
                ..create(&session, MessageRole::Assistant, "")
            },
            vec!["tool_calls[1].id"],
        ),
    ];
    for (request, fields) in cases {
        assert_eq!(refused(service.create_message(as_alice(request.clone())).await), fields, "{request:?}");
    }

    // A parent from another session is refused with 422 naming the field.
    let other = one_session(f, &alice, "other").await;
    let elsewhere = f.store.create_message(&alice, other, plain(Role::User, "x")).await.unwrap().id.to_string();
    let orphan =
        rpc::CreateMessageRequest { parent_message_id: Some(elsewhere), ..create(&session, MessageRole::User, "hi") };
    assert_eq!(refused(service.create_message(as_alice(orphan)).await), ["parent_message_id"]);

    // Updates are checked on the message they produce.
    let result = rpc::CreateMessageRequest {
        tool_call_id: Some("c1".into()),
        parent_message_id: Some(asked.id.clone()),
        ..create(&session, MessageRole::Tool, "42")
    };
    let result = service.create_message(as_alice(result)).await.unwrap().into_inner().message.unwrap();
    let update = |id: &str| rpc::UpdateMessageRequest { message_id: id.into(), ..Default::default() };
    let to_user = rpc::UpdateMessageRequest { role: MessageRole::User as i32, ..update(&result.id) };
    assert_eq!(refused(service.update_message(as_alice(to_user.clone())).await), ["tool_call_id"]);
    let to_user = rpc::UpdateMessageRequest { tool_call_id: Some(String::new()), ..to_user };
    let moved = service.update_message(as_alice(to_user)).await.unwrap().into_inner().message.unwrap();
    assert_eq!(
        (moved.role, moved.tool_call_id, moved.parent_message_id),
        (MessageRole::User as i32, None, Some(asked.id.clone()))
    );
    let silenced = rpc::UpdateMessageRequest { role: MessageRole::User as i32, ..update(&asked.id) };
    assert_eq!(refused(service.update_message(as_alice(silenced)).await), ["content", "tool_calls"]);
    let metadata_only = rpc::UpdateMessageRequest { metadata: Some(Struct::default()), ..update(&asked.id) };
    let kept = service.update_message(as_alice(metadata_only)).await.unwrap().into_inner().message.unwrap();
    assert_eq!((kept.content.as_str(), kept.tool_calls), ("", calls));
}

fn text_value(text: &str) -> Value {
    Value { kind: Some(Kind::StringValue(text.into())) }
}

fn metadata(key: &str, value: Value) -> Option<Struct> {
    Some(Struct { fields: [(key.to_owned(), value)].into_iter().collect() })
}

pub async fn nul_characters_are_refused_before_storage(f: &Fixture) {
    let service = service(f);
    let nested = Value {
        kind: Some(Kind::StructValue(Struct {
            fields: [(
                "list".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(prost_types::ListValue {
                        values: vec![text_value("ok"), text_value("a\0b")],
                    })),
                },
            )]
            .into_iter()
            .collect(),
        })),
    };
    let sessions = [
        (rpc::CreateSessionRequest { title: Some("bad\0title".into()), ..Default::default() }, "title"),
        (rpc::CreateSessionRequest { user_id: Some("\0".into()), ..Default::default() }, "user_id"),
        (
            rpc::CreateSessionRequest { metadata: metadata("k\0ey", text_value("v")), ..Default::default() },
            "metadata.k\\u0000ey",
        ),
        (rpc::CreateSessionRequest { metadata: metadata("k", text_value("v\0")), ..Default::default() }, "metadata.k"),
        (
            rpc::CreateSessionRequest { metadata: metadata("deep", nested), ..Default::default() },
            "metadata.deep.list[1]",
        ),
    ];
    for (request, field) in sessions {
        assert_eq!(refused(service.create_session(as_alice(request)).await), [field]);
    }
    let alice = owner("alice");
    assert_eq!(f.store.list_sessions(&alice, &sessions_query()).await.unwrap().total, 0, "nothing was stored");

    let session = one_session(f, &alice, "nul").await.to_string();
    let content = create(&session, MessageRole::User, "a\0b");
    assert_eq!(refused(service.create_message(as_alice(content)).await), ["content"]);
    let calls = rpc::CreateMessageRequest {
        tool_calls: vec![rpc::ToolCall { id: "c\0".into(), name: "n\0".into(), arguments: "\"\0\"".into() }],
        ..create(&session, MessageRole::Assistant, "")
    };
    let fields = refused(service.create_message(as_alice(calls)).await);
    assert_eq!(fields, ["tool_calls[0].id", "tool_calls[0].name", "tool_calls[0].arguments"]);
    let message = service.create_message(as_alice(create(&session, MessageRole::User, "fine"))).await.unwrap();
    let message_id = message.into_inner().message.unwrap().id;
    let update =
        rpc::UpdateMessageRequest { message_id: message_id.clone(), content: Some("\0".into()), ..Default::default() };
    assert_eq!(refused(service.update_message(as_alice(update)).await), ["content"]);
    let update =
        rpc::UpdateSessionRequest { session_id: session.clone(), title: Some("\0".into()), ..Default::default() };
    assert_eq!(refused(service.update_session(as_alice(update)).await), ["title"]);
    let search = rpc::ListMessagesRequest { session_id: session, search: Some("\0".into()), ..Default::default() };
    assert_eq!(refused(service.list_messages(as_alice(search)).await), ["search"]);
    let stored = f.store.get_message(&alice, message_id.parse().unwrap()).await.unwrap();
    assert_eq!(stored.content, "fine");
}

fn sessions_query() -> SessionQuery {
    sessions(100)
}
