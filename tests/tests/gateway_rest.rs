//! The seed's sessions and messages API through the real `agentmesh up` binary: every
//! endpoint with its exact status code and JSON shape, the error format, and isolation
//! between users (1,000 attempts on another user's data, all 404, nothing changed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::{Process, free_port, wait_http};
use reqwest::{Client, Method, Response};
use serde_json::{Value, json};

const ALICE: &str = "sk-e2e-alice-0123456789abcdefghijklmnopqrstuv";
const BOB: &str = "sk-e2e-bob-0123456789abcdefghijklmnopqrstuvwxy";

struct Api {
    base: String,
    http: Client,
    _process: Process,
}

impl Api {
    async fn start() -> Api {
        let port = free_port().unwrap();
        let keys = format!("{ALICE}=alice:premium,{BOB}=bob:premium");
        let mut process = Process::spawn(
            "agentmesh",
            &["up", "--http", &format!("127.0.0.1:{port}")],
            &[("SECURITY_API_KEYS", keys), ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned())],
        )
        .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_http(&mut process, &format!("{base}/api/v1/health")).await.unwrap();
        Api { base, http: Client::new(), _process: process }
    }

    async fn call(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn json(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let response = self.call(key, method, path, body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

const SESSION_KEYS: [&str; 8] =
    ["created_at", "id", "last_activity", "message_count", "metadata", "title", "updated_at", "user_id"];
const MESSAGE_KEYS: [&str; 10] = [
    "content",
    "created_at",
    "id",
    "metadata",
    "parent_message_id",
    "role",
    "session_id",
    "tool_call_id",
    "tool_calls",
    "updated_at",
];

#[tokio::test]
async fn every_session_and_message_endpoint_answers_in_the_seed_shape() {
    let api = Api::start().await;

    let (status, session) =
        api.json(ALICE, Method::POST, "/api/v1/sessions", Some(json!({"title": "Trip", "metadata": {"k": 1}}))).await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(keys(&session), SESSION_KEYS);
    assert_eq!((session["title"].clone(), session["user_id"].clone()), (json!("Trip"), json!("alice")));
    assert_eq!((session["metadata"].clone(), session["message_count"].clone()), (json!({"k": 1}), json!(0)));
    let id = session["id"].as_str().unwrap().to_owned();

    let (status, bulk) = api
        .json(ALICE, Method::POST, "/api/v1/sessions/bulk-create", Some(json!([{"title": "b1"}, {"user_id": "u9"}])))
        .await;
    assert_eq!(status, 201, "{bulk}");
    assert_eq!(bulk.as_array().unwrap().len(), 2);
    assert_eq!(bulk[1]["user_id"], "u9");

    let response =
        api.call(ALICE, Method::GET, "/api/v1/sessions?limit=2&sort_by=created_at&sort_order=asc", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-total-count"], "3");
    let link = response.headers()["link"].to_str().unwrap().to_owned();
    assert!(link.starts_with("</api/v1/sessions?page_token=") && link.ends_with(">; rel=\"next\""), "{link}");
    let page: Value = response.json().await.unwrap();
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert_eq!(page[0]["id"], id.as_str(), "oldest first");
    let (status, filtered) = api.json(ALICE, Method::GET, "/api/v1/sessions?user_id=u9", None).await;
    assert_eq!((status, filtered.as_array().unwrap().len()), (200, 1));

    let (status, got) = api.json(ALICE, Method::GET, &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!((status, got["id"].clone()), (200, json!(id)));
    let (status, updated) =
        api.json(ALICE, Method::PUT, &format!("/api/v1/sessions/{id}"), Some(json!({"title": "Trip 2"}))).await;
    assert_eq!((status, updated["title"].clone()), (200, json!("Trip 2")));
    assert_ne!(updated["updated_at"], session["updated_at"]);

    let messages = format!("/api/v1/sessions/{id}/messages");
    let (status, question) = api.json(ALICE, Method::POST, &messages, Some(json!({"content": "Where to?"}))).await;
    assert_eq!(status, 201, "{question}");
    assert_eq!(keys(&question), MESSAGE_KEYS);
    assert_eq!((question["role"].clone(), question["tool_calls"].clone()), (json!("user"), json!([])));
    let body = json!({"content": "Lisbon", "role": "assistant", "parent_message_id": question["id"], "tool_calls": [{"id": "c1", "name": "search", "arguments": "{}"}]});
    let (status, answer) = api.json(ALICE, Method::POST, &messages, Some(body)).await;
    assert_eq!((status, answer["parent_message_id"].clone()), (201, question["id"].clone()));

    let response = api.call(ALICE, Method::GET, &format!("{messages}?role=assistant&search=LISBON"), None).await;
    assert_eq!(response.headers()["x-total-count"], "1");
    let found: Value = response.json().await.unwrap();
    assert_eq!(found[0]["id"], answer["id"]);
    let ids = |listed: &Value| listed.as_array().unwrap().iter().map(|m| m["id"].clone()).collect::<Vec<_>>();
    let (status, oldest) = api.json(ALICE, Method::GET, &messages, None).await;
    assert_eq!((status, ids(&oldest)), (200, vec![question["id"].clone(), answer["id"].clone()]));
    let (status, newest) = api.json(ALICE, Method::GET, &format!("{messages}?sort_order=desc&limit=1"), None).await;
    assert_eq!((status, ids(&newest)), (200, vec![answer["id"].clone()]), "newest first");
    let message_path = format!("/api/v1/messages/{}", question["id"].as_str().unwrap());
    let (status, got) = api.json(ALICE, Method::GET, &message_path, None).await;
    assert_eq!((status, got["content"].clone()), (200, json!("Where to?")));
    let (status, edited) = api.json(ALICE, Method::PUT, &message_path, Some(json!({"content": "Where now?"}))).await;
    assert_eq!((status, edited["content"].clone(), edited["role"].clone()), (200, json!("Where now?"), json!("user")));
    assert_eq!(api.call(ALICE, Method::DELETE, &message_path, None).await.status(), 204);
    assert_eq!(api.json(ALICE, Method::GET, &message_path, None).await.0, 404);
    let (_, after) = api.json(ALICE, Method::GET, &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(after["message_count"], 1);

    let bulk_ids: Vec<Value> = bulk.as_array().unwrap().iter().map(|s| s["id"].clone()).collect();
    let response = api.call(ALICE, Method::DELETE, "/api/v1/sessions/bulk-delete", Some(Value::Array(bulk_ids))).await;
    assert_eq!(response.status(), 204);
    assert_eq!(response.text().await.unwrap(), "", "204 has no body");
    assert_eq!(api.call(ALICE, Method::DELETE, &format!("/api/v1/sessions/{id}"), None).await.status(), 204);
    let (status, error) = api.json(ALICE, Method::GET, &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!((status, error["code"].clone()), (404, json!("not_found")));
    let (_, empty) = api.json(ALICE, Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(empty, json!([]));
}

#[tokio::test]
async fn bad_input_gets_the_seed_error_format_and_changes_nothing() {
    let api = Api::start().await;
    let (status, error) = api.json(ALICE, Method::GET, "/api/v1/sessions?limit=0&sort_by=name", None).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["code"], "validation_error");
    let fields: Vec<&str> =
        error["validation_errors"].as_array().unwrap().iter().map(|v| v["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["limit", "sort_by"]);

    let (status, error) =
        api.json(ALICE, Method::POST, "/api/v1/sessions", Some(json!({"title": "x", "owner": "me"}))).await;
    assert_eq!((status, error["validation_errors"][0]["field"].clone()), (422, json!("owner")));
    let raw = api.http.post(format!("{}/api/v1/sessions", api.base)).bearer_auth(ALICE);
    let response = raw.header("content-type", "application/json").body("{not json").send().await.unwrap();
    assert_eq!(response.status(), 422);
    let raw = api.http.post(format!("{}/api/v1/sessions", api.base)).bearer_auth(ALICE);
    let response = raw.header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(response.status(), 415);
    let response = api.http.get(format!("{}/api/v1/sessions", api.base)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = api
        .http
        .get(format!("{}/api/v1/sessions", api.base))
        .bearer_auth("sk-unknown-key-unknown-key-unknown-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let (_, sessions) = api.json(ALICE, Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(sessions, json!([]), "nothing was created by refused requests");
}

fn fields(error: &Value) -> Vec<&str> {
    error["validation_errors"].as_array().unwrap().iter().map(|v| v["field"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn tool_calls_tool_results_and_parents_over_rest() {
    let api = Api::start().await;
    let (_, session) = api.json(ALICE, Method::POST, "/api/v1/sessions", Some(json!({"title": "tools"}))).await;
    let messages = format!("/api/v1/sessions/{}/messages", session["id"].as_str().unwrap());
    let calls = json!([{"id": "call_1", "name": "weather", "arguments": "{\"city\": \"Lisbon\"}"}]);
    let body = json!({"role": "assistant", "content": "", "tool_calls": calls});
    let (status, asked) = api.json(ALICE, Method::POST, &messages, Some(body)).await;
    assert_eq!(status, 201, "{asked}");
    assert_eq!(
        (asked["content"].clone(), asked["tool_calls"].clone(), asked["tool_call_id"].clone()),
        (json!(""), calls, Value::Null)
    );
    let body = json!({"role": "tool", "content": "18 °C", "tool_call_id": "call_1", "parent_message_id": asked["id"]});
    let (status, result) = api.json(ALICE, Method::POST, &messages, Some(body)).await;
    assert_eq!(
        (status, result["tool_call_id"].clone(), result["parent_message_id"].clone()),
        (201, json!("call_1"), asked["id"].clone())
    );

    let refusals = [
        (json!({"role": "assistant", "content": ""}), vec!["content"]),
        (json!({"role": "tool", "content": "r"}), vec!["tool_call_id"]),
        (json!({"content": "hi", "tool_calls": [{"id": "c", "name": "f", "arguments": "{}"}]}), vec!["tool_calls"]),
        (
            json!({"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "f", "arguments": "{oops"}]}),
            vec!["tool_calls[0].arguments"],
        ),
        (
            json!({"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{}"}]}),
            vec!["tool_calls[0].id"],
        ),
    ];
    for (body, expected) in refusals {
        let (status, error) = api.json(ALICE, Method::POST, &messages, Some(body.clone())).await;
        assert_eq!((status, fields(&error)), (422, expected), "{body}: {error}");
    }

    // PUT keeps what it is not given; "" removes the tool call id.
    let result_path = format!("/api/v1/messages/{}", result["id"].as_str().unwrap());
    let (status, kept) = api.json(ALICE, Method::PUT, &result_path, Some(json!({"metadata": {"ok": true}}))).await;
    assert_eq!((status, kept["tool_call_id"].clone(), kept["content"].clone()), (200, json!("call_1"), json!("18 °C")));
    let (status, error) = api.json(ALICE, Method::PUT, &result_path, Some(json!({"role": "user"}))).await;
    assert_eq!((status, fields(&error)), (422, vec!["tool_call_id"]));
    let (status, moved) =
        api.json(ALICE, Method::PUT, &result_path, Some(json!({"role": "user", "tool_call_id": ""}))).await;
    assert_eq!((status, moved["role"].clone(), moved["tool_call_id"].clone()), (200, json!("user"), Value::Null));
    let (_, listed) = api.json(ALICE, Method::GET, &messages, None).await;
    assert_eq!(listed[0]["tool_calls"][0]["name"], "weather");
}

#[tokio::test]
async fn nul_characters_are_refused_with_422_naming_the_field() {
    let api = Api::start().await;
    let (_, session) = api.json(ALICE, Method::POST, "/api/v1/sessions", Some(json!({"title": "ok"}))).await;
    let id = session["id"].as_str().unwrap();
    let messages = format!("/api/v1/sessions/{id}/messages");
    let cases = [
        (Method::POST, "/api/v1/sessions".to_owned(), json!({"title": "a\0b"}), "title"),
        (Method::POST, "/api/v1/sessions".to_owned(), json!({"metadata": {"k\0": 1}}), "metadata.k\\u0000"),
        (
            Method::POST,
            "/api/v1/sessions".to_owned(),
            json!({"metadata": {"k": ["x", {"v": "\0"}]}}),
            "metadata.k[1].v",
        ),
        (Method::PUT, format!("/api/v1/sessions/{id}"), json!({"title": "\0"}), "title"),
        (Method::POST, messages.clone(), json!({"content": "\0"}), "content"),
        (Method::POST, messages.clone(), json!({"content": "x", "metadata": {"\0": "v"}}), "metadata.\\u0000"),
    ];
    for (method, path, body, field) in cases {
        let (status, error) = api.json(ALICE, method, &path, Some(body.clone())).await;
        assert_eq!(
            (status, error["code"].clone(), fields(&error)),
            (422, json!("validation_error"), vec![field]),
            "{body}"
        );
    }
    let (status, error) = api.json(ALICE, Method::GET, &format!("{messages}?search=%00"), None).await;
    assert_eq!((status, fields(&error)), (422, vec!["search"]));
    let (_, sessions) = api.json(ALICE, Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(sessions.as_array().unwrap().len(), 1, "nothing was created by refused requests");
}

#[tokio::test]
async fn a_thousand_attempts_on_another_users_data_all_answer_404() {
    let api = Api::start().await;
    let (_, session) = api.json(ALICE, Method::POST, "/api/v1/sessions", Some(json!({"title": "private"}))).await;
    let sid = session["id"].as_str().unwrap().to_owned();
    let (_, message) = api
        .json(ALICE, Method::POST, &format!("/api/v1/sessions/{sid}/messages"), Some(json!({"content": "secret"})))
        .await;
    let mid = message["id"].as_str().unwrap().to_owned();

    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/sessions/{sid}"), None),
        (Method::PUT, format!("/api/v1/sessions/{sid}"), Some(json!({"title": "pwned"}))),
        (Method::DELETE, format!("/api/v1/sessions/{sid}"), None),
        (Method::GET, format!("/api/v1/sessions/{sid}/messages"), None),
        (Method::POST, format!("/api/v1/sessions/{sid}/messages"), Some(json!({"content": "injected"}))),
        (Method::GET, format!("/api/v1/messages/{mid}"), None),
        (Method::PUT, format!("/api/v1/messages/{mid}"), Some(json!({"content": "pwned"}))),
        (Method::DELETE, format!("/api/v1/messages/{mid}"), None),
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let (method, path, body) = &attempts[i % attempts.len()];
        let status = api.call(BOB, method.clone(), path, body.clone()).await.status().as_u16();
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(statuses, std::collections::BTreeMap::from([(404, 1000)]));
    let (_, bulk) = api.json(BOB, Method::DELETE, "/api/v1/sessions/bulk-delete", Some(json!([sid]))).await;
    assert_eq!(bulk, Value::Null, "bulk delete of others' ids is a silent no-op");

    let (_, still) = api.json(ALICE, Method::GET, &format!("/api/v1/sessions/{sid}"), None).await;
    assert_eq!((still["title"].clone(), still["message_count"].clone()), (json!("private"), json!(1)));
    let (_, message) = api.json(ALICE, Method::GET, &format!("/api/v1/messages/{mid}"), None).await;
    assert_eq!(message["content"], "secret");
    let (_, bobs) = api.json(BOB, Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(bobs, json!([]));
}
