//! Conversions between stored records and the protobuf contract: timestamps, roles, tool
//! calls (JSON objects ↔ `google.protobuf.Struct` live in `agentmesh_proto::json`).

use agentmesh_proto::agentmesh::common::v1::MessageRole;
use agentmesh_proto::agentmesh::session::v1::{self as pb, Message, Session};
pub use agentmesh_proto::json::{object_to_struct, struct_to_object};
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::store::{MessageRecord, Role, SessionRecord, ToolCall};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_both_ways_and_unspecified_is_none() {
        for role in Role::ALL {
            assert_eq!(role_from_proto(role_to_proto(role) as i32), Some(role));
        }
        assert_eq!(role_from_proto(0), None);
        assert_eq!(role_from_proto(99), None);
    }
}
