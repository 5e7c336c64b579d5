//! The checks of a message's input that the contract's field rules cannot express:
//! the shape rules of [`crate::store::shape`] as field violations, and the tool calls'
//! limits (how many, unique ids, argument size).

use crate::settings::SessionLimits;
use agentmesh_runtime::error::FieldViolation;
use serde_json::Value;

use crate::store::{MessageShape, ToolCall};

/// The shape rules `shape` breaks, as field violations.
pub fn shape_violations(shape: MessageShape, out: &mut Vec<FieldViolation>) {
    for (field, message) in shape.violations() {
        out.push(FieldViolation { field: field.to_owned(), message: message.to_owned(), value: Value::Null });
    }
}

/// At most `max_tool_calls` calls, ids unique within the message, and arguments no longer
/// than a message's content may be.
pub fn check_tool_calls(limits: &SessionLimits, calls: &[ToolCall], out: &mut Vec<FieldViolation>) {
    if calls.len() > limits.max_tool_calls {
        let message = format!("must have at most {} items", limits.max_tool_calls);
        out.push(FieldViolation { field: "tool_calls".into(), message, value: Value::from(calls.len()) });
    }
    for (index, call) in calls.iter().enumerate() {
        if calls[..index].iter().any(|earlier| earlier.id == call.id) {
            out.push(FieldViolation {
                field: format!("tool_calls[{index}].id"),
                message: "must be unique within the message".into(),
                value: Value::from(call.id.as_str()),
            });
        }
        if call.arguments.chars().count() > limits.max_content_length {
            out.push(FieldViolation {
                field: format!("tool_calls[{index}].arguments"),
                message: format!("must be at most {} characters long", limits.max_content_length),
                value: Value::Null,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, arguments: &str) -> ToolCall {
        ToolCall { id: id.into(), name: "f".into(), arguments: arguments.into() }
    }

    fn limits() -> SessionLimits {
        SessionLimits { max_title_length: 500, max_content_length: 8, max_metadata_bytes: 100, max_tool_calls: 2 }
    }

    fn fields(calls: &[ToolCall]) -> Vec<String> {
        let mut out = Vec::new();
        check_tool_calls(&limits(), calls, &mut out);
        out.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn tool_calls_are_counted_unique_and_bounded() {
        assert!(fields(&[call("a", "{}"), call("b", "{}")]).is_empty());
        assert_eq!(fields(&[call("a", "{}"), call("a", "{}")]), ["tool_calls[1].id"]);
        assert_eq!(fields(&[call("a", "[1,2,3,4,5]")]), ["tool_calls[0].arguments"]);
        assert_eq!(fields(&[call("a", "{}"), call("b", "{}"), call("c", "{}")]), ["tool_calls"]);
    }
}
