//! Server-streaming RPCs through the gateway: SSE with ids, event names, heartbeats and
//! `Last-Event-ID` resume, the same stream over the WebSocket and over grpc-web
//! passthrough, against a fake orchestrator that streams run events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use agentmesh_proto::agentmesh::agent::v1 as pb;
use agentmesh_proto::agentmesh::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
use agentmesh_proto::agentmesh::agent::v1::run_event::Kind;
use agentmesh_runtime::{Config, GrpcServer, ServiceName};
use common::Mesh;
use common::grpc_web::{Wire, request, send};
use futures::{SinkExt, Stream, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

/// The run every stream here is about.
const RUN: &str = "0193a3f0-0000-7000-8000-0000000000aa";

const KEY: &str = "sk-stream-test-0123456789abcdefghijklmnop";

/// Streams five events of run `r1` after the requested sequence, remembering requests.
#[derive(Default)]
struct FakeRuns {
    seen_from: Mutex<Vec<Option<u64>>>,
}

fn run_event(sequence: u64) -> pb::RunEvent {
    let kind = match sequence {
        1 => Kind::RunStarted(pb::RunStarted { agent_id: "a1".into(), session_id: "s1".into(), ..Default::default() }),
        5 => Kind::RunCompleted(pb::RunCompleted::default()),
        n => Kind::Token(pb::TokenDelta { text: format!("t{n}"), ..Default::default() }),
    };
    pb::RunEvent { run_id: RUN.into(), sequence, time: None, kind: Some(kind) }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StreamRunResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for FakeRuns {
    async fn stream_run(&self, request: Request<pb::StreamRunRequest>) -> Result<Response<EventStream>, Status> {
        let from = request.get_ref().from_sequence;
        self.seen_from.lock().unwrap().push(from);
        let after = from.unwrap_or(0);
        let events = ((after + 1)..=5).map(|n| Ok(pb::StreamRunResponse { event: Some(run_event(n)) }));
        Ok(Response::new(Box::pin(futures::stream::iter(events.collect::<Vec<_>>()))))
    }
}

async fn start() -> (Mesh, Arc<FakeRuns>) {
    start_with(&[]).await
}

/// The mesh and its fake orchestrator, with `flags` set.
async fn start_with(flags: &[(&str, &str)]) -> (Mesh, Arc<FakeRuns>) {
    let runs = Arc::new(FakeRuns::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = Config::load(None, []).unwrap();
    let server = GrpcServer::new(ServiceName::AgentOrchestrator, &config)
        .add_service(AgentServiceServer::from_arc(runs.clone()));
    tokio::spawn(server.serve(listener, std::future::pending()));
    let keys = format!("{KEY}=streamer:premium");
    let mut env = vec![("SECURITY_API_KEYS", keys.as_str())];
    env.extend_from_slice(flags);
    let mesh = Mesh::start_with(&env, &[("AGENT_ORCHESTRATOR_URL", url)]).await;
    (mesh, runs)
}

/// `(id, event, data)` of each SSE event in `body`.
fn parse_sse(body: &str) -> Vec<(Option<String>, Option<String>, Value)> {
    body.split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("data:")))
        .map(|block| {
            let field = |name: &str| {
                block.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim_start().to_owned()))
            };
            (field("id"), field("event"), serde_json::from_str(&field("data").unwrap()).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn runs_stream_as_server_sent_events_and_resume_from_last_event_id() {
    let (mesh, runs) = start().await;
    let response =
        mesh.http.get(mesh.url(&format!("/api/v1/runs/{RUN}/stream"))).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&response.text().await.unwrap());
    let ids: Vec<_> = events.iter().map(|(id, _, _)| id.clone().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    let names: Vec<_> = events.iter().map(|(_, event, _)| event.clone().unwrap()).collect();
    assert_eq!(names, ["run_started", "token", "token", "token", "run_completed"]);
    assert_eq!(events[1].2["token"]["text"], "t2");
    assert_eq!(events[1].2["sequence"], 2);
    assert_eq!(events[1].2["run_id"], RUN);
    assert!(events[1].2.get("run_completed").is_none(), "only the set case of the oneof is shown");

    let resumed = mesh
        .http
        .get(mesh.url(&format!("/api/v1/runs/{RUN}/stream")))
        .bearer_auth(KEY)
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    let events = parse_sse(&resumed.text().await.unwrap());
    assert_eq!(events.iter().map(|(id, _, _)| id.clone().unwrap()).collect::<Vec<_>>(), ["4", "5"]);
    let explicit = mesh
        .http
        .get(mesh.url(&format!("/api/v1/runs/{RUN}/stream?from_sequence=4")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(parse_sse(&explicit.text().await.unwrap()).len(), 1);
    assert_eq!(*runs.seen_from.lock().unwrap(), [None, Some(3), Some(4)]);

    let anonymous = mesh.http.get(mesh.url(&format!("/api/v1/runs/{RUN}/stream"))).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn the_same_stream_is_offered_over_the_websocket() {
    let (mesh, _runs) = start().await;
    let url = format!("{}{}?token={KEY}", mesh.base.replacen("http", "ws", 1), "/api/v1/ws");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let send = |frame: Value| tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into());
    socket.send(send(json!({"type": "ping"}))).await.unwrap();
    socket
        .send(send(json!({"type": "subscribe", "id": "s1", "path": &format!("/api/v1/runs/{RUN}/stream"), "last_event_id": "2"})))
        .await
        .unwrap();
    let mut frames = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        let frame: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        let done = frame["type"] == "end";
        frames.push(frame);
        if done {
            break;
        }
    }
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["pong", "subscribed", "event", "event", "event", "end"]);
    assert_eq!(frames[2]["event_id"], "3");
    assert_eq!(frames[2]["event"], "token");
    assert_eq!(frames[4]["event"], "run_completed");

    socket.send(send(json!({"type": "subscribe", "id": "s2", "path": "/api/v1/sessions"}))).await.unwrap();
    let frame: Value = serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!((frame["type"].clone(), frame["id"].clone()), (json!("error"), json!("s2")));
    assert_eq!(frame["error"]["code"], "validation_error");
}

#[tokio::test]
async fn websockets_refuse_anonymous_callers_and_excess_connections() {
    let (mesh, _runs) = start().await;
    let base = format!("{}{}", mesh.base.replacen("http", "ws", 1), "/api/v1/ws");
    assert!(tokio_tungstenite::connect_async(base.clone()).await.is_err(), "no credentials");
    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(tokio_tungstenite::connect_async(format!("{base}?token={KEY}")).await.unwrap());
    }
    let refused = tokio_tungstenite::connect_async(format!("{base}?token={KEY}")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("the 11th connection must be refused with 429, got {other:?}"),
    }
    drop(open);
}

/// WebSocket connections per IP count the client a trusted proxy names, not the proxy:
/// with one connection allowed per IP, a second client behind the same proxy still connects.
#[tokio::test]
async fn websocket_connections_per_ip_count_clients_behind_a_trusted_proxy() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let keys = format!("{KEY}=streamer:premium");
    let env = [
        ("SECURITY_API_KEYS", keys.as_str()),
        ("SECURITY_TRUSTED_PROXY_HOPS", "1"),
        ("RATE_LIMIT_WEBSOCKET_CONNECTIONS_PER_IP", "1"),
    ];
    let mesh = Mesh::start(&env).await;
    let url = format!("{}/api/v1/ws?token={KEY}", mesh.base.replacen("http", "ws", 1));
    let connect = |client: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let first = connect("203.0.113.1").await.unwrap();
    match connect("198.51.100.9, 203.0.113.1").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("a second connection of 203.0.113.1 must be refused with 429, got {other:?}"),
    }
    let second = connect("203.0.113.2").await.unwrap();
    drop((first, second));
}

