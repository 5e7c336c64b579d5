//! The rules a message's role imposes on its other fields, written once for every
//! backend and for creates and updates alike.
//!
//! - `content` must not be empty, except on an assistant message that carries tool calls
//!   (the model asked for tools and said nothing).
//! - `tool_calls` only on assistant messages.
//! - `tool_call_id` on every tool message (a tool result must name the call it answers,
//!   as OpenAI requires; Anthropic's `tool_use_id` is the same link) and on no other.
//!
//! A create is checked as sent. An update is checked on the message it would produce:
//! the service reads the stored [`MessageShape`], applies the patch, checks the result,
//! and the store applies the patch only if the stored shape is still the one read
//! ([`MessagePatch::expect`](super::MessagePatch::expect)), so two concurrent updates
//! cannot together produce a message neither would have been allowed to.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::Role;

/// A tool call of an assistant message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call.
    #[serde(default)]
    pub id: String,
    /// The tool's name.
    #[serde(default)]
    pub name: String,
    /// The arguments, JSON text as given.
    #[serde(default, deserialize_with = "arguments_text")]
    pub arguments: String,
}

/// Reads `arguments` as stored, or as written before tool calls were typed (any JSON
/// value, kept as its JSON text).
fn arguments_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// What the rules look at: the role and which of the other fields are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageShape {
    /// The role.
    pub role: Role,
    /// `content` is not empty.
    pub has_content: bool,
    /// `tool_calls` is not empty.
    pub has_tool_calls: bool,
    /// `tool_call_id` is set.
    pub has_tool_call_id: bool,
}

/// A broken rule: the field and what is wrong with it.
pub type ShapeViolation = (&'static str, &'static str);

impl MessageShape {
    /// Every rule the shape breaks, by field.
    pub fn violations(self) -> Vec<ShapeViolation> {
        let mut out = Vec::new();
        let assistant = self.role == Role::Assistant;
        let may_be_empty = assistant && self.has_tool_calls;
        if !self.has_content && !may_be_empty {
            out.push(("content", "is required (only an assistant message with tool calls may have empty content)"));
        }
        if self.has_tool_calls && !assistant {
            out.push(("tool_calls", "are only allowed on assistant messages"));
        }
        match (self.role == Role::Tool, self.has_tool_call_id) {
            (true, false) => out.push(("tool_call_id", "is required on tool messages")),
            (false, true) => out.push(("tool_call_id", "is only allowed on tool messages")),
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(role: Role, has_content: bool, has_tool_calls: bool, has_tool_call_id: bool) -> MessageShape {
        MessageShape { role, has_content, has_tool_calls, has_tool_call_id }
    }

    fn fields(shape: MessageShape) -> Vec<&'static str> {
        shape.violations().into_iter().map(|(field, _)| field).collect()
    }

    #[test]
    fn only_assistant_messages_with_tool_calls_may_be_empty() {
        assert!(fields(shape(Role::Assistant, false, true, false)).is_empty());
        assert!(fields(shape(Role::Assistant, true, true, false)).is_empty());
        assert_eq!(fields(shape(Role::Assistant, false, false, false)), ["content"]);
        assert_eq!(fields(shape(Role::User, false, false, false)), ["content"]);
        assert_eq!(fields(shape(Role::System, false, true, false)), ["content", "tool_calls"]);
    }

    #[test]
    fn tool_call_ids_belong_to_tool_messages_exactly() {
        assert!(fields(shape(Role::Tool, true, false, true)).is_empty());
        assert_eq!(fields(shape(Role::Tool, true, false, false)), ["tool_call_id"]);
        assert_eq!(fields(shape(Role::User, true, false, true)), ["tool_call_id"]);
        assert_eq!(fields(shape(Role::Tool, true, true, true)), ["tool_calls"]);
    }

    #[test]
    fn tool_calls_written_before_they_were_typed_still_read() {
        let legacy: Vec<ToolCall> =
            serde_json::from_str(r#"[{"name": "search", "arguments": {"q": "x"}}, {"id": "c1", "extra": 1}]"#).unwrap();
        assert_eq!(legacy[0], ToolCall { id: String::new(), name: "search".into(), arguments: r#"{"q":"x"}"#.into() });
        assert_eq!(legacy[1].id, "c1");
        let typed = ToolCall { id: "c2".into(), name: "f".into(), arguments: "{\"a\": 1}".into() };
        let text = serde_json::to_string(&typed).unwrap();
        assert_eq!(serde_json::from_str::<ToolCall>(&text).unwrap(), typed);
    }
}
