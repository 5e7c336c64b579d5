//! The request rules the contract's field options cannot state (they cross fields), checked
//! before any provider is called so a bad request gets one clear `validation_error` naming
//! every offending field, and costs nothing.

use agentmesh_proto::agentmesh::common::v1::MessageRole;
use agentmesh_proto::agentmesh::common::v1::{content_part, image_part};
use agentmesh_proto::agentmesh::llm::v1::{ChatRequest, response_format, tool_choice};
use agentmesh_runtime::ApiError;
use agentmesh_runtime::error::FieldViolation;
use serde_json::Value;

/// Checks `request` beyond its field rules.
pub fn check(request: &ChatRequest) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    let mut violation = |field: String, message: &str, value: Value| {
        violations.push(FieldViolation { field, message: message.to_owned(), value });
    };
    if let Some(t) = request.temperature
        && !(0.0..=2.0).contains(&t)
    {
        violation("temperature".into(), "must be between 0 and 2", t.into());
    }
    if let Some(p) = request.top_p
        && !(0.0..=1.0).contains(&p)
    {
        violation("top_p".into(), "must be between 0 and 1", p.into());
    }
    for (i, message) in request.messages.iter().enumerate() {
        let role = MessageRole::try_from(message.role).unwrap_or(MessageRole::Unspecified);
        let empty = message.content.is_empty() && message.parts.is_empty() && message.tool_calls.is_empty();
        if empty && role != MessageRole::Tool {
            violation(format!("messages[{i}].content"), "a message needs content, parts or tool calls", Value::Null);
        }
        if role == MessageRole::Tool && message.tool_call_id.as_deref().is_none_or(str::is_empty) {
            violation(format!("messages[{i}].tool_call_id"), "a tool message answers a tool call", Value::Null);
        }
        if !message.tool_calls.is_empty() && role != MessageRole::Assistant {
            violation(format!("messages[{i}].tool_calls"), "only assistant messages carry tool calls", Value::Null);
        }
        for (j, call) in message.tool_calls.iter().enumerate() {
            if call.id.is_empty() || call.name.is_empty() {
                violation(format!("messages[{i}].tool_calls[{j}]"), "a tool call needs an id and a name", Value::Null);
            }
            let arguments_ok = call.arguments_json.trim().is_empty()
                || serde_json::from_str::<Value>(&call.arguments_json).is_ok_and(|v| v.is_object());
            if !arguments_ok {
                violation(
                    format!("messages[{i}].tool_calls[{j}].arguments_json"),
                    "must be a JSON object",
                    call.arguments_json.clone().into(),
                );
            }
        }
        for (j, part) in message.parts.iter().enumerate() {
            if let Some(content_part::Part::Audio(audio)) = &part.part {
                if audio.data.is_empty() || audio.mime_type.is_empty() {
                    violation(
                        format!("messages[{i}].parts[{j}].audio"),
                        "audio needs bytes and a mime_type",
                        Value::Null,
                    );
                }
                if role == MessageRole::Assistant || role == MessageRole::System {
                    violation(format!("messages[{i}].parts[{j}]"), "audio goes on user and tool messages", Value::Null);
                }
            }
            let Some(content_part::Part::Image(image)) = &part.part else { continue };
            let field = format!("messages[{i}].parts[{j}].image");
            match &image.source {
                None => violation(field, "an image needs a url or data", Value::Null),
                Some(image_part::Source::Data(data)) if data.is_empty() || image.mime_type.is_empty() => {
                    violation(field, "image data needs bytes and a mime_type", Value::Null);
                }
                Some(image_part::Source::Url(url))
                    if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("data:")) =>
                {
                    violation(format!("{field}.url"), "must be an http(s) or data URL", url.clone().into());
                }
                Some(_) => {}
            }
            if role == MessageRole::Assistant || role == MessageRole::System {
                violation(format!("messages[{i}].parts[{j}]"), "images go on user and tool messages", Value::Null);
            }
        }
    }
    for (i, tool) in request.tools.iter().enumerate() {
        if tool.name.is_empty() {
            violation(format!("tools[{i}].name"), "a tool needs a name", Value::Null);
        }
    }
    if let Some(tool_choice::Choice::Tool(name)) = request.tool_choice.as_ref().and_then(|c| c.choice.as_ref())
        && !request.tools.iter().any(|tool| &tool.name == name)
    {
        violation("tool_choice.tool".into(), "must name one of the tools", name.clone().into());
    }
    if let Some(format) = &request.response_format
        && format.r#type == response_format::Type::JsonSchema as i32
    {
        let named = format.json_schema.as_ref().is_some_and(|s| !s.name.is_empty() && s.schema.is_some());
        if !named {
            violation("response_format.json_schema".into(), "json_schema needs a name and a schema", Value::Null);
        }
    }
    if violations.is_empty() { Ok(()) } else { Err(ApiError::validation(violations)) }
}