#[tokio::test]
async fn the_same_stream_is_passed_through_over_grpc_web() {
    let (mesh, runs) = start().await;
    for wire in [Wire::Binary, Wire::Text] {
        let ask = pb::StreamRunRequest { run_id: RUN.into(), from_sequence: Some(2) };
        let call = request(&mesh, wire, "/agentmesh.agent.v1.AgentService/StreamRun", &ask).bearer_auth(KEY);
        let reply = send(wire, call).await;
        assert_eq!(reply.grpc_status(), Some("0"), "{reply:?}");
        let sequences: Vec<u64> = reply
            .messages
            .iter()
            .map(|m| pb::StreamRunResponse::decode(m.clone()).unwrap().event.unwrap().sequence)
            .collect();
        assert_eq!(sequences, [3, 4, 5], "{wire:?}: every event after the requested one, then the trailers");
    }
    assert_eq!(runs.seen_from.lock().unwrap().last(), Some(&Some(2)));
}

#[tokio::test]
async fn streaming_off_refuses_every_stream_before_it_reaches_the_service() {
    let (mesh, runs) = start_with(&[("FEATURE_ENABLE_STREAMING", "false")]).await;
    let sse = mesh.http.get(mesh.url(&format!("/api/v1/runs/{RUN}/stream"))).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(sse.status(), 501);
    let body: Value = sse.json().await.unwrap();
    assert_eq!(body["code"], "not_implemented", "{body}");
    assert_eq!(body["message"], "Streaming is disabled on this deployment", "{body}");

    let url = format!("{}{}?token={KEY}", mesh.base.replacen("http", "ws", 1), "/api/v1/ws");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let subscribe = json!({"type": "subscribe", "id": "s1", "path": &format!("/api/v1/runs/{RUN}/stream")});
    socket.send(tokio_tungstenite::tungstenite::Message::Text(subscribe.to_string().into())).await.unwrap();
    let frame: Value = serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!((frame["type"].as_str(), frame["error"]["code"].as_str()), (Some("error"), Some("not_implemented")));

    let ask = pb::StreamRunRequest { run_id: RUN.into(), from_sequence: None };
    let call = request(&mesh, Wire::Binary, "/agentmesh.agent.v1.AgentService/StreamRun", &ask).bearer_auth(KEY);
    let reply = send(Wire::Binary, call).await;
    assert_eq!(reply.grpc_status(), Some("12"), "UNIMPLEMENTED over grpc-web passthrough: {reply:?}");
    assert!(runs.seen_from.lock().unwrap().is_empty(), "no stream reached the orchestrator");
}
