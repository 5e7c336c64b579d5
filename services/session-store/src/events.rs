//! The domain events of session-store and how they leave the service.
//!
//! Builders here turn a write's result into a CloudEvents [`Event`] whose data is the
//! protobuf message of `agentmesh.events.v1` (e.g. `SessionCreated`), on topics
//! `session.created|updated|deleted` and `message.created|updated|deleted`. Memory and
//! Redis stores hand their events to an [`EventSink`] right after the write; PostgreSQL
//! writes them to its outbox in the write's transaction instead (see `store::postgres` and `agentmesh_postgres::outbox`).

use std::sync::Arc;

use agentmesh_events::{Event, Publisher};
use agentmesh_proto::agentmesh::events::v1 as pb;
use agentmesh_runtime::RequestContext;
use async_trait::async_trait;

use crate::convert;
use crate::store::{MessageRecord, Owner, SessionRecord};

/// CloudEvents `source` of every event this service emits.
pub const SOURCE: &str = "agentmesh/session-store";

/// Receives the events of completed writes.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Delivers `events`; failures are the sink's to log and count, never the caller's.
    async fn emit(&self, events: Vec<Event>);
}

/// Publishes straight to the bus (memory and Redis backends: at most once if the process
/// dies between the write and the publish; PostgreSQL's outbox closes that gap).
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

/// An event on `topic` about `subject`, carrying `payload` (whose protobuf full name is
/// `agentmesh.events.v1.<schema>`).
fn build(topic: &str, subject: String, owner: &Owner, schema: &str, payload: &impl prost::Message) -> Event {
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
    // Single-tenant deployments have no tenant; the CloudEvents extension is then omitted.
    if !owner.tenant_id.is_empty() {
        builder = builder.tenant(owner.tenant_id.clone());
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

/// `session.created`.
pub fn session_created(session: &SessionRecord) -> Event {
    let payload = pb::SessionCreated { session: Some(convert::session_to_proto(session)) };
    build("session.created", session.id.to_string(), &session.owner, "SessionCreated", &payload)
}

/// `session.updated`.
pub fn session_updated(session: &SessionRecord) -> Event {
    let payload = pb::SessionUpdated { session: Some(convert::session_to_proto(session)) };
    build("session.updated", session.id.to_string(), &session.owner, "SessionUpdated", &payload)
}

/// `session.deleted`.
pub fn session_deleted(owner: &Owner, session_id: uuid::Uuid) -> Event {
    let payload = pb::SessionDeleted { session_id: session_id.to_string(), user_id: Some(owner.user_id.clone()) };
    build("session.deleted", session_id.to_string(), owner, "SessionDeleted", &payload)
}

/// `message.created`.
pub fn message_created(owner: &Owner, message: &MessageRecord) -> Event {
    let payload = pb::MessageCreated { message: Some(convert::message_to_proto(message)) };
    build("message.created", message.id.to_string(), owner, "MessageCreated", &payload)
}

/// `message.updated`.
pub fn message_updated(owner: &Owner, message: &MessageRecord) -> Event {
    let payload = pb::MessageUpdated { message: Some(convert::message_to_proto(message)) };
    build("message.updated", message.id.to_string(), owner, "MessageUpdated", &payload)
}

/// `message.deleted`.
pub fn message_deleted(owner: &Owner, message: &MessageRecord) -> Event {
    let payload = pb::MessageDeleted { message_id: message.id.to_string(), session_id: message.session_id.to_string() };
    build("message.deleted", message.id.to_string(), owner, "MessageDeleted", &payload)
}

#[cfg(test)]
mod tests {
    use agentmesh_runtime::ServiceName;

    use super::*;

    #[tokio::test]
    async fn events_name_the_calling_service_and_the_request() {
        let owner = Owner { tenant_id: "acme".into(), user_id: "alice".into() };
        let id = uuid::Uuid::now_v7();
        let context = RequestContext {
            correlation_id: "req-7".into(),
            actor: Some(ServiceName::AgentOrchestrator),
            ..RequestContext::new()
        };
        let event = context.scope(async { session_deleted(&owner, id) }).await;
        assert_eq!(event.actor(), Some("agent-orchestrator"));
        assert_eq!(event.correlation_id(), Some("req-7"));
        assert_eq!(session_deleted(&owner, id).actor(), None, "no call, no actor");
    }
}
