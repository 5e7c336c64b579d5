//! The part of the gateway's REST API `agentmesh chat` (and `agentmesh up`'s first-run
//! setup) uses: tools, agents, sessions, a streamed execute, and cancel, approve and reject
//! of a run. Every failure becomes one readable line ([`ApiError`]); an error body in the
//! seed's format is shown by its message and code ([`describe_error_body`]).

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use super::events::RunEvent;

/// The agent `agentmesh chat` creates, and keeps up to date, when none is named.
pub const DEFAULT_AGENT: &str = "assistant";

/// A call to the gateway that failed, as one line.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nothing answers at the URL.
    #[error("cannot reach the gateway at {url}: start it with `agentmesh up`, or pass --url")]
    Unreachable {
        /// The gateway's URL.
        url: String,
    },
    /// The gateway answered with an error (its message and code).
    #[error("{0}")]
    Refused(String),
    /// The answer could not be read.
    #[error("unexpected answer from the gateway: {0}")]
    Protocol(String),
    /// No agent has the name given.
    #[error("no agent is named {0:?}: give its name or id as --agent, or leave --agent out for the default agent")]
    NoSuchAgent(String),
}

/// An agent: what the chat needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Its id (UUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The model it names; `None` means the deployment's default model.
    pub model: Option<String>,
    /// The tools it may call.
    pub tools: Vec<String>,
}

/// A run's events as they arrive.
pub type RunEvents = Pin<Box<dyn Stream<Item = Result<RunEvent, ApiError>> + Send>>;

/// The gateway at a URL, called with an API key.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// The bearer credential of every call.
    key: String,
    /// One connection pool for every call.
    http: Client,
}

impl Api {
    /// The gateway at `base`, called with `key`.
    pub fn new(base: &str, key: &str) -> Api {
        Api { base: base.trim_end_matches('/').to_owned(), key: key.to_owned(), http: Client::new() }
    }

    /// The gateway's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The names of the enabled tools (the first hundred, as an agent takes at most that).
    pub async fn tool_names(&self) -> Result<Vec<String>, ApiError> {
        let tools = self.call(Method::GET, "/api/v1/tools?enabled=true&limit=100", None).await?;
        Ok(items(&tools).iter().filter_map(|tool| tool["name"].as_str().map(str::to_owned)).collect())
    }

    /// The agent with id or name `name_or_id`.
    pub async fn agent(&self, name_or_id: &str) -> Result<Agent, ApiError> {
        if uuid::Uuid::try_parse(name_or_id).is_ok() {
            return agent_of(&self.call(Method::GET, &format!("/api/v1/agents/{name_or_id}"), None).await?);
        }
        self.agent_named(name_or_id).await?.ok_or_else(|| ApiError::NoSuchAgent(name_or_id.to_owned()))
    }

    async fn agent_named(&self, name: &str) -> Result<Option<Agent>, ApiError> {
        let path = format!("/api/v1/agents?limit=100&search={}", query_value(name));
        let agents = self.call(Method::GET, &path, None).await?;
        items(&agents).iter().find(|agent| agent["name"] == name).map(agent_of).transpose()
    }

    /// The [`DEFAULT_AGENT`], created when missing, with every enabled tool: it runs on the
    /// deployment's default model.
    pub async fn default_agent(&self) -> Result<Agent, ApiError> {
        let tools = self.tool_names().await?;
        let body = json!({
            "name": DEFAULT_AGENT,
            "description": "The default agent of `agentmesh chat`: the configured model and every enabled tool.",
            "system_prompt": "You are a helpful assistant. Use the tools you have when they help.",
            "tools": tools,
        });
        match self.agent_named(DEFAULT_AGENT).await? {
            Some(agent) if agent.tools == tools => Ok(agent),
            Some(agent) => {
                agent_of(&self.call(Method::PUT, &format!("/api/v1/agents/{}", agent.id), Some(body)).await?)
            }
            None => agent_of(&self.call(Method::POST, "/api/v1/agents", Some(body)).await?),
        }
    }

    /// A new session titled `title`; its id.
    pub async fn create_session(&self, title: &str) -> Result<String, ApiError> {
        let session = self.call(Method::POST, "/api/v1/sessions", Some(json!({"title": title}))).await?;
        id_of(&session)
    }

