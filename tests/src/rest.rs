//! The REST API of a running gateway as the end-to-end tests drive it: JSON calls with a
//! bearer key, sessions and agents to run against, and server-sent event streams parsed
//! into [`SseEvent`]s. Shared by every test that executes agents through the gateway.

use reqwest::{Client, Method, Response};
use serde_json::{Value, json};

/// A gateway's REST API at `base` (`http://host:port`).
#[derive(Debug, Clone)]
pub struct Rest {
    base: String,
    http: Client,
}

/// One server-sent event: its id, its name, its data.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `id:` field (the run's sequence).
    pub id: Option<u64>,
    /// The `event:` field (`message` when absent).
    pub name: String,
    /// The `data:` field as JSON.
    pub data: Value,
}

impl Rest {
    /// The API at `base`.
    pub fn new(base: impl Into<String>) -> Self {
        Self { base: base.into(), http: Client::new() }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` with `key` as bearer and `body` as JSON.
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn call(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    /// [`Rest::call`], returning the status and the JSON body (`null` when not JSON).
    pub async fn json(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let response = self.call(key, method, path, body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates a session of `key`'s user and returns its id.
    ///
    /// # Panics
    /// When the gateway does not create it.
    pub async fn session(&self, key: &str) -> String {
        let (status, session) = self.json(key, Method::POST, "/api/v1/sessions", Some(json!({"title": "e2e"}))).await;
        assert_eq!(status, 201, "{session}");
        id_of(&session)
    }

    /// Creates the agent `body` for `key`'s user and returns its id.
    ///
    /// # Panics
    /// When the gateway does not create it.
    pub async fn agent(&self, key: &str, body: Value) -> String {
        let (status, agent) = self.json(key, Method::POST, "/api/v1/agents", Some(body)).await;
        assert_eq!(status, 201, "{agent}");
        id_of(&agent)
    }

    /// POSTs `body` to `path` (or GETs it without a body) with `headers` and reads the
    /// whole SSE stream.
    ///
    /// # Panics
    /// When the stream is not answered with 200 or breaks.
    pub async fn sse(&self, key: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Vec<SseEvent> {
        let method = if body.is_some() { Method::POST } else { Method::GET };
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|error| panic!("{path}: {error}"));
        assert_eq!(response.status(), 200, "{path}");
        parse_sse(&response.text().await.unwrap_or_else(|error| panic!("{path}: {error}")))
    }

    /// The session's messages, oldest first.
    ///
    /// # Panics
    /// When the gateway does not list them.
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

/// The complete events of an SSE body (a trailing partial event is left out).
///
/// # Panics
/// When an event's data is not JSON.
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    let complete = body.rfind("\n\n").map_or("", |end| &body[..end]);
    complete
        .split("\n\n")
        .filter_map(|block| {
            let mut event = SseEvent { id: None, name: "message".into(), data: Value::Null };
            let mut seen = false;
            for line in block.lines() {
                if let Some(id) = line.strip_prefix("id:") {
                    event.id = id.trim().parse().ok();
                } else if let Some(name) = line.strip_prefix("event:") {
                    event.name = name.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    event.data = serde_json::from_str(data.trim()).unwrap_or_else(|error| panic!("{data}: {error}"));
                    seen = true;
                }
            }
            seen.then_some(event)
        })
        .collect()
}

/// The events' names, in order.
pub fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|event| event.name.as_str()).collect()
}
