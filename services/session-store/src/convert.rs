//! Conversions between stored records and the protobuf contract: JSON objects ↔
//! `google.protobuf.Struct`, timestamps, roles, tool calls.

use agentmesh_proto::agentmesh::common::v1::MessageRole;
use agentmesh_proto::agentmesh::session::v1::{self as pb, Message, Session};
use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use serde_json::{Map, Number, Value as Json};

use crate::store::{JsonObject, MessageRecord, Role, SessionRecord, ToolCall};

/// A stored session as the contract's `Session` (the owner stays private).
pub fn session_to_proto(session: &SessionRecord) -> Session {
    Session {
        id: session.id.to_string(),
        user_id: session.user_id.clone(),
        title: session.title.clone(),
        metadata: Some(object_to_struct(&session.metadata)),
        message_count: session.message_count,
        last_activity: Some(timestamp(session.last_activity)),
        created_at: Some(timestamp(session.created_at)),
        updated_at: Some(timestamp(session.updated_at)),
    }
}

/// A stored message as the contract's `Message`.
pub fn message_to_proto(message: &MessageRecord) -> Message {
    Message {
        id: message.id.to_string(),
        session_id: message.session_id.to_string(),
        role: role_to_proto(message.role) as i32,
        content: message.content.clone(),
        metadata: Some(object_to_struct(&message.metadata)),
        tool_calls: message.tool_calls.iter().map(tool_call_to_proto).collect(),
        tool_call_id: message.tool_call_id.clone(),
        parent_message_id: message.parent_message_id.map(|id| id.to_string()),
        created_at: Some(timestamp(message.created_at)),
        updated_at: Some(timestamp(message.updated_at)),
    }
}

/// A stored tool call as the contract's.
pub fn tool_call_to_proto(call: &ToolCall) -> pb::ToolCall {
    pb::ToolCall { id: call.id.clone(), name: call.name.clone(), arguments: call.arguments.clone() }
}

/// The contract's tool call as a stored one.
pub fn tool_call_from_proto(call: &pb::ToolCall) -> ToolCall {
    ToolCall { id: call.id.clone(), name: call.name.clone(), arguments: call.arguments.clone() }
}

/// The contract's role for a stored one.
pub fn role_to_proto(role: Role) -> MessageRole {
    match role {
        Role::User => MessageRole::User,
        Role::Assistant => MessageRole::Assistant,
        Role::System => MessageRole::System,
        Role::Tool => MessageRole::Tool,
    }
}

/// The stored role for the contract's; `None` for UNSPECIFIED or unknown values.
pub fn role_from_proto(value: i32) -> Option<Role> {
    match MessageRole::try_from(value).ok()? {
        MessageRole::User => Some(Role::User),
        MessageRole::Assistant => Some(Role::Assistant),
        MessageRole::System => Some(Role::System),
        MessageRole::Tool => Some(Role::Tool),
        MessageRole::Unspecified => None,
    }
}

/// A protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// A JSON object as a `Struct`.
pub fn object_to_struct(object: &JsonObject) -> Struct {
    Struct { fields: object.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

fn json_to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(json_to_value).collect() }),
        Json::Object(object) => Kind::StructValue(object_to_struct(object)),
    };
    Value { kind: Some(kind) }
}

/// A `Struct` as a JSON object. Numbers are JSON numbers; integral values come back as
/// integers (`3`, not `3.0`), which is how clients sent them.
pub fn struct_to_object(value: &Struct) -> JsonObject {
    value.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect::<Map<_, _>>()
}

fn value_to_json(value: &Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(object)) => Json::Object(struct_to_object(object)),
    }
}

/// Largest integer a double holds exactly (2^53).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

fn number(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INTEGER {
        // Exact: |n| ≤ 2^53 and integral.
        #[allow(clippy::cast_possible_truncation)]
        return Json::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Json::Null, Json::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_survive_a_struct_round_trip() {
        let object: JsonObject = serde_json::from_str(
            r#"{"a": 1, "b": 2.5, "c": "x", "d": [true, null, {"e": -7}], "f": {"g": []}, "big": 9007199254740992}"#,
        )
        .unwrap();
        assert_eq!(struct_to_object(&object_to_struct(&object)), object);
    }

    #[test]
    fn roles_map_both_ways_and_unspecified_is_none() {
        for role in Role::ALL {
            assert_eq!(role_from_proto(role_to_proto(role) as i32), Some(role));
        }
        assert_eq!(role_from_proto(0), None);
        assert_eq!(role_from_proto(99), None);
    }
}
