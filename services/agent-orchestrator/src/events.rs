//! agent-orchestrator's domain events and how they leave the service.
//!
//! Builders here turn a write's result into a CloudEvents [`Event`] whose data is the
//! protobuf message of `agentmesh.events.v1`: `agent.created|updated|deleted` for agent
//! writes and `run.started|requires_action|completed|failed|cancelled` for the run
//! transitions that change what a run is doing ([`run_transitioned`]; recording the user
//! message, progress and resuming after approval emit nothing). The memory store hands
//! its events to an [`EventSink`] right after the write; PostgreSQL writes them to its
//! outbox in the write's transaction instead (see `store::postgres`). Run events carry the
//! run's tenant; agents record none, so their events carry no tenant.

use std::sync::Arc;

use agentmesh_events::{Event, Publisher};
use agentmesh_proto::agentmesh::events::v1 as pb;
use agentmesh_runtime::RequestContext;
use async_trait::async_trait;

use crate::convert;
use crate::store::{AgentRecord, RunRecord, RunTransition};

/// CloudEvents `source` of every event this service emits.
pub const SOURCE: &str = "agentmesh/agent-orchestrator";

/// Receives the events of completed writes.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Delivers `events`; failures are the sink's to log and count, never the caller's.
    async fn emit(&self, events: Vec<Event>);
}

/// Publishes straight to the bus (memory backend: at most once if the process dies
/// between the write and the publish; PostgreSQL's outbox closes that gap).
pub struct PublishDirect {
    publisher: Arc<dyn Publisher>,
}

impl PublishDirect {
    /// A sink publishing to `publisher`.
    pub fn new(publisher: Arc<dyn Publisher>) -> Self {
        Self { publisher }
    }
}

#[async_trait]
impl EventSink for PublishDirect {
    async fn emit(&self, events: Vec<Event>) {
        for event in events {
            if let Err(error) = self.publisher.publish(event.clone()).await {
                metrics::counter!("agentmesh_events_publish_failures_total", "source" => SOURCE).increment(1);
                tracing::error!(%error, event_type = event.event_type(), event_id = event.id(), "event lost");
            }
        }
    }
}

/// An event on `topic` about `subject` in `tenant`, carrying `payload`
/// (`agentmesh.events.v1.<schema>`).
fn build(topic: &str, subject: String, tenant: Option<&str>, schema: &str, payload: &impl prost::Message) -> Event {
    let event_type = format!("agentmesh.{topic}");
    let schema = format!("agentmesh.events.v1.{schema}");
    let data = payload.encode_to_vec();
    let essential = || {
        Event::builder(topic, SOURCE, event_type.clone())
            .subject(subject.clone())
            .data_schema(schema.clone())
            .data(data.clone())
    };
    let mut builder = essential();
    if let Some(tenant) = tenant.filter(|tenant| !tenant.is_empty()) {
        builder = builder.tenant(tenant.to_owned());
    }
    if let Some(context) = RequestContext::current() {
        builder = builder.correlation_id(context.correlation_id);
        if let Some(actor) = context.actor {
            builder = builder.actor(actor.as_str());
        }
    }
    builder.build().unwrap_or_else(|error| {
        // A tenant or correlation id the envelope refuses must not cost the event.
        tracing::warn!(%error, event_type, "event sent without tenant and correlation id");
        // Topic, source and type are constants and the subject is a UUID: always valid.
        essential().build().unwrap_or_else(|error| unreachable!("essential event attributes are valid: {error}"))
    })
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
