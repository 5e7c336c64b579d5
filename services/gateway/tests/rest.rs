//! The REST surface as a client sees it: routing errors, authentication, health.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Mesh;
use serde_json::Value;

async fn json(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn assert_error_shape(body: &Value, code: &str, path: &str) {
    assert_eq!(body["error"], true, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["path"], path, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["correlation_id"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok(), "{body}");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_seed_format() {
    let mesh = Mesh::start(&[]).await;
    let (status, headers, body) = json(mesh.http.get(mesh.url("/api/v1/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_error_shape(&body, "not_found", "/api/v1/nope");
    assert_eq!(headers["x-correlation-id"], body["correlation_id"].as_str().unwrap());

    let (status, headers, body) = json(mesh.http.patch(mesh.url("/api/v1/sessions")).send().await.unwrap()).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, POST");
    assert_error_shape(&body, "method_not_allowed", "/api/v1/sessions");
}

#[tokio::test]
async fn the_correlation_id_of_the_caller_is_kept() {
    let mesh = Mesh::start(&[]).await;
    let response =
        mesh.http.get(mesh.url("/api/v1/sessions")).header("X-Correlation-ID", "trace-me-42").send().await.unwrap();
    let (status, headers, body) = json(response).await;
    assert_eq!(status, 401);
    assert_eq!(headers["x-correlation-id"], "trace-me-42");
    assert_eq!(body["correlation_id"], "trace-me-42");
    assert_error_shape(&body, "authentication_error", "/api/v1/sessions");
}

#[tokio::test]
async fn liveness_is_open_and_service_health_lists_every_dependency() {
    let mesh = Mesh::start(&[]).await;
    let (status, _, body) = json(mesh.http.get(mesh.url("/api/v1/health")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert!(body["timestamp"].as_str().is_some());

    let (status, _, body) = json(mesh.http.get(mesh.url("/api/v1/health/services")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let services = body.as_array().unwrap();
    let names: Vec<&str> = services.iter().map(|s| s["service_name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["session-store", "agent-orchestrator", "llm-proxy", "mcp-broker", "secrets-broker", "event-bus"]
    );
    let store = &services[0];
    assert_eq!(store["status"], "healthy", "{store}");
    assert_eq!(store["circuit_breaker_state"], "closed");
    assert!(store["success_count"].as_i64().unwrap() >= 1);
    assert_eq!(services[1]["status"], "unhealthy", "nothing listens for the orchestrator here");
    assert_eq!(services[5]["service_type"], "message_queue");

    let (status, headers, body) = json(mesh.http.get(mesh.url("/api/v1/health/ready")).send().await.unwrap()).await;
    assert_eq!(status, 503, "{body}");
    assert_error_shape(&body, "external_service_error", "/api/v1/health/ready");
    assert!(body["details"]["failing"]["agent-orchestrator"].is_string(), "{body}");
    assert!(body["details"]["failing"].get("session-store").is_none(), "{body}");
    assert_eq!(headers["retry-after"], "5");
}

#[tokio::test]
async fn browsers_get_cors_for_allowed_origins_and_defensive_headers() {
    let mesh = Mesh::start(&[("SECURITY_CORS_ORIGINS", "https://app.example.com")]).await;
    let preflight = mesh
        .http
        .request(reqwest::Method::OPTIONS, mesh.url("/api/v1/sessions"))
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://app.example.com");
    let stranger =
        mesh.http.get(mesh.url("/api/v1/health")).header("Origin", "https://evil.example.com").send().await.unwrap();
    assert!(stranger.headers().get("access-control-allow-origin").is_none());
    assert_eq!(stranger.headers()["x-content-type-options"], "nosniff");
    assert_eq!(stranger.headers()["x-frame-options"], "DENY");
    let allowed =
        mesh.http.get(mesh.url("/api/v1/health")).header("Origin", "https://app.example.com").send().await.unwrap();
    let exposed = allowed.headers()["access-control-expose-headers"].to_str().unwrap().to_owned();
    assert!(exposed.contains("x-total-count") && exposed.contains("x-correlation-id"), "{exposed}");
}

#[tokio::test]
async fn oversized_bodies_and_unreachable_services_answer_in_the_seed_format() {
    let key = "sk-limits-0123456789abcdefghijklmnopqrstu";
    let keys = format!("{key}=limits:premium");
    let mesh = Mesh::start(&[("SECURITY_API_KEYS", keys.as_str())]).await;
    let huge = serde_json::json!({"title": "x", "metadata": {"blob": "y".repeat(2 * 1024 * 1024)}});
    let response = mesh.http.post(mesh.url("/api/v1/sessions")).bearer_auth(key).json(&huge).send().await.unwrap();
    let (status, _, body) = json(response).await;
    assert_eq!(status, 413);
    assert_error_shape(&body, "payload_too_large", "/api/v1/sessions");

    let response = mesh.http.get(mesh.url("/api/v1/agents")).bearer_auth(key).send().await.unwrap();
    let (status, headers, body) = json(response).await;
    assert_eq!(status, 503, "nothing listens for the orchestrator: {body}");
    assert_error_shape(&body, "external_service_error", "/api/v1/agents");
    assert_eq!(body["details"]["service_name"], "agent-orchestrator");
    assert_eq!(headers["retry-after"], "1");
    assert!(headers.contains_key("x-ratelimit-remaining"));
}

/// Anonymous callers behind one proxy (every request comes from the same socket peer):
/// with `SECURITY_TRUSTED_PROXY_HOPS=1` each client the proxy names in `X-Forwarded-For`
/// has its own bucket and entries a client forged to the left are ignored; with the
/// default, the header is not believed and all of them share the peer's bucket.
#[tokio::test]
async fn clients_behind_a_trusted_proxy_get_their_own_rate_limit_buckets() {
    async fn statuses(mesh: &Mesh, forwarded_for: &str, count: usize) -> Vec<u16> {
        let mut statuses = Vec::new();
        for _ in 0..count {
            let request = mesh.http.get(mesh.url("/api/v1/health")).header("x-forwarded-for", forwarded_for);
            statuses.push(request.send().await.unwrap().status().as_u16());
        }
        statuses
    }
    let limit = ("RATE_LIMIT_API_DEFAULT_LIMIT", "2");

    let trusted = Mesh::start(&[limit, ("SECURITY_TRUSTED_PROXY_HOPS", "1")]).await;
    assert_eq!(statuses(&trusted, "203.0.113.1", 3).await, [200, 200, 429]);
    assert_eq!(statuses(&trusted, "203.0.113.2", 3).await, [200, 200, 429], "a second client, its own bucket");
    assert_eq!(statuses(&trusted, "198.51.100.9, 203.0.113.1", 1).await, [429], "a forged entry changes nothing");
    assert_eq!(statuses(&trusted, "2001:db8::3", 2).await, [200, 200]);

    let untrusted = Mesh::start(&[limit]).await;
    assert_eq!(statuses(&untrusted, "203.0.113.1", 2).await, [200, 200]);
    assert_eq!(statuses(&untrusted, "203.0.113.2", 1).await, [429], "one bucket: the peer's");
}

#[tokio::test]
async fn native_grpc_reaches_public_rpcs_through_the_gateway_with_the_callers_identity() {
    use agentmesh_proto::agentmesh::llm::v1::ChatRequest;
    use agentmesh_proto::agentmesh::llm::v1::llm_service_client::LlmServiceClient;
    use agentmesh_proto::agentmesh::session::v1::GetSessionRequest;
    use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;

    let key = "sk-grpc-0123456789abcdefghijklmnopqrstuvw";
    let keys = format!("{key}=grpc-user:premium");
    let mesh = Mesh::start(&[("SECURITY_API_KEYS", keys.as_str())]).await;
    let created = mesh
        .http
        .post(mesh.url("/api/v1/sessions"))
        .bearer_auth(key)
        .json(&serde_json::json!({"title": "via rest"}))
        .send()
        .await
        .unwrap();
    let (status, _, session) = json(created).await;
    assert_eq!(status, 201);
    let id = session["id"].as_str().unwrap().to_owned();

    let channel = tonic::transport::Channel::from_shared(mesh.base.clone()).unwrap().connect().await.unwrap();
    let mut sessions = SessionServiceClient::new(channel.clone());
    let mut request = tonic::Request::new(GetSessionRequest { session_id: id.clone() });
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    let got = sessions.get_session(request).await.unwrap().into_inner().session.unwrap();
    assert_eq!((got.id.as_str(), got.title.as_deref()), (id.as_str(), Some("via rest")));

    let anonymous = sessions.get_session(GetSessionRequest { session_id: id.clone() }).await.unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let mut forged = tonic::Request::new(GetSessionRequest { session_id: id });
    forged.metadata_mut().insert("x-agentmesh-principal", "forged.principal".parse().unwrap());
    assert_eq!(sessions.get_session(forged).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    let mut internal = tonic::Request::new(ChatRequest::default());
    internal.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    let refused = LlmServiceClient::new(channel).chat(internal).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "internal RPCs are not exposed: {refused:?}");
}

#[tokio::test]
async fn rest_requests_are_counted_by_route_template_and_status() {
    // The process-wide recorder, installed as a service binary installs it at start-up.
    agentmesh_runtime::telemetry::prometheus_handle();
    let mesh = Mesh::start(&[]).await;
    let id = "0b7f3c52-9c47-4c1e-9a43-5d8f1d6f0a11";
    let response = mesh.http.get(mesh.url(&format!("/api/v1/sessions/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 401);
    mesh.http.get(mesh.url("/api/v1/nope")).send().await.unwrap();
    let metrics = mesh.http.get(mesh.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for series in [
        r#"agentmesh_http_requests_total{method="GET",route="/api/v1/sessions/{session_id}",status="401"}"#,
        r#"agentmesh_http_requests_total{method="GET",route="unmatched",status="404"}"#,
        r#"agentmesh_http_request_duration_seconds_count{method="GET",route="/api/v1/sessions/{session_id}"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from:\n{metrics}");
    }
    assert!(!metrics.contains(id), "ids never become label values");
}
