//! The domain events of session-store and how they leave the service.
//!
//! Builders here turn a write's result into a CloudEvents [`Event`] whose data is the
//! protobuf message of `agentmesh.events.v1` (e.g. `SessionCreated`), on topics
//! `session.created|updated|deleted` and `message.created|updated|deleted`. Memory and
//! Redis stores hand their events to an [`EventSink`] right after the write; PostgreSQL
//! writes them to its outbox in the write's transaction instead (see `store::postgres`).

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
    let mut builder = Event::builder(topic, SOURCE, format!("agentmesh.{topic}"))
        .subject(subject)
        .tenant(owner.tenant_id.clone())
        .data_schema(format!("agentmesh.events.v1.{schema}"))
        .data(payload.encode_to_vec());
    if let Some(correlation_id) = RequestContext::current_correlation_id() {
        builder = builder.correlation_id(correlation_id);
    }
    // Topics, source and type are constants and ids are UUIDs, so building cannot fail;
    // should it ever, the event is dropped loudly rather than failing the write.
    builder.build().unwrap_or_else(|error| unreachable!("session-store event is valid: {error}"))
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
