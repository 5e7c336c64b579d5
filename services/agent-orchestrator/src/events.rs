//! agent-orchestrator's domain events and how they leave the service.
//!
//! Builders here turn a write's result into a CloudEvents [`Event`] whose data is the
//! protobuf message of `agentmesh.events.v1`: `agent.created|updated|deleted` for agent
//! writes and `run.started|requires_action|completed|failed|cancelled` for the run
//! transitions that change what a run is doing ([`run_transitioned`]; recording the user
//! message, progress and resuming after approval emit nothing), on the envelope every
//! service shares (`agentmesh_runtime::domain_events`). The memory store hands its events
//! to an [`EventSink`] (publishing them directly, [`PublishDirect`]) right after the
//! write; PostgreSQL writes them to its outbox in the write's transaction instead (see
//! `store::postgres`). Run events carry the run's tenant; agents record none, so their
//! events carry no tenant.

use agentmesh_events::Event;
use agentmesh_proto::agentmesh::events::v1 as pb;
use agentmesh_runtime::domain_events::EventSource;

pub use agentmesh_runtime::domain_events::{EventSink, PublishDirect};

use crate::convert;
use crate::store::{AgentRecord, RunRecord, RunTransition};

/// CloudEvents `source` of every event this service emits.
pub const SOURCE: &str = "agentmesh/agent-orchestrator";

const EVENTS: EventSource = EventSource::new(SOURCE);

/// An event on `topic` about `subject` in `tenant`, carrying `payload`
/// (`agentmesh.events.v1.<schema>`).
fn build(topic: &str, subject: String, tenant: Option<&str>, schema: &str, payload: &impl prost::Message) -> Event {
    EVENTS.event(topic, subject, tenant, schema, payload)
}

/// `agent.created`.
pub fn agent_created(agent: &AgentRecord) -> Event {
    let payload = pb::AgentCreated { agent: Some(convert::agent_to_proto(agent)) };
    build("agent.created", agent.id.to_string(), None, "AgentCreated", &payload)
}

/// `agent.updated`.
pub fn agent_updated(agent: &AgentRecord) -> Event {
    let payload = pb::AgentUpdated { agent: Some(convert::agent_to_proto(agent)) };
    build("agent.updated", agent.id.to_string(), None, "AgentUpdated", &payload)
}

/// `agent.deleted`.
pub fn agent_deleted(agent: &AgentRecord) -> Event {
    let payload = pb::AgentDeleted { agent_id: agent.id.to_string() };
    build("agent.deleted", agent.id.to_string(), None, "AgentDeleted", &payload)
}

/// A run event on `topic`.
fn run_event(topic: &str, run: &RunRecord, schema: &str, payload: &impl prost::Message) -> Event {
    build(topic, run.id.to_string(), run.principal.tenant.as_deref(), schema, payload)
}

/// The event of `transition`, which left the run as `run`; `None` for transitions that
/// emit nothing (user message, progress, resume).
pub fn run_transitioned(transition: &RunTransition, run: &RunRecord) -> Option<Event> {
    let proto = || Some(convert::run_to_event_proto(run));
    Some(match transition {
        RunTransition::Start { .. } => {
            run_event("run.started", run, "RunStartedEvent", &pb::RunStartedEvent { run: proto() })
        }
        RunTransition::RequireAction { .. } => run_event(
            "run.requires_action",
            run,
            "RunRequiresActionEvent",
            &pb::RunRequiresActionEvent { run: proto() },
        ),
        RunTransition::Complete { .. } => {
            run_event("run.completed", run, "RunCompletedEvent", &pb::RunCompletedEvent { run: proto() })
        }
        RunTransition::Fail { error, .. } => {
            let payload = pb::RunFailedEvent { run: proto(), error: Some(convert::error_detail(error)) };
            run_event("run.failed", run, "RunFailedEvent", &payload)
        }
        RunTransition::Cancel { reason, .. } => {
            let payload = pb::RunCancelledEvent { run: proto(), reason: reason.clone() };
            run_event("run.cancelled", run, "RunCancelledEvent", &payload)
        }
        RunTransition::UserMessage { .. } | RunTransition::Progress { .. } | RunTransition::Resume { .. } => {
            return None;
        }
    })
}
