//! The whole mesh as one `agentmesh up` process, the REST and SSE calls the end-to-end
//! tests of agents and runs make against it, and a fake OpenAI-compatible provider for
//! llm-proxy to call, so every such test (and bench) talks to them the same way.
//!
//! The helpers are for tests: a call that cannot be made, or an answer that is not what
//! every caller needs (a created session or agent), panics with the request that failed.

use axum::routing::MethodRouter;
use reqwest::{Client, Method, Response};
use serde_json::{Value, json};

use crate::{HarnessError, Process, free_port, wait_http};

/// Alice's API key (`premium` tier).
pub const ALICE: &str = "sk-e2e-alice-0123456789abcdefghijklmnopqrstuv";
/// Bob's API key (`premium` tier).
pub const BOB: &str = "sk-e2e-bob-0123456789abcdefghijklmnopqrstuvwxy";

/// `agentmesh up` on a free loopback port, with Alice and Bob as users and rate limits far
/// above anything a test does.
pub struct Mesh {
    /// The gateway's base URL (`http://127.0.0.1:<port>`).
    pub base: String,
    /// The client every call goes through.
    pub http: Client,
    _process: Process,
}

impl Mesh {
    /// Starts the mesh with `env` added to (or overriding) the test defaults, and waits
    /// until the gateway answers its health check.
    pub async fn up(env: &[(&str, String)]) -> Result<Mesh, HarnessError> {
        let port = free_port()?;
        let mut settings = vec![
            ("SECURITY_API_KEYS", format!("{ALICE}=alice:premium,{BOB}=bob:premium")),
            ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned()),
            ("RATE_LIMIT_API_PREMIUM_LIMIT", "100000".to_owned()),
            ("RATE_LIMIT_EXECUTE_AGENT_LIMIT", "100000".to_owned()),
            ("RATE_LIMIT_CREATE_SESSION_LIMIT", "100000".to_owned()),
            ("RATE_LIMIT_LLM_REQUESTS_PER_MINUTE", "100000".to_owned()),
            ("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", "100000000".to_owned()),
        ];
        settings.extend(env.iter().cloned());
        let mut process = Process::spawn("agentmesh", &["up", "--http", &format!("127.0.0.1:{port}")], &settings)?;
        let base = format!("http://127.0.0.1:{port}");
        wait_http(&mut process, &format!("{base}/api/v1/health")).await?;
        Ok(Mesh { base, http: Client::new(), _process: process })
    }

    /// Sends `body` (JSON, if any) to `path` as the user of `key`.
    pub async fn call(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap_or_else(|error| panic!("{method} {path}: {error}"))
    }

    /// [`Mesh::call`], returning the status and the JSON body (`null` when there is none).
    pub async fn json(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let response = self.call(key, method, path, body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A new session of the user of `key`; its id.
    pub async fn session(&self, key: &str) -> String {
        let (status, session) = self.json(key, Method::POST, "/api/v1/sessions", Some(json!({"title": "e2e"}))).await;
        assert_eq!(status, 201, "{session}");
        id_of(&session)
    }

    /// A new agent of the user of `key`, created from `body`; its id.
    pub async fn agent(&self, key: &str, body: Value) -> String {
        let (status, agent) = self.json(key, Method::POST, "/api/v1/agents", Some(body)).await;
        assert_eq!(status, 201, "{agent}");
        id_of(&agent)
    }

    /// POSTs `body` to `path` (or GETs it without a body) and reads the whole SSE stream.
    pub async fn sse(&self, key: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Vec<SseEvent> {
        let method = if body.is_some() { Method::POST } else { Method::GET };
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|error| panic!("stream {path}: {error}"));
        assert_eq!(response.status(), 200, "stream {path}");
        parse_sse(&response.text().await.unwrap_or_else(|error| panic!("stream {path}: {error}")))
    }

    /// The session's messages, oldest first.
    pub async fn messages(&self, key: &str, session: &str) -> Vec<Value> {
        let (status, messages) =
            self.json(key, Method::GET, &format!("/api/v1/sessions/{session}/messages?limit=200"), None).await;
        assert_eq!(status, 200, "{messages}");
        messages.as_array().cloned().unwrap_or_default()
    }
}

fn id_of(resource: &Value) -> String {
    resource["id"].as_str().unwrap_or_else(|| panic!("no id in {resource}")).to_owned()
}

/// One server-sent event: its id, its name, its data.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `id:` field (the run's event sequence).
    pub id: Option<u64>,
    /// The `event:` field (`message` when absent).
    pub name: String,
    /// The `data:` field, as JSON.
    pub data: Value,
}

/// The events of an SSE body; blocks without `data:` (comments, keep-alives) are skipped.
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = SseEvent { id: None, name: "message".into(), data: Value::Null };
            let mut seen = false;
            for line in block.lines() {
                if let Some(id) = line.strip_prefix("id:") {
                    event.id = id.trim().parse().ok();
                } else if let Some(name) = line.strip_prefix("event:") {
                    event.name = name.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    event.data =
                        serde_json::from_str(data.trim()).unwrap_or_else(|error| panic!("SSE data {data}: {error}"));
                    seen = true;
                }
            }
            seen.then_some(event)
        })
        .collect()
}

/// The names of `events`, in order.
pub fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|event| event.name.as_str()).collect()
}

/// Serves a fake OpenAI-compatible provider on a free loopback port: `chat` answers
/// `POST /v1/chat/completions`, and `GET /v1/models` lists `models` (llm-proxy reads the
/// list once at start-up). Returns its base URL (`…/v1`), for `LLM_OPENAI_COMPATIBLE`.
pub async fn serve_fake_provider(chat: MethodRouter, models: &[&str]) -> Result<String, HarnessError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_765_000_000, "owned_by": "agentmesh-e2e"}))
        .collect();
    let listing = json!({"object": "list", "data": data});
    let app = axum::Router::new()
        .route("/v1/chat/completions", chat)
        .route("/v1/models", axum::routing::get(move || std::future::ready(axum::Json(listing))));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}
