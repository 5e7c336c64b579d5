//! The domain events of session-store and how they leave the service.
//!
//! Builders here turn a write's result into a CloudEvents [`Event`] whose data is the
//! protobuf message of `agentmesh.events.v1` (e.g. `SessionCreated`), on topics
//! `session.created|updated|deleted` and `message.created|updated|deleted`. Memory and
//! Redis stores hand their events to an [`EventSink`] (publishing them directly,
//! [`PublishDirect`]) right after the write; PostgreSQL
//! writes them to its outbox in the write's transaction instead (see `store::postgres` and `agentmesh_postgres::outbox`).

use agentmesh_events::Event;
use agentmesh_proto::agentmesh::events::v1 as pb;
use agentmesh_runtime::domain_events::EventSource;

pub use agentmesh_runtime::domain_events::{EventSink, PublishDirect};

use crate::convert;
use crate::store::{MessageRecord, Owner, SessionRecord};

/// CloudEvents `source` of every event this service emits.
pub const SOURCE: &str = "agentmesh/session-store";

const EVENTS: EventSource = EventSource::new(SOURCE);

/// An event on `topic` about `subject` in `owner`'s tenant, carrying `payload` (whose
/// protobuf full name is `agentmesh.events.v1.<schema>`).
fn build(topic: &str, subject: String, owner: &Owner, schema: &str, payload: &impl prost::Message) -> Event {
    EVENTS.event(topic, subject, Some(&owner.tenant_id), schema, payload)
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
