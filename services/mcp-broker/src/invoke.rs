//! `InvokeTool`: finds the tool, checks that it and its server may be used, validates the
//! arguments against the tool's input schema (a violation is a 422 naming the field, and
//! nothing reaches the server), then calls it on the server's session under the server's
//! resilience (retries only for transient failures, one breaker per server), cuts a result
//! larger than `MCP_MAX_RESULT_BYTES`, and reports the call as `agentmesh.tool.invoked`
//! (names and outcome only: argument values never leave this module). Each tool's schema
//! is compiled once and kept ([`Validators`]): compiling it cost more than the rest of the
//! broker's own work per call (docs/benchmarks.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentmesh_proto::agentmesh::common::v1::content_part;
use agentmesh_proto::agentmesh::mcp::v1 as pb;
use agentmesh_resilience::{Outcome, ResilienceError};
use agentmesh_runtime::auth::Principal;
use agentmesh_runtime::error::FieldViolation;
use agentmesh_runtime::request::{invalid, refuse_violations};
use agentmesh_runtime::{ApiError, RequestContext};
use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use prost::Message;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::connection::{Connection, ConnectionError, ErrorKind, ToolResult};
use crate::convert::{object_to_struct, struct_to_object};
use crate::events::{self, EventSink, Invocation};
use crate::sessions::{SessionError, Sessions};
use crate::store::{McpServerRecord, McpStore, StoreError, ToolRecord};

/// What an invocation needs from the service.
pub struct Invoker<'a> {
    /// The registry.
    pub store: &'a dyn McpStore,
    /// The sessions.
    pub sessions: &'a Sessions,
    /// Where `agentmesh.tool.invoked` goes.
    pub events: &'a Arc<dyn EventSink>,
    /// The tools' compiled input schemas.
    pub validators: &'a Validators,
}

/// How many tools' compiled schemas are kept; past it the cache starts again empty (a
/// catalogue that large is rare, and each schema is compiled again on its next call).
const MAX_VALIDATORS: usize = 4096;

/// The compiled input schema of each tool called so far, reused while the tool's schema
/// stays the same (a changed schema is compiled again on the next call).
#[derive(Default)]
pub struct Validators {
    compiled: Mutex<HashMap<Uuid, Compiled>>,
}

/// One tool's schema and what it compiled to (`None`: it does not compile).
struct Compiled {
    schema: Map<String, Value>,
    validator: Option<Arc<Validator>>,
}

