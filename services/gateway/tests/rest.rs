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