    /// Executes `agent` on `message` in `session`, streaming the run's events.
    pub async fn execute_stream(&self, agent: &str, session: &str, message: &str) -> Result<RunEvents, ApiError> {
        let body = json!({"session_id": session, "message": message});
        let response = self
            .request(Method::POST, &format!("/api/v1/agents/{agent}/execute/stream"), Some(body))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|error| self.transport(&error))?;
        let response = self.check(response).await?;
        use eventsource_stream::Eventsource as _;
        let events = response.bytes_stream().eventsource().map(|event| match event {
            Ok(event) => Ok(RunEvent::parse(&event.event, &event.data)),
            Err(error) => Err(ApiError::Protocol(format!("the stream broke: {error}"))),
        });
        Ok(Box::pin(events))
    }

    /// Cancels the run; returns once it has stopped.
    pub async fn cancel(&self, run: &str) -> Result<(), ApiError> {
        let reason = json!({"reason": "cancelled in agentmesh chat"});
        self.call(Method::POST, &format!("/api/v1/runs/{run}/cancel"), Some(reason)).await.map(drop)
    }

    /// Approves (`true`) or rejects the run's pending tool calls.
    pub async fn decide(&self, run: &str, approve: bool) -> Result<(), ApiError> {
        let decision = if approve { "approve" } else { "reject" };
        self.call(Method::POST, &format!("/api/v1/runs/{run}/{decision}"), Some(json!({}))).await.map(drop)
    }

    /// Sends `method path` with `body` as JSON; the answer's JSON (`null` when empty).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ApiError> {
        let response = self.request(method, path, body).send().await.map_err(|error| self.transport(&error))?;
        let response = self.check(response).await?;
        let bytes = response.bytes().await.map_err(|error| self.transport(&error))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|error| ApiError::Protocol(format!("{path}: {error}")))
    }

    fn request(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        match body {
            Some(body) => request.json(&body),
            None => request,
        }
    }

    /// `response` when it is a success, else its error body as an [`ApiError::Refused`].
    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, ApiError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Err(ApiError::Refused(describe_error(status, &body)))
    }

    fn transport(&self, error: &reqwest::Error) -> ApiError {
        if error.is_connect() {
            ApiError::Unreachable { url: self.base.clone() }
        } else {
            ApiError::Protocol(error.to_string())
        }
    }
}

/// An error answer as one line: the body's message and code, or the HTTP status when the
/// body is not in the seed's error format.
pub fn describe_error(status: StatusCode, body: &Value) -> String {
    if body["message"].is_string() { describe_error_body(body) } else { format!("the gateway answered {status}") }
}

/// An error body in the seed's format (`{"error": true, "code", "message",
/// "validation_errors"?}`) as one line: `message (code)`, each failed field after the
/// message.
pub fn describe_error_body(body: &Value) -> String {
    let mut line = body["message"].as_str().unwrap_or("error").to_owned();
    let fields: Vec<String> = items(&body["validation_errors"])
        .iter()
        .map(|violation| {
            let field = violation["field"].as_str().unwrap_or_default();
            let message = violation["message"].as_str().unwrap_or_default();
            if field.is_empty() { message.to_owned() } else { format!("{field}: {message}") }
        })
        // The message often names the failures already.
        .filter(|failure| !line.contains(failure.as_str()))
        .collect();
    if !fields.is_empty() {
        line = format!("{line}: {}", fields.join("; "));
    }
    match body["code"].as_str() {
        Some(code) => format!("{line} ({code})"),
        None => line,
    }
}

fn items(list: &Value) -> &[Value] {
    list.as_array().map_or(&[], Vec::as_slice)
}

fn id_of(resource: &Value) -> Result<String, ApiError> {
    resource["id"].as_str().map(str::to_owned).ok_or_else(|| ApiError::Protocol(format!("no id in {resource}")))
}

fn agent_of(agent: &Value) -> Result<Agent, ApiError> {
    Ok(Agent {
        id: id_of(agent)?,
        name: agent["name"].as_str().unwrap_or_default().to_owned(),
        model: agent["model_config"]["model"].as_str().filter(|m| !m.is_empty()).map(str::to_owned),
        tools: items(&agent["tools"]).iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
    })
}

/// `value` percent-encoded for a query string.
fn query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_one_line() {
        let not_found = json!({"error": true, "code": "not_found", "message": "agent not found", "path": "/x"});
        assert_eq!(describe_error(StatusCode::NOT_FOUND, &not_found), "agent not found (not_found)");
        let invalid = json!({
            "error": true, "code": "validation_error", "message": "Validation failed",
            "validation_errors": [{"field": "message", "message": "must not be empty", "value": ""}],
        });
        assert_eq!(
            describe_error(StatusCode::UNPROCESSABLE_ENTITY, &invalid),
            "Validation failed: message: must not be empty (validation_error)"
        );
        let named = json!({
            "code": "validation_error", "message": "Validation failed: limit: must be at least 1",
            "validation_errors": [{"field": "limit", "message": "must be at least 1"}],
        });
        assert_eq!(
            describe_error(StatusCode::UNPROCESSABLE_ENTITY, &named),
            "Validation failed: limit: must be at least 1 (validation_error)"
        );
        assert_eq!(describe_error(StatusCode::BAD_GATEWAY, &Value::Null), "the gateway answered 502 Bad Gateway");
    }

    #[test]
    fn agents_read_their_model_and_tools() {
        let agent = json!({"id": "a1", "name": "adder", "tools": ["get-sum"], "model_config": {"model": ""}});
        assert_eq!(
            agent_of(&agent).unwrap(),
            Agent { id: "a1".into(), name: "adder".into(), model: None, tools: vec!["get-sum".into()] }
        );
        assert!(agent_of(&json!({"name": "no id"})).is_err());
    }

    #[test]
    fn names_are_encoded_in_queries() {
        assert_eq!(query_value("my agent/ü"), "my%20agent%2F%C3%BC");
        assert_eq!(Api::new("http://127.0.0.1:8080/", "k").base(), "http://127.0.0.1:8080");
    }
}
