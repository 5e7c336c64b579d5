//! The registry's input rules beyond the contract's field rules: the cross-field rules of
//! a server's transport, the URL and size checks, and who may register a stdio server.
//!
//! Each builder turns a request into what the store writes, collecting every violation
//! (named by its field path, as a client sent it) instead of stopping at the first one,
//! so one 422 lists everything wrong.

use agentmesh_proto::agentmesh::mcp::v1 as pb;
use agentmesh_runtime::auth::Principal;
use agentmesh_runtime::error::FieldViolation;
use agentmesh_runtime::request::refuse_violations;
use agentmesh_runtime::{ApiError, ErrorCode};
use serde_json::Value;

use crate::convert::{annotations_from_proto, authentication_from_proto, stdio_from_proto, struct_to_object};
use crate::settings::RegistryLimits;
use crate::store::{JsonObject, ServerConfig, ToolDefinition, Transport, naming};

/// The scope that allows registering and changing stdio servers (they start processes
/// on the broker).
pub const ADMIN_SCOPE: &str = "mcp_servers:admin";

/// Longest stdio command (the contract's "1 to 500 characters").
const MAX_COMMAND_LENGTH: usize = 500;

/// Refuses a stdio server to a principal without [`ADMIN_SCOPE`].
pub fn check_stdio_allowed(principal: &Principal) -> Result<(), ApiError> {
    if principal.has_scope(ADMIN_SCOPE) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Authorization,
        format!("Registering or changing a stdio MCP server starts a process on the broker and needs the {ADMIN_SCOPE} scope"),
    )
    .with_detail("required_scope", ADMIN_SCOPE))
}

/// Whether a request asks for the stdio transport, explicitly or by giving a command.
pub fn wants_stdio(transport: i32, stdio: Option<&pb::StdioCommand>) -> bool {
    transport == pb::McpTransport::Stdio as i32 || stdio.is_some()
}

/// The fields of a server write (CreateMcpServer and UpdateMcpServer carry the same).
pub struct ServerFields<'a> {
    /// `name`.
    pub name: &'a str,
    /// `description`.
    pub description: Option<&'a String>,
    /// `endpoint`.
    pub endpoint: &'a str,
    /// `authentication`.
    pub authentication: Option<&'a pb::McpAuthentication>,
    /// `capabilities`.
    pub capabilities: &'a [String],
    /// `health_check_url`.
    pub health_check_url: Option<&'a String>,
    /// `enabled`.
    pub enabled: Option<bool>,
    /// `transport`.
    pub transport: i32,
    /// `stdio`.
    pub stdio: Option<&'a pb::StdioCommand>,
    /// `tool_prefix`.
    pub tool_prefix: Option<&'a String>,
}

/// The configuration a server write asks for, or every violation in it. The transport is
/// inferred when unspecified (`stdio` when a command is given, else streamable HTTP).
pub fn server_config(fields: ServerFields<'_>, limits: &RegistryLimits) -> Result<ServerConfig, ApiError> {
    let mut out = Vec::new();
    let transport = crate::convert::transport_from_proto(fields.transport).unwrap_or(if fields.stdio.is_some() {
        Transport::Stdio
    } else {
        Transport::StreamableHttp
    });
    check_description("description", fields.description.map(String::as_str), limits, &mut out);
    match transport {
        Transport::Stdio => {
            if !fields.endpoint.is_empty() {
                out.push(FieldViolation::new(
                    "endpoint",
                    "must be empty for the stdio transport",
                    Value::from(fields.endpoint),
                ));
            }
            match fields.stdio {
                None => out.push(FieldViolation::new("stdio", "is required for the stdio transport", Value::Null)),
                Some(stdio) => check_stdio(stdio, limits, &mut out),
            }
            if fields.authentication.is_some_and(|auth| *auth != pb::McpAuthentication::default()) {
                out.push(FieldViolation::new("authentication", "applies to HTTP transports only", Value::Null));
            }
        }
        Transport::StreamableHttp | Transport::Sse => {
            if fields.stdio.is_some() {
                out.push(FieldViolation::new("stdio", "is only for the stdio transport", Value::Null));
            }
            if fields.endpoint.is_empty() {
                out.push(FieldViolation::new("endpoint", "is required unless `stdio` is given", Value::from("")));
            } else {
                check_http_url("endpoint", fields.endpoint, &mut out);
            }
        }
    }
    if let Some(url) = fields.health_check_url {
        check_http_url("health_check_url", url, &mut out);
    }
    if let Some(auth) = fields.authentication {
        check_authentication(auth, &mut out);
    }
    for (index, capability) in fields.capabilities.iter().enumerate() {
        if capability.is_empty() || capability.chars().count() > 100 {
            let field = format!("capabilities[{index}]");
            out.push(FieldViolation::new(&field, "must be 1 to 100 characters long", Value::from(capability.as_str())));
        }
    }
    refuse_violations(out)?;
    Ok(ServerConfig {
        name: fields.name.to_owned(),
        description: fields.description.cloned(),
        endpoint: fields.endpoint.to_owned(),
        authentication: authentication_from_proto(fields.authentication),
        capabilities: fields.capabilities.to_vec(),
        health_check_url: fields.health_check_url.cloned(),
        enabled: fields.enabled.unwrap_or(true),
        transport,
        stdio: fields.stdio.map(stdio_from_proto),
        tool_prefix: fields.tool_prefix.cloned(),
    })
}

