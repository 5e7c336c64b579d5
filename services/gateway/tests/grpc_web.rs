//! grpc-web as a browser sends it (HTTP/1.1, hand-framed, binary and base64 `-text`; see
//! `common::grpc_web`): to passthrough RPCs, to the gateway's own services, and behind
//! CORS. Server streaming over grpc-web is in `streams.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agentmesh_proto::agentmesh::health::v1::{CheckLivenessRequest, CheckLivenessResponse};
use agentmesh_proto::agentmesh::session::v1::{
    CreateSessionRequest, CreateSessionResponse, GetSessionRequest, GetSessionResponse,
};
use common::Mesh;
use common::grpc_web::{Reply, Wire, request, send};
use prost::Message;

const KEY: &str = "sk-grpcweb-0123456789abcdefghijklmnopqrstu";
const ORIGIN: &str = "https://app.example.com";
const CREATE_SESSION: &str = "/agentmesh.session.v1.SessionService/CreateSession";
const GET_SESSION: &str = "/agentmesh.session.v1.SessionService/GetSession";

async fn mesh() -> Mesh {
    let keys = format!("{KEY}=web-user:premium");
    Mesh::start(&[("SECURITY_API_KEYS", keys.as_str()), ("SECURITY_CORS_ORIGINS", ORIGIN)]).await
}

/// Calls `path` with `message` over grpc-web from the allowed origin, as `key` (or anonymously).
async fn call(mesh: &Mesh, wire: Wire, path: &str, message: &impl Message, key: Option<&str>) -> Reply {
    let mut call = request(mesh, wire, path, message).header("origin", ORIGIN);
    if let Some(key) = key {
        call = call.bearer_auth(key);
    }
    send(wire, call).await
}

#[tokio::test]
async fn passthrough_calls_work_over_binary_and_text_grpc_web() {
    let mesh = mesh().await;
    let create = CreateSessionRequest { title: Some("via grpc-web".into()), ..Default::default() };
    let created = call(&mesh, Wire::Binary, CREATE_SESSION, &create, Some(KEY)).await;
    assert!(created.trailers.is_some(), "a successful call ends with a trailers frame");
    assert_eq!(created.grpc_status(), Some("0"), "{:?}", created.trailers);
    let session = created.message::<CreateSessionResponse>().session.unwrap();
    assert_eq!(session.title.as_deref(), Some("via grpc-web"));
    assert_eq!(session.user_id.as_deref(), Some("web-user"), "the caller's identity reached the service");
    // Rate-limit metadata (create session: 10 per minute) and CORS on the answer.
    assert_eq!(created.headers["x-ratelimit-limit"], "10");
    assert_eq!(created.headers["x-ratelimit-remaining"], "9");
    assert_eq!(created.headers["access-control-allow-origin"], ORIGIN);
    let exposed = created.headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("grpc-status") && exposed.contains("grpc-message"), "{exposed}");

    let get = GetSessionRequest { session_id: session.id.clone() };
    let got = call(&mesh, Wire::Text, GET_SESSION, &get, Some(KEY)).await;
    assert_eq!(got.headers["content-type"], "application/grpc-web-text+proto");
    assert_eq!(got.grpc_status(), Some("0"), "{:?}", got.trailers);
    let fetched = got.message::<GetSessionResponse>().session.unwrap();
    assert_eq!((fetched.id, fetched.title), (session.id.clone(), session.title));

    // The same session over REST: one store behind both.
    let rest = mesh.http.get(mesh.url(&format!("/api/v1/sessions/{}", session.id))).bearer_auth(KEY).send().await;
    assert_eq!(rest.unwrap().status(), 200);
}

#[tokio::test]
async fn unauthenticated_grpc_web_calls_are_refused() {
    let mesh = mesh().await;
    let get = GetSessionRequest { session_id: "0b7f3c52-9c47-4c1e-9a43-5d8f1d6f0a11".into() };
    for wire in [Wire::Binary, Wire::Text] {
        let anonymous = call(&mesh, wire, GET_SESSION, &get, None).await;
        assert_eq!(anonymous.grpc_status(), Some("16"), "UNAUTHENTICATED");
        assert!(anonymous.messages.is_empty());
        let unknown = call(&mesh, wire, GET_SESSION, &get, Some("sk-unknown-0123456789abcdefghijklmnopqrstu")).await;
        assert_eq!(unknown.grpc_status(), Some("16"), "refused by the server layer before routing");
    }
}

#[tokio::test]
async fn the_gateways_own_services_answer_grpc_web() {
    let mesh = mesh().await;
    for wire in [Wire::Binary, Wire::Text] {
        let reply =
            call(&mesh, wire, "/agentmesh.health.v1.HealthService/CheckLiveness", &CheckLivenessRequest {}, None).await;
        assert_eq!(reply.grpc_status(), Some("0"), "{:?}", reply.trailers);
        let liveness = reply.message::<CheckLivenessResponse>();
        assert_eq!((liveness.status.as_str(), liveness.version.is_empty()), ("ok", false));
    }
    let check = tonic_health::pb::HealthCheckRequest { service: String::new() };
    let reply = call(&mesh, Wire::Binary, "/grpc.health.v1.Health/Check", &check, None).await;
    assert_eq!(reply.grpc_status(), Some("0"));
    let answer = reply.message::<tonic_health::pb::HealthCheckResponse>();
    assert_eq!(answer.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn browsers_may_preflight_grpc_web_from_allowed_origins_only() {
    let mesh = mesh().await;
    let requested = "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,x-api-key";
    let preflight = |origin: &'static str| {
        mesh.http
            .request(reqwest::Method::OPTIONS, mesh.url(CREATE_SESSION))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", requested)
            .send()
    };
    let allowed = preflight(ORIGIN).await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let allowed_headers = headers["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    for name in requested.split(',') {
        assert!(allowed_headers.split(',').any(|h| h.trim() == name), "{name} not in {allowed_headers}");
    }

    let stranger = preflight("https://evil.example.com").await.unwrap();
    assert!(stranger.headers().get("access-control-allow-origin").is_none());

    // The gateway's own gRPC services are covered too, not only the REST fallback.
    let own = mesh
        .http
        .request(reqwest::Method::OPTIONS, mesh.url("/agentmesh.health.v1.HealthService/CheckLiveness"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-grpc-web,content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(own.headers()["access-control-allow-origin"], ORIGIN);
}
