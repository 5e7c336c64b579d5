//! `FEATURE_*` flags do what their names say, as a client of the gateway sees it: rate
//! limiting, WebSockets and bulk operations switched off (streaming: `streams.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Mesh;
use serde_json::{Value, json};

const KEY: &str = "sk-features-test-0123456789abcdefghijklmn";

async fn mesh(flags: &[(&str, &str)]) -> Mesh {
    let keys = format!("{KEY}=flagger");
    let mut env = vec![("SECURITY_API_KEYS", keys.as_str()), ("RATE_LIMIT_CREATE_SESSION_LIMIT", "2")];
    env.extend_from_slice(flags);
    Mesh::start(&env).await
}

/// The statuses of `n` session creations in a row.
async fn create_sessions(mesh: &Mesh, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let response =
            mesh.http.post(mesh.url("/api/v1/sessions")).bearer_auth(KEY).json(&json!({})).send().await.unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn rate_limiting_off_admits_what_the_limit_would_refuse() {
    let limited = mesh(&[]).await;
    assert_eq!(create_sessions(&limited, 3).await, [201, 201, 429]);
    let unlimited = mesh(&[("FEATURE_ENABLE_RATE_LIMITING", "false")]).await;
    assert_eq!(create_sessions(&unlimited, 4).await, [201, 201, 201, 201]);
}

#[tokio::test]
async fn websockets_off_removes_the_endpoint() {
    for (flag, expected) in [("true", 101), ("false", 404)] {
        let mesh = mesh(&[("FEATURE_ENABLE_WEBSOCKETS", flag)]).await;
        let url = format!("{}/api/v1/ws?token={KEY}", mesh.base.replacen("http", "ws", 1));
        let status = match tokio_tungstenite::connect_async(url).await {
            Ok((_, response)) => response.status().as_u16(),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(other) => panic!("unexpected WebSocket error {other}"),
        };
        assert_eq!(status, expected, "FEATURE_ENABLE_WEBSOCKETS={flag}");
    }
}

#[tokio::test]
async fn bulk_operations_off_are_refused_and_single_ones_still_work() {
    let mesh = mesh(&[("FEATURE_ENABLE_BULK_OPERATIONS", "false"), ("FEATURE_ENABLE_RATE_LIMITING", "false")]).await;
    let created = mesh.http.post(mesh.url("/api/v1/sessions")).bearer_auth(KEY).json(&json!({})).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    let bulk_create = mesh
        .http
        .post(mesh.url("/api/v1/sessions/bulk-create"))
        .bearer_auth(KEY)
        .json(&json!([{"title": "a"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(bulk_create.status(), 501);
    let body: Value = bulk_create.json().await.unwrap();
    assert_eq!(body["code"], "not_implemented", "{body}");
    assert!(body["message"].as_str().unwrap().contains("Bulk operations are disabled"), "{body}");

    let bulk_delete =
        mesh.http.delete(mesh.url("/api/v1/sessions/bulk-delete")).bearer_auth(KEY).json(&json!([id])).send().await;
    assert_eq!(bulk_delete.unwrap().status(), 501);
    let still_there = mesh.http.get(mesh.url(&format!("/api/v1/sessions/{id}"))).bearer_auth(KEY).send().await;
    assert_eq!(still_there.unwrap().status(), 200, "the refused bulk delete deleted nothing");

    let enabled = self::mesh(&[]).await;
    let bulk = enabled
        .http
        .post(enabled.url("/api/v1/sessions/bulk-create"))
        .bearer_auth(KEY)
        .json(&json!([{"title": "a"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(bulk.status(), 201, "bulk creation is on by default");
}
