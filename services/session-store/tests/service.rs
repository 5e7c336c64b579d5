//! SessionService over real gRPC on loopback (memory backend): principals, validation,
//! idempotency, page tokens and tenant isolation as a client sees them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agentmesh_events::MemoryBus;
use agentmesh_proto::agentmesh::common::v1::{MessageRole, SortOrder};
use agentmesh_proto::agentmesh::session::v1 as pb;
use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_runtime::ServiceName;
use agentmesh_runtime::auth::{ACTOR_HEADER, PRINCIPAL_HEADER};
use agentmesh_runtime::{ApiError, Config, ErrorCode};
use agentmesh_testkit::identity;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

struct Mesh {
    client: SessionServiceClient<Channel>,
    _stop: oneshot::Sender<()>,
}

async fn start(extra_env: &[(&str, &str)]) -> Mesh {
    let env = extra_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    let config = Arc::new(Config::load(None, env).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(agentmesh_session_store::serve(config, Arc::new(MemoryBus::default()), listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(url).unwrap().connect_lazy();
    Mesh { client: SessionServiceClient::new(channel), _stop: stop }
}

impl Mesh {
    fn as_user<T>(&self, user: &str, body: T) -> Request<T> {
        let mut request = Request::new(body);
        for (name, value) in identity::gateway_call(&identity::user(user, "acme"), ServiceName::SessionStore) {
            request.metadata_mut().insert(name, value.parse().unwrap());
        }
        request
    }

    async fn create(&mut self, user: &str, title: &str) -> pb::Session {
        let body = pb::CreateSessionRequest { title: Some(title.into()), ..Default::default() };
        let request = self.as_user(user, body);
        self.client.create_session(request).await.unwrap().into_inner().session.unwrap()
    }
}

fn violations(status: &Status) -> Vec<String> {
    let error = ApiError::from_status(status);
    assert_eq!(error.code, ErrorCode::Validation, "{status:?}");
    error.field_violations.into_iter().map(|v| v.field).collect()
}

#[tokio::test]
async fn calls_without_a_signed_principal_are_refused() {
    let mut mesh = start(&[]).await;
    let status = mesh.client.list_sessions(pb::ListSessionsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut forged = mesh.as_user("a", pb::ListSessionsRequest::default());
    let claims = identity::principal_claims(ServiceName::Gateway, &identity::user("a", "t"), 60);
    let by_mcp_broker = identity::principal_signed_by(ServiceName::McpBroker, &claims);
    forged.metadata_mut().insert(PRINCIPAL_HEADER, by_mcp_broker.parse().unwrap());
    assert_eq!(mesh.client.list_sessions(forged).await.unwrap_err().code(), Code::Unauthenticated);
    let mut unserved = mesh.as_user("a", pb::ListSessionsRequest::default());
    let llm_proxy = identity::actor_token(ServiceName::LlmProxy, ServiceName::SessionStore);
    unserved.metadata_mut().insert(ACTOR_HEADER, llm_proxy.parse().unwrap());
    let status = mesh.client.list_sessions(unserved).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("does not serve calls from llm-proxy"), "{status:?}");
}

#[tokio::test]
async fn sessions_crud_with_seed_defaults() {
    let mut mesh = start(&[]).await;
    let created = mesh.create("alice", "hello").await;
    assert_eq!(created.title.as_deref(), Some("hello"));
    assert_eq!(created.message_count, 0);
    assert!(created.metadata.unwrap().fields.is_empty());

    for _ in 0..24 {
        mesh.create("alice", "more").await;
    }
    let listed = mesh.client.list_sessions(mesh.as_user("alice", pb::ListSessionsRequest::default())).await.unwrap();
    let listed = listed.into_inner();
    assert_eq!((listed.sessions.len(), listed.total_count), (20, 25), "default limit 20");
    assert!(!listed.next_page_token.is_empty());

    let update = pb::UpdateSessionRequest {
        session_id: created.id.clone(),
        title: Some("renamed".into()),
        ..Default::default()
    };
    let updated =
        mesh.client.update_session(mesh.as_user("alice", update)).await.unwrap().into_inner().session.unwrap();
    assert_eq!(updated.title.as_deref(), Some("renamed"));

    let delete = pb::DeleteSessionRequest { session_id: created.id.clone() };
    mesh.client.delete_session(mesh.as_user("alice", delete.clone())).await.unwrap();
    let again = mesh.client.delete_session(mesh.as_user("alice", delete)).await.unwrap_err();
    assert_eq!(ApiError::from_status(&again).code, ErrorCode::NotFound);
    assert_eq!(again.message(), "Session not found");
}

#[tokio::test]
async fn invalid_input_is_refused_with_every_field_named_and_nothing_changes() {
    let mut mesh = start(&[("SESSION_MAX_METADATA_BYTES", "64"), ("SESSION_MAX_CONTENT_LENGTH", "10")]).await;
    let bad_list = pb::ListSessionsRequest { limit: Some(101), offset: Some(-1), sort_by: 9, ..Default::default() };
    let status = mesh.client.list_sessions(mesh.as_user("alice", bad_list)).await.unwrap_err();
    assert_eq!(violations(&status), ["limit", "offset", "sort_by"]);

    let big = serde_json::json!({"blob": "x".repeat(100)});
    let metadata = agentmesh_session_store::convert::object_to_struct(big.as_object().unwrap());
    let bad_create =
        pb::CreateSessionRequest { title: Some("t".repeat(501)), metadata: Some(metadata), ..Default::default() };
    let status = mesh.client.create_session(mesh.as_user("alice", bad_create)).await.unwrap_err();
    assert_eq!(violations(&status), ["title"], "contract rules are checked first");

    let session = mesh.create("alice", "s").await;
    let bad_message = pb::CreateMessageRequest {
        session_id: session.id.clone(),
        content: "this is longer than ten".into(),
        parent_message_id: Some("not-a-uuid".into()),
        ..Default::default()
    };
    let status = mesh.client.create_message(mesh.as_user("alice", bad_message)).await.unwrap_err();
    assert_eq!(violations(&status), ["parent_message_id"]);
    let long =
        pb::CreateMessageRequest { session_id: session.id.clone(), content: "x".repeat(11), ..Default::default() };
    let status = mesh.client.create_message(mesh.as_user("alice", long)).await.unwrap_err();
    assert_eq!(violations(&status), ["content"]);
    let bad_id = pb::GetSessionRequest { session_id: "123".into() };
    assert_eq!(violations(&mesh.client.get_session(mesh.as_user("alice", bad_id)).await.unwrap_err()), ["session_id"]);

    let get = pb::GetSessionRequest { session_id: session.id.clone() };
    let unchanged = mesh.client.get_session(mesh.as_user("alice", get)).await.unwrap().into_inner().session.unwrap();
    assert_eq!(unchanged.message_count, 0);
    let listed = mesh.client.list_sessions(mesh.as_user("alice", pb::ListSessionsRequest::default())).await.unwrap();
    assert_eq!(listed.into_inner().total_count, 1);
}

#[tokio::test]
async fn a_parent_from_another_session_is_a_validation_error() {
    let mut mesh = start(&[]).await;
    let (first, second) = (mesh.create("alice", "a").await, mesh.create("alice", "b").await);
    let other = pb::CreateMessageRequest { session_id: second.id.clone(), content: "x".into(), ..Default::default() };
    let other = mesh.client.create_message(mesh.as_user("alice", other)).await.unwrap().into_inner().message.unwrap();
    let reply = pb::CreateMessageRequest {
        session_id: first.id.clone(),
        content: "y".into(),
        parent_message_id: Some(other.id),
        ..Default::default()
    };
    let status = mesh.client.create_message(mesh.as_user("alice", reply)).await.unwrap_err();
    assert_eq!(violations(&status), ["parent_message_id"]);
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_result_and_refuse_other_bodies() {
    let mut mesh = start(&[]).await;
    let keyed = |mesh: &Mesh, title: &str, key: &str| {
        let mut request =
            mesh.as_user("alice", pb::CreateSessionRequest { title: Some(title.into()), ..Default::default() });
        request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
        request
    };
    let first = mesh.client.create_session(keyed(&mesh, "once", "key-1")).await.unwrap().into_inner();
    let second = mesh.client.create_session(keyed(&mesh, "once", "key-1")).await.unwrap().into_inner();
    assert_eq!(first, second, "the same key and body return the first result");
    let conflict = mesh.client.create_session(keyed(&mesh, "other body", "key-1")).await.unwrap_err();
    assert_eq!(ApiError::from_status(&conflict).code, ErrorCode::Conflict);
    let listed = mesh.client.list_sessions(mesh.as_user("alice", pb::ListSessionsRequest::default())).await.unwrap();
    assert_eq!(listed.into_inner().total_count, 1, "created once");

    keyed_messages_are_appended_once(&mut mesh).await;
}

/// On PostgreSQL a keyed append records its key in its own write; a client sees the same
/// behaviour as on memory.
#[tokio::test]
async fn keyed_messages_on_postgres_are_appended_once() {
    let Some(database) = agentmesh_testkit::PgDatabase::create("ss_service").await else { return };
    let mut mesh = start(&[("USE_DATABASE", "true"), ("DB_URL", database.url())]).await;
    keyed_messages_are_appended_once(&mut mesh).await;
}

/// A repeat of a keyed append answers the first response, another body with the key is a
/// conflict, and an append refused (another user's session) leaves its key unused.
async fn keyed_messages_are_appended_once(mesh: &mut Mesh) {
    let session = mesh.create("alice", "keyed").await;
    let message = |mesh: &Mesh, user: &str, content: &str, key: &str| {
        let body =
            pb::CreateMessageRequest { session_id: session.id.clone(), content: content.into(), ..Default::default() };
        let mut request = mesh.as_user(user, body);
        request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
        request
    };
    let mut client = mesh.client.clone();
    let m1 = client.create_message(message(mesh, "alice", "hi", "m-key")).await.unwrap().into_inner();
    let m2 = client.create_message(message(mesh, "alice", "hi", "m-key")).await.unwrap().into_inner();
    assert_eq!(m1, m2, "the same key and body return the first result");
    let conflict = client.create_message(message(mesh, "alice", "other", "m-key")).await.unwrap_err();
    assert_eq!(ApiError::from_status(&conflict).code, ErrorCode::Conflict, "{conflict:?}");

    let refused = client.create_message(message(mesh, "bob", "hi", "b-key")).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let own = pb::CreateSessionRequest { title: Some("bob's".into()), ..Default::default() };
    let own = client.create_session(mesh.as_user("bob", own)).await.unwrap().into_inner().session.unwrap();
    let body = pb::CreateMessageRequest { session_id: own.id, content: "hi".into(), ..Default::default() };
    let mut request = mesh.as_user("bob", body);
    request.metadata_mut().insert("idempotency-key", "b-key".parse().unwrap());
    let status = client.create_message(request).await;
    assert!(status.is_ok(), "a refused append left its key free: {status:?}");

    let get = pb::GetSessionRequest { session_id: session.id.clone() };
    let after = client.get_session(mesh.as_user("alice", get)).await.unwrap().into_inner().session.unwrap();
    assert_eq!(after.message_count, 1);

    let delete = pb::DeleteSessionRequest { session_id: session.id.clone() };
    client.delete_session(mesh.as_user("alice", delete)).await.unwrap();
    let replayed = client.create_message(message(mesh, "alice", "hi", "m-key")).await.unwrap().into_inner();
    assert_eq!(replayed, m1, "a repeat is answered from the key even after the session is gone");
    let status = client.create_message(message(mesh, "alice", "hi", "new-key")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn page_tokens_walk_a_listing_and_refuse_other_queries() {
    let mut mesh = start(&[]).await;
    let session = mesh.create("alice", "paged").await;
    for i in 0..7 {
        let body =
            pb::CreateMessageRequest { session_id: session.id.clone(), content: format!("m{i}"), ..Default::default() };
        mesh.client.create_message(mesh.as_user("alice", body)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let body = pb::ListMessagesRequest {
            session_id: session.id.clone(),
            limit: Some(3),
            page_token: token.clone(),
            ..Default::default()
        };
        let page = mesh.client.list_messages(mesh.as_user("alice", body)).await.unwrap().into_inner();
        assert_eq!(page.total_count, 7);
        seen.extend(page.messages.into_iter().map(|m| m.content));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (0..7).map(|i| format!("m{i}")).collect::<Vec<_>>());

    for i in 0..3 {
        mesh.create("alice", &format!("s{i}")).await;
    }
    let first = pb::ListSessionsRequest { limit: Some(1), sort_order: SortOrder::Asc as i32, ..Default::default() };
    let page = mesh.client.list_sessions(mesh.as_user("alice", first)).await.unwrap().into_inner();
    let other_order =
        pb::ListSessionsRequest { limit: Some(1), page_token: page.next_page_token.clone(), ..Default::default() };
    let status = mesh.client.list_sessions(mesh.as_user("alice", other_order)).await.unwrap_err();
    assert_eq!(violations(&status), ["page_token"]);
    let with_offset = pb::ListSessionsRequest {
        limit: Some(1),
        offset: Some(1),
        sort_order: SortOrder::Asc as i32,
        page_token: page.next_page_token,
        ..Default::default()
    };
    let page = mesh.client.list_sessions(mesh.as_user("alice", with_offset)).await.unwrap().into_inner();
    assert_eq!(page.sessions.len(), 1, "page_token takes precedence over offset");
}

#[tokio::test]
async fn another_users_ids_answer_exactly_like_missing_ones() {
    let mut mesh = start(&[]).await;
    let session = mesh.create("alice", "mine").await;
    let body = pb::CreateMessageRequest {
        session_id: session.id.clone(),
        content: "private".into(),
        role: MessageRole::Assistant as i32,
        ..Default::default()
    };
    let message = mesh.client.create_message(mesh.as_user("alice", body)).await.unwrap().into_inner().message.unwrap();
    let missing = uuid::Uuid::now_v7().to_string();

    for (session_id, message_id) in [(session.id.clone(), message.id.clone()), (missing.clone(), missing.clone())] {
        let answers: Vec<Status> =
            vec![
                mesh.client
                    .get_session(mesh.as_user("bob", pb::GetSessionRequest { session_id: session_id.clone() }))
                    .await
                    .unwrap_err(),
                mesh.client
                    .update_session(mesh.as_user(
                        "bob",
                        pb::UpdateSessionRequest {
                            session_id: session_id.clone(),
                            title: Some("x".into()),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap_err(),
                mesh.client
                    .delete_session(mesh.as_user("bob", pb::DeleteSessionRequest { session_id: session_id.clone() }))
                    .await
                    .unwrap_err(),
                mesh.client
                    .list_messages(mesh.as_user(
                        "bob",
                        pb::ListMessagesRequest { session_id: session_id.clone(), ..Default::default() },
                    ))
                    .await
                    .unwrap_err(),
                mesh.client
                    .get_message(mesh.as_user("bob", pb::GetMessageRequest { message_id: message_id.clone() }))
                    .await
                    .unwrap_err(),
                mesh.client
                    .update_message(mesh.as_user(
                        "bob",
                        pb::UpdateMessageRequest {
                            message_id: message_id.clone(),
                            content: Some("x".into()),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap_err(),
                mesh.client
                    .delete_message(mesh.as_user("bob", pb::DeleteMessageRequest { message_id: message_id.clone() }))
                    .await
                    .unwrap_err(),
            ];
        let shapes: Vec<(Code, String)> = answers.iter().map(|s| (s.code(), s.message().to_owned())).collect();
        let expected = ["Session", "Session", "Session", "Session", "Message", "Message", "Message"]
            .map(|resource| (Code::NotFound, format!("{resource} not found")));
        assert_eq!(shapes, expected, "for {session_id}");
    }
    let get = pb::GetMessageRequest { message_id: message.id.clone() };
    let still = mesh.client.get_message(mesh.as_user("alice", get)).await.unwrap().into_inner().message.unwrap();
    assert_eq!((still.content.as_str(), still.role), ("private", MessageRole::Assistant as i32));
}

#[tokio::test]
async fn tool_calls_and_tool_results_over_grpc() {
    let mut mesh = start(&[]).await;
    let session = mesh.create("alice", "tools").await.id;
    let calls =
        vec![pb::ToolCall { id: "call_1".into(), name: "weather".into(), arguments: r#"{"city":"Lisbon"}"#.into() }];
    let ask = pb::CreateMessageRequest {
        session_id: session.clone(),
        role: MessageRole::Assistant as i32,
        tool_calls: calls.clone(),
        ..Default::default()
    };
    let asked = mesh.client.create_message(mesh.as_user("alice", ask)).await.unwrap().into_inner().message.unwrap();
    let answer = pb::CreateMessageRequest {
        session_id: session.clone(),
        role: MessageRole::Tool as i32,
        content: "18 °C".into(),
        tool_call_id: Some("call_1".into()),
        parent_message_id: Some(asked.id.clone()),
        ..Default::default()
    };
    let answered =
        mesh.client.create_message(mesh.as_user("alice", answer)).await.unwrap().into_inner().message.unwrap();
    let read = mesh.as_user("alice", pb::GetMessageRequest { message_id: asked.id.clone() });
    let read = mesh.client.get_message(read).await.unwrap().into_inner().message.unwrap();
    assert_eq!((read.content.as_str(), read.tool_calls, read.tool_call_id), ("", calls, None));
    assert_eq!((answered.tool_call_id.as_deref(), answered.parent_message_id), (Some("call_1"), Some(asked.id)));

    let unanswered = pb::CreateMessageRequest {
        session_id: session,
        role: MessageRole::Tool as i32,
        content: "r".into(),
        ..Default::default()
    };
    let status = mesh.client.create_message(mesh.as_user("alice", unanswered)).await.unwrap_err();
    assert_eq!(violations(&status), ["tool_call_id"]);
}
