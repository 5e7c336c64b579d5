//! The registry's domain events and how they leave the service.
//!
//! Builders here turn a write's result into a CloudEvents [`Event`] whose data is the
//! protobuf message of `agentmesh.events.v1`, on topics `tool.created|updated|deleted`
//! and `mcp_server.created|updated|deleted|health_changed`. The memory store hands its
//! events to an [`EventSink`] (publishing them directly, [`PublishDirect`]) right after
//! the write; PostgreSQL writes them to its outbox
//! in the write's transaction instead (see `store::postgres`). The catalogue is shared by
//! the whole mesh, so these events carry no tenant.

use agentmesh_events::Event;
use agentmesh_proto::agentmesh::events::v1 as pb;
use agentmesh_runtime::domain_events::EventSource;

pub use agentmesh_runtime::domain_events::{EventSink, PublishDirect};

use crate::convert;
use crate::store::{McpServerRecord, ServerStatus, ToolRecord};

/// CloudEvents `source` of every event this service emits.
pub const SOURCE: &str = "agentmesh/mcp-broker";

const EVENTS: EventSource = EventSource::new(SOURCE);

/// An event on `topic` about `subject`, carrying `payload` (`agentmesh.events.v1.<schema>`);
/// the catalogue is the whole mesh's, so no tenant.
fn build(topic: &str, subject: String, schema: &str, payload: &impl prost::Message) -> Event {
    EVENTS.event(topic, subject, None, schema, payload)
}

/// `tool.created`.
pub fn tool_created(tool: &ToolRecord) -> Event {
    let payload = pb::ToolCreated { tool: Some(convert::tool_to_proto(tool)) };
    build("tool.created", tool.id.to_string(), "ToolCreated", &payload)
}

/// `tool.updated`.
pub fn tool_updated(tool: &ToolRecord) -> Event {
    let payload = pb::ToolUpdated { tool: Some(convert::tool_to_proto(tool)) };
    build("tool.updated", tool.id.to_string(), "ToolUpdated", &payload)
}

/// `tool.deleted`.
pub fn tool_deleted(tool: &ToolRecord) -> Event {
    let payload = pb::ToolDeleted { tool_id: tool.id.to_string(), name: tool.name.clone() };
    build("tool.deleted", tool.id.to_string(), "ToolDeleted", &payload)
}

/// `mcp_server.created`.
pub fn server_created(server: &McpServerRecord) -> Event {
    let payload = pb::McpServerCreated { mcp_server: Some(convert::server_to_proto(server)) };
    build("mcp_server.created", server.id.to_string(), "McpServerCreated", &payload)
}

/// `mcp_server.updated`.
pub fn server_updated(server: &McpServerRecord) -> Event {
    let payload = pb::McpServerUpdated { mcp_server: Some(convert::server_to_proto(server)) };
    build("mcp_server.updated", server.id.to_string(), "McpServerUpdated", &payload)
}

/// `mcp_server.deleted`.
pub fn server_deleted(server: &McpServerRecord) -> Event {
    let payload = pb::McpServerDeleted { mcp_server_id: server.id.to_string() };
    build("mcp_server.deleted", server.id.to_string(), "McpServerDeleted", &payload)
}

/// `mcp_server.health_changed`.
pub fn server_health_changed(server: &McpServerRecord, previous: ServerStatus, reason: &str) -> Event {
    let payload = pb::McpServerHealthChanged {
        mcp_server_id: server.id.to_string(),
        previous_status: convert::status_to_proto(previous) as i32,
        current_status: convert::status_to_proto(server.status) as i32,
        reason: reason.to_owned(),
    };
    build("mcp_server.health_changed", server.id.to_string(), "McpServerHealthChanged", &payload)
}

/// The events of a server deletion: its tools' first, then the server's.
pub fn server_and_tools_deleted(server: &McpServerRecord, tools: &[ToolRecord]) -> Vec<Event> {
    tools.iter().map(tool_deleted).chain([server_deleted(server)]).collect()
}

/// What [`tool_invoked`] reports about one call: names and outcome, never argument values.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The tool.
    pub tool: &'a ToolRecord,
    /// The session the call was made for.
    pub session_id: Option<String>,
    /// The run the call was made for.
    pub run_id: Option<String>,
    /// The user it is attributed to.
    pub user_id: &'a str,
    /// How long it took.
    pub duration_ms: i64,
    /// `ok`, `tool_error`, or the error code.
    pub outcome: &'a str,
    /// The error's message, when it failed.
    pub error: Option<String>,
}

/// `agentmesh.tool.invoked`, for every invocation that reached the point of calling.
pub fn tool_invoked(invocation: &Invocation<'_>) -> Event {
    let payload = pb::ToolInvoked {
        tool_name: invocation.tool.name.clone(),
        mcp_server_id: invocation.tool.mcp_server_id.map(|id| id.to_string()),
        run_id: invocation.run_id.clone(),
        duration_ms: invocation.duration_ms,
        success: invocation.outcome == "ok",
        error: invocation.error.clone(),
        session_id: invocation.session_id.clone(),
        outcome: invocation.outcome.to_owned(),
        user_id: invocation.user_id.to_owned(),
    };
    build("tool.invoked", invocation.tool.id.to_string(), "ToolInvoked", &payload)
}