/// `url` must be an absolute http(s) URL with a host.
fn check_http_url(field: &str, url: &str, out: &mut Vec<FieldViolation>) {
    let ok = url.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some_and(|host| !host.is_empty())
    });
    if !ok {
        let shown: String = url.chars().take(64).collect();
        out.push(FieldViolation::new(field, "must be an http or https URL", Value::from(shown)));
    }
}

fn check_description(field: &str, description: Option<&str>, limits: &RegistryLimits, out: &mut Vec<FieldViolation>) {
    if description.is_some_and(|text| text.chars().count() > limits.max_description_length) {
        let message = format!("must be at most {} characters long", limits.max_description_length);
        out.push(FieldViolation::new(field, &message, Value::Null));
    }
}

fn check_stdio(stdio: &pb::StdioCommand, limits: &RegistryLimits, out: &mut Vec<FieldViolation>) {
    let length = stdio.command.chars().count();
    if stdio.command.trim().is_empty() || length > MAX_COMMAND_LENGTH {
        let message = format!("must be 1 to {MAX_COMMAND_LENGTH} characters long, not blank");
        out.push(FieldViolation::new(
            "stdio.command",
            &message,
            Value::from(stdio.command.chars().take(64).collect::<String>()),
        ));
    }
    if stdio.args.len() > limits.max_stdio_args {
        let message = format!("must have at most {} items", limits.max_stdio_args);
        out.push(FieldViolation::new("stdio.args", &message, Value::from(stdio.args.len())));
    }
    if stdio.env.len() > limits.max_stdio_args {
        let message = format!("must have at most {} items", limits.max_stdio_args);
        out.push(FieldViolation::new("stdio.env", &message, Value::from(stdio.env.len())));
    }
    for (index, var) in stdio.env.iter().enumerate() {
        if var.name.is_empty() || var.name.contains('=') {
            let field = format!("stdio.env[{index}].name");
            out.push(FieldViolation::new(
                &field,
                "must be a non-empty name without `=`",
                Value::from(var.name.as_str()),
            ));
        }
        match &var.value {
            None => out.push(FieldViolation::new(
                &format!("stdio.env[{index}]"),
                "needs a `literal` or a `secret`",
                Value::Null,
            )),
            Some(pb::environment_variable::Value::Secret(name)) if name.is_empty() => {
                out.push(FieldViolation::new(
                    &format!("stdio.env[{index}].secret"),
                    "must name a secret",
                    Value::from(""),
                ));
            }
            Some(_) => {}
        }
    }
}

fn check_authentication(auth: &pb::McpAuthentication, out: &mut Vec<FieldViolation>) {
    if auth.bearer_secret.as_deref().is_some_and(str::is_empty) {
        out.push(FieldViolation::new("authentication.bearer_secret", "must name a secret", Value::from("")));
    }
    for (index, header) in auth.header_secrets.iter().enumerate() {
        if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
            let field = format!("authentication.header_secrets[{index}].name");
            out.push(FieldViolation::new(
                &field,
                "must be a valid HTTP header name",
                Value::from(header.name.as_str()),
            ));
        }
        if header.secret.is_empty() {
            let field = format!("authentication.header_secrets[{index}].secret");
            out.push(FieldViolation::new(&field, "must name a secret", Value::from("")));
        }
    }
}

/// The fields of a tool write (CreateTool and UpdateTool carry the same).
pub struct ToolFields<'a> {
    /// `name`.
    pub name: &'a str,
    /// `description`.
    pub description: &'a str,
    /// `schema`.
    pub schema: Option<&'a prost_types::Struct>,
    /// `mcp_server_id`, already checked to be a UUID.
    pub mcp_server_id: Option<uuid::Uuid>,
    /// `enabled`.
    pub enabled: Option<bool>,
    /// `metadata`.
    pub metadata: Option<&'a prost_types::Struct>,
    /// `title`.
    pub title: Option<&'a String>,
    /// `output_schema`.
    pub output_schema: Option<&'a prost_types::Struct>,
    /// `annotations`.
    pub annotations: Option<&'a pb::ToolAnnotations>,
}