impl Validators {
    /// The validator of `tool`'s input schema, compiled now unless it was for this schema;
    /// `None` when the schema does not compile.
    fn for_tool(&self, tool: &ToolRecord) -> Option<Arc<Validator>> {
        if let Some(compiled) = self.lock().get(&tool.id).filter(|compiled| compiled.schema == tool.schema) {
            return compiled.validator.clone();
        }
        let validator = match jsonschema::validator_for(&Value::Object(tool.schema.clone())) {
            Ok(validator) => Some(Arc::new(validator)),
            Err(error) => {
                // A schema the validator cannot compile is the server's business: let it judge.
                tracing::warn!(tool = %tool.name, %error, "tool input schema does not compile; arguments not checked");
                None
            }
        };
        let mut compiled = self.lock();
        if compiled.len() >= MAX_VALIDATORS && !compiled.contains_key(&tool.id) {
            compiled.clear();
        }
        compiled.insert(tool.id, Compiled { schema: tool.schema.clone(), validator: validator.clone() });
        validator
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Compiled>> {
        // The map is whole after any panic: an entry is inserted in one step.
        self.compiled.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Invoker<'_> {
    /// Runs `request` for `principal`.
    pub async fn invoke(
        &self,
        principal: &Principal,
        request: pb::InvokeToolRequest,
    ) -> Result<pb::InvokeToolResponse, ApiError> {
        let (tool, field) = self.tool(request.tool.as_ref()).await?;
        if !tool.enabled {
            return Err(invalid(field, "the tool is disabled", Value::Null));
        }
        let Some(server_id) = tool.mcp_server_id else {
            return Err(invalid(field, "the tool has no MCP server to run it", Value::Null));
        };
        let server = self.store.get_server(server_id).await.map_err(store_error)?;
        if !server.config.enabled {
            return Err(invalid(field, "the tool's MCP server is disabled", Value::Null));
        }
        let arguments = request.arguments.as_ref().map(struct_to_object).unwrap_or_default();
        if let Some(validator) = self.validators.for_tool(&tool) {
            check_arguments(&validator, &arguments)?;
        }
        let settings = self.sessions.settings();
        let mut timeout = request
            .timeout_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or(settings.default_call_timeout, Duration::from_millis);
        let context = RequestContext::current();
        if let Some(deadline) = context.as_ref().and_then(|context| context.deadline) {
            timeout = timeout.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        }
        let run_id = request.run_id.clone().or_else(|| context.as_ref().and_then(|context| context.run.clone()));

        let started = Instant::now();
        let result = self.call(&server, &tool, principal, arguments, timeout).await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let outcome = match &result {
            Ok(result) if result.is_error => "tool_error".to_owned(),
            Ok(_) => "ok".to_owned(),
            Err(error) => error.code.as_str().to_owned(),
        };
        let invocation = Invocation {
            tool: &tool,
            session_id: request.session_id.clone(),
            run_id,
            user_id: &principal.user_id,
            duration_ms,
            outcome: &outcome,
            error: result.as_ref().err().map(|error| error.message.clone()),
        };
        self.events.emit(vec![events::tool_invoked(&invocation)]).await;
        let result = result?;
        Ok(response(result, duration_ms, settings.max_result_bytes))
    }

    /// The tool the request names, and the name of the field that named it.
    async fn tool(
        &self,
        which: Option<&pb::invoke_tool_request::Tool>,
    ) -> Result<(ToolRecord, &'static str), ApiError> {
        use pb::invoke_tool_request::Tool;
        match which {
            Some(Tool::ToolId(raw)) => {
                let id = uuid::Uuid::try_parse(raw).map_err(|_| invalid("tool_id", "must be a UUID", Value::Null))?;
                Ok((self.store.get_tool(id).await.map_err(store_error)?, "tool_id"))
            }
            Some(Tool::ToolName(name)) => {
                Ok((self.store.get_tool_by_name(name).await.map_err(store_error)?, "tool_name"))
            }
            None => Err(invalid("tool_id", "tool_id or tool_name is required", Value::Null)),
        }
    }

    /// The call under the server's resilience, on its session.
    async fn call(
        &self,
        server: &McpServerRecord,
        tool: &ToolRecord,
        principal: &Principal,
        arguments: Map<String, Value>,
        timeout: Duration,
    ) -> Result<ToolResult, ApiError> {
        let resilience = self.sessions.resilience(server);
        let remote_name = tool.remote_name.as_deref().unwrap_or(&tool.name);
        let user_id = principal.user_id.as_str();
        let attempt = || self.attempt(server, user_id, remote_name, arguments.clone(), timeout);
        match resilience.call(&classify, attempt).await {
            Ok(result) => Ok(result),
            Err(ResilienceError::Inner(error)) => Err(session_error(&server.config.name, error)),
            Err(ResilienceError::CircuitOpen { retry_after, .. }) => {
                Err(ApiError::circuit_open(&server.config.name, retry_after))
            }
            Err(ResilienceError::Timeout { after }) => Err(ApiError::timeout("tool call", after)),
            Err(ResilienceError::BulkheadFull { .. }) => {
                Err(ApiError::external_service(&server.config.name, "mcp", true)
                    .with_detail("reason", "too many calls in flight to this MCP server"))
            }
        }
    }

    /// One attempt: the session (opened if needed), then the call; a failure that closes
    /// the session drops it so that the next attempt opens a new one.
    async fn attempt(
        &self,
        server: &McpServerRecord,
        user_id: &str,
        remote_name: &str,
        arguments: Map<String, Value>,
        timeout: Duration,
    ) -> Result<ToolResult, SessionError> {
        let connection: Arc<Connection> = self.sessions.connection(server, user_id).await?;
        match connection.call_tool(remote_name, arguments, timeout).await {
            Ok(result) => Ok(result),
            Err(error) => {
                if error.closes_connection() || connection.is_closed() {
                    self.sessions.discard(server, user_id, &connection).await;
                }
                Err(error.into())
            }
        }
    }
}

/// What one attempt's result says about the server.
fn classify(result: &Result<ToolResult, SessionError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(SessionError::Connection(error)) if error.is_transient() => Outcome::RETRYABLE,
        Err(SessionError::Connection(error)) if error.is_server_failure() => Outcome::FATAL,
        Err(SessionError::Connection(_)) => Outcome::Success,
        Err(_) => Outcome::Neutral,
    }
}

/// `arguments` against the tool's input schema; violations name `arguments.<path>`.
fn check_arguments(validator: &Validator, arguments: &Map<String, Value>) -> Result<(), ApiError> {
    let instance = Value::Object(arguments.clone());
    let violations: Vec<_> = validator
        .iter_errors(&instance)
        .map(|error| {
            let mut field = String::from("arguments");
            for segment in error.instance_path.as_str().split('/').filter(|segment| !segment.is_empty()) {
                field.push('.');
                field.push_str(&segment.replace("~1", "/").replace("~0", "~"));
            }
            let message = match &error.kind {
                ValidationErrorKind::Required { property } => {
                    field.push('.');
                    field.push_str(property.as_str().unwrap_or_default());
                    "is required".to_owned()
                }
                _ => {
                    let keyword = error.schema_path.as_str().rsplit('/').next().unwrap_or_default().to_owned();
                    format!("does not satisfy the schema's {keyword:?}")
                }
            };
            // Argument values are the caller's data: never echoed back.
            FieldViolation::new(&field, &message, Value::Null)
        })
        .collect();
    refuse_violations(violations)
}

/// A tool result as the response, cut to `max_bytes`.
fn response(result: ToolResult, duration_ms: i64, max_bytes: usize) -> pb::InvokeToolResponse {
    let mut response = pb::InvokeToolResponse {
        content: Vec::new(),
        structured_content: result.structured_content.as_ref().map(object_to_struct),
        is_error: result.is_error,
        duration_ms,
        truncated: false,
    };
    let mut budget = max_bytes;
    for mut part in result.content {
        let size = part.encoded_len();
        if size <= budget {
            budget -= size;
            response.content.push(part);
            continue;
        }
        response.truncated = true;
        if let Some(content_part::Part::Text(text)) = part.part.as_mut() {
            // The part's own framing takes a few bytes besides its text.
            let overhead = size - text.len();
            let mut end = budget.saturating_sub(overhead).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            budget = 0;
            response.content.push(part);
        }
        break;
    }
    if response.structured_content.as_ref().is_some_and(|structured| structured.encoded_len() > budget) {
        response.structured_content = None;
        response.truncated = true;
    }
    response
}

/// A registry error while looking up the tool or its server.
fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::NotFound => ApiError::not_found("Tool"),
        StoreError::Unavailable(source) => {
            tracing::warn!(error = %source, "registry storage unavailable");
            ApiError::external_service("mcp-registry-storage", "database", true)
        }
        other => {
            tracing::error!(error = %other, "registry storage failure");
            ApiError::internal()
        }
    }
}