/// The definition a tool write asks for, or every violation in it.
pub fn tool_definition(fields: ToolFields<'_>, limits: &RegistryLimits) -> Result<ToolDefinition, ApiError> {
    let mut out = Vec::new();
    let schema = fields.schema.map(struct_to_object).unwrap_or_default();
    check_schema("schema", &schema, limits, &mut out);
    let output_schema = fields.output_schema.map(struct_to_object);
    if let Some(output) = &output_schema {
        check_schema("output_schema", output, limits, &mut out);
    }
    let metadata = fields.metadata.map(struct_to_object).unwrap_or_default();
    if json_size(&metadata) > limits.max_metadata_bytes {
        let message = format!("must be at most {} bytes of JSON", limits.max_metadata_bytes);
        out.push(FieldViolation::new("metadata", &message, Value::from(json_size(&metadata))));
    }
    check_description("description", Some(fields.description), limits, &mut out);
    if fields.name.chars().count() > naming::MAX_TOOL_NAME {
        out.push(FieldViolation::new("name", "must be at most 64 characters long", Value::from(fields.name)));
    }
    refuse_violations(out)?;
    Ok(ToolDefinition {
        name: fields.name.to_owned(),
        description: fields.description.to_owned(),
        schema,
        mcp_server_id: fields.mcp_server_id,
        enabled: fields.enabled.unwrap_or(true),
        metadata,
        title: fields.title.cloned(),
        output_schema,
        annotations: fields.annotations.map(annotations_from_proto),
    })
}

fn json_size(object: &JsonObject) -> usize {
    serde_json::to_vec(object).map_or(usize::MAX, |bytes| bytes.len())
}

/// A tool schema is a JSON object describing an object (MCP and every LLM provider take
/// object schemas only): its `type`, when given, is `"object"`.
fn check_schema(field: &str, schema: &JsonObject, limits: &RegistryLimits, out: &mut Vec<FieldViolation>) {
    if json_size(schema) > limits.max_schema_bytes {
        let message = format!("must be at most {} bytes of JSON", limits.max_schema_bytes);
        out.push(FieldViolation::new(field, &message, Value::from(json_size(schema))));
    }
    match schema.get("type") {
        None => {}
        Some(Value::String(kind)) if kind == "object" => {}
        Some(other) => {
            out.push(FieldViolation::new(
                field,
                "must be a JSON Schema of an object (`\"type\": \"object\"`)",
                other.clone(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(endpoint: &'a str, transport: i32, stdio: Option<&'a pb::StdioCommand>) -> ServerFields<'a> {
        ServerFields {
            name: "s",
            description: None,
            endpoint,
            authentication: None,
            capabilities: &[],
            health_check_url: None,
            enabled: None,
            transport,
            stdio,
            tool_prefix: None,
        }
    }

    fn fields_of(error: ApiError) -> Vec<String> {
        error.field_violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn transports_are_inferred_and_must_match_what_is_given() {
        let limits = RegistryLimits::default();
        let http = server_config(fields("https://mcp.example.com/mcp", 0, None), &limits).unwrap();
        assert_eq!((http.transport, http.enabled), (Transport::StreamableHttp, true));
        let stdio = pb::StdioCommand { command: "node".into(), ..Default::default() };
        let local = server_config(fields("", 0, Some(&stdio)), &limits).unwrap();
        assert_eq!(local.transport, Transport::Stdio);

        let error = server_config(fields("", 0, None), &limits).unwrap_err();
        assert_eq!(fields_of(error), ["endpoint"]);
        let error = server_config(fields("ftp://x/y", pb::McpTransport::Sse as i32, None), &limits).unwrap_err();
        assert_eq!(fields_of(error), ["endpoint"]);
        let error = server_config(fields("", pb::McpTransport::Stdio as i32, None), &limits).unwrap_err();
        assert_eq!(fields_of(error), ["stdio"]);
        let blank = pb::StdioCommand { command: " ".into(), ..Default::default() };
        let error = server_config(fields("http://x", 0, Some(&blank)), &limits).unwrap_err();
        assert_eq!(fields_of(error), ["endpoint", "stdio.command"]);
        let error = server_config(fields("http://x", pb::McpTransport::StreamableHttp as i32, Some(&stdio)), &limits)
            .unwrap_err();
        assert_eq!(fields_of(error), ["stdio"]);
    }

    #[test]
    fn schemas_describe_objects() {
        let limits = RegistryLimits::default();
        let schema = |json: serde_json::Value| agentmesh_proto::json::object_to_struct(json.as_object().unwrap());
        let ok = schema(serde_json::json!({"type": "object", "properties": {}}));
        let bad = schema(serde_json::json!({"type": "string"}));
        let tool = |schema| ToolFields {
            name: "t",
            description: "d",
            schema,
            mcp_server_id: None,
            enabled: None,
            metadata: None,
            title: None,
            output_schema: None,
            annotations: None,
        };
        let defined = tool_definition(tool(Some(&ok)), &limits).unwrap();
        assert!(defined.enabled && defined.metadata.is_empty());
        assert_eq!(fields_of(tool_definition(tool(Some(&bad)), &limits).unwrap_err()), ["schema"]);
    }
}