/// A session failure as the caller sees it.
pub fn session_error(server_name: &str, error: SessionError) -> ApiError {
    match error {
        SessionError::Connection(error) => connection_error(server_name, &error),
        SessionError::SecretUnreadable(error) => {
            tracing::warn!(server = %server_name, %error, "reading an MCP server's secret failed");
            ApiError::external_service("secrets-broker", "secret_manager", true)
        }
        SessionError::Restarting { .. } => {
            ApiError::external_service(server_name, "mcp", true).with_detail("reason", error.to_string())
        }
        SessionError::MissingSecret(_)
        | SessionError::Disabled
        | SessionError::StdioDisabled
        | SessionError::UnsupportedTransport(_)
        | SessionError::Misconfigured(_) => {
            ApiError::external_service(server_name, "mcp", false).with_detail("reason", error.to_string())
        }
        SessionError::Store(error) => store_error(error),
    }
}

/// A connection failure as the caller sees it.
pub fn connection_error(server_name: &str, error: &ConnectionError) -> ApiError {
    match error {
        ConnectionError::Timeout { operation, after } => ApiError::timeout(operation, *after),
        ConnectionError::ToolNotFound { .. } => ApiError::not_found("Tool"),
        ConnectionError::InvalidParams { message } => invalid("arguments", message, Value::Null),
        other => ApiError::external_service(server_name, "mcp", other.is_transient())
            .with_detail("reason", other.to_string())
            .with_detail("kind", kind_name(other.kind())),
    }
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Timeout => "timeout",
        ErrorKind::Transport => "transport",
        ErrorKind::Spawn => "spawn",
        ErrorKind::Protocol => "protocol",
        ErrorKind::ToolNotFound => "tool_not_found",
        ErrorKind::InvalidParams => "invalid_params",
        ErrorKind::Server => "server",
        ErrorKind::Unauthorized => "unauthorized",
        ErrorKind::InvalidSpec => "invalid_spec",
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::agentmesh::common::v1::ContentPart;

    use super::*;

    fn text(text: &str) -> ContentPart {
        ContentPart { part: Some(content_part::Part::Text(text.to_owned())) }
    }

    fn tool_with(schema: Value) -> ToolRecord {
        let now = chrono::Utc::now();
        ToolRecord {
            id: uuid::Uuid::now_v7(),
            name: "t".into(),
            description: String::new(),
            schema: schema.as_object().unwrap().clone(),
            mcp_server_id: None,
            enabled: true,
            metadata: Map::new(),
            title: None,
            output_schema: None,
            annotations: None,
            remote_name: None,
            withdrawn: false,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn argument_violations_name_fields_without_values() {
        let tool = tool_with(serde_json::json!({
            "type": "object",
            "properties": {
                "a": {"type": "number"},
                "nested": {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}
            },
            "required": ["a", "nested"]
        }));
        let arguments = serde_json::json!({"a": "secret-text", "nested": {}});
        let validator = Validators::default().for_tool(&tool).unwrap();
        let error = check_arguments(&validator, arguments.as_object().unwrap()).unwrap_err();
        let mut fields: Vec<_> = error.field_violations.iter().map(|v| v.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["arguments.a", "arguments.nested.b"]);
        assert!(!format!("{error:?}").contains("secret-text"));
        let fine = serde_json::json!({"a": 1, "nested": {"b": "x"}});
        assert!(check_arguments(&validator, fine.as_object().unwrap()).is_ok());
    }

    #[test]
    fn a_schema_is_compiled_once_and_again_when_it_changes() {
        let validators = Validators::default();
        let mut tool = tool_with(serde_json::json!({"type": "object", "required": ["a"]}));
        let first = validators.for_tool(&tool).unwrap();
        assert!(Arc::ptr_eq(&first, &validators.for_tool(&tool).unwrap()));
        let empty = Map::new();
        assert!(check_arguments(&first, &empty).is_err());

        tool.schema = serde_json::json!({"type": "object"}).as_object().unwrap().clone();
        let changed = validators.for_tool(&tool).unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
        assert!(check_arguments(&changed, &empty).is_ok());

        tool.schema = serde_json::json!({"type": 12}).as_object().unwrap().clone();
        assert!(validators.for_tool(&tool).is_none(), "a schema that does not compile checks nothing");
    }

    #[test]
    fn results_over_the_limit_are_cut_and_flagged() {
        let result = ToolResult {
            content: vec![text("short"), text(&"é".repeat(100))],
            structured_content: None,
            is_error: false,
        };
        let small = response(result.clone(), 1, 60);
        assert!(small.truncated);
        assert_eq!(small.content.len(), 2);
        assert!(small.content.iter().map(Message::encoded_len).sum::<usize>() <= 60);
        let whole = response(result, 1, 10_000);
        assert!(!whole.truncated);
    }
}
