//! The event envelope: CloudEvents 1.0 attributes around a protobuf payload.
//!
//! Every domain event travels in the same [`Event`] envelope so that consumers can route,
//! deduplicate and audit events without decoding payloads. The envelope is checked once,
//! when it is built ([`EventBuilder::build`]): after that every attribute is non-empty
//! where CloudEvents requires it and can travel in a NATS header (no line breaks, no
//! surrounding whitespace), and the topic is a literal NATS subject suffix.
//!
//! The *topic* decides where the event is published (`session.created` under the bus's
//! subject root); it is not a CloudEvents attribute. CloudEvents' own `subject` names the
//! resource the event is about (a session or run id).

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::ValidationError;
use crate::topic;

/// Default `datacontenttype`: payloads are protobuf messages of `agentmesh.events.v1`.
pub const DEFAULT_DATA_CONTENT_TYPE: &str = "application/protobuf";

/// A domain event: CloudEvents attributes, the topic it is published on, and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    id: String,
    topic: String,
    source: String,
    event_type: String,
    subject: Option<String>,
    time: DateTime<Utc>,
    tenant: Option<String>,
    correlation_id: Option<String>,
    actor: Option<String>,
    data_content_type: String,
    data_schema: Option<String>,
    data: Bytes,
}

impl Event {
    /// Starts an event on `topic` (e.g. `session.created`), emitted by `source`
    /// (e.g. `agentmesh/session-store`) with CloudEvents `type` `event_type`
    /// (e.g. `agentmesh.session.created`).
    ///
    /// The id defaults to a fresh UUID v7 and the time to now.
    pub fn builder(topic: impl Into<String>, source: impl Into<String>, event_type: impl Into<String>) -> EventBuilder {
        EventBuilder {
            event: Event {
                id: uuid::Uuid::now_v7().to_string(),
                topic: topic.into(),
                source: source.into(),
                event_type: event_type.into(),
                subject: None,
                time: Utc::now(),
                tenant: None,
                correlation_id: None,
                actor: None,
                data_content_type: DEFAULT_DATA_CONTENT_TYPE.to_owned(),
                data_schema: None,
                data: Bytes::new(),
            },
        }
    }

    /// CloudEvents `id`; also the broker's deduplication key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Topic relative to the bus's subject root (e.g. `run.<run_id>.output`).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// CloudEvents `source`: the emitting service (e.g. `agentmesh/session-store`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// CloudEvents `type` (e.g. `agentmesh.session.created`).
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// CloudEvents `subject`: id of the resource the event is about.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// CloudEvents `time`: when the event happened.
    pub fn time(&self) -> DateTime<Utc> {
        self.time
    }

    /// `tenant` extension attribute.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// `correlationid` extension attribute: the request that caused the event.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// `actor` extension attribute: the service that called the producer on the user's
    /// behalf (audit).
    pub fn actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// CloudEvents `datacontenttype` (default [`DEFAULT_DATA_CONTENT_TYPE`]).
    pub fn data_content_type(&self) -> &str {
        &self.data_content_type
    }

    /// CloudEvents `dataschema`: protobuf full name of the payload message
    /// (e.g. `agentmesh.events.v1.SessionCreated`).
    pub fn data_schema(&self) -> Option<&str> {
        self.data_schema.as_deref()
    }

    /// The encoded payload.
    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

/// Builder of an [`Event`]; see [`Event::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct EventBuilder {
    event: Event,
}

impl EventBuilder {
    /// Overrides the generated id, e.g. with an outbox row id so a re-sent event is
    /// deduplicated.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.event.id = id.into();
        self
    }

    /// Sets CloudEvents `subject` (the resource id).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = Some(subject.into());
        self
    }

    /// Overrides the event time (default: when the builder was created).
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        self.event.time = time;
        self
    }

    /// Sets the `tenant` extension.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.event.tenant = Some(tenant.into());
        self
    }

    /// Sets the `correlationid` extension.
    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.event.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets the `actor` extension.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.event.actor = Some(actor.into());
        self
    }

    /// Overrides `datacontenttype`.
    pub fn data_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.event.data_content_type = content_type.into();
        self
    }

    /// Sets `dataschema` (protobuf full name of the payload).
    pub fn data_schema(mut self, schema: impl Into<String>) -> Self {
        self.event.data_schema = Some(schema.into());
        self
    }

    /// Sets the encoded payload.
    pub fn data(mut self, data: impl Into<Bytes>) -> Self {
        self.event.data = data.into();
        self
    }

    /// Validates the topic and attributes and returns the event.
    pub fn build(self) -> Result<Event, ValidationError> {
        let event = self.event;
        topic::validate_topic(&event.topic)?;
        check_required("id", &event.id)?;
        check_required("source", &event.source)?;
        check_required("type", &event.event_type)?;
        check_required("datacontenttype", &event.data_content_type)?;
        check_optional("subject", event.subject.as_deref())?;
        check_optional("tenant", event.tenant.as_deref())?;
        check_optional("correlationid", event.correlation_id.as_deref())?;
        check_optional("actor", event.actor.as_deref())?;
        check_optional("dataschema", event.data_schema.as_deref())?;
        Ok(event)
    }
}

fn check_required(name: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Attribute { name, reason: "must not be empty" });
    }
    check_header_safe(name, value)
}

fn check_optional(name: &'static str, value: Option<&str>) -> Result<(), ValidationError> {
    value.map_or(Ok(()), |value| check_required(name, value))
}

/// Attributes travel as NATS header values, which end at a line break and lose
/// surrounding whitespace.
fn check_header_safe(name: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.chars().any(char::is_control) {
        return Err(ValidationError::Attribute { name, reason: "must not contain control characters" });
    }
    if value.trim() != value {
        return Err(ValidationError::Attribute { name, reason: "must not start or end with whitespace" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> EventBuilder {
        Event::builder("session.created", "agentmesh/session-store", "agentmesh.session.created")
    }

    #[test]
    fn defaults_are_a_v7_id_now_and_protobuf() {
        let before = Utc::now();
        let event = builder().build().unwrap();
        let id = uuid::Uuid::parse_str(event.id()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert!(event.time() >= before && event.time() <= Utc::now());
        assert_eq!(event.data_content_type(), DEFAULT_DATA_CONTENT_TYPE);
        assert_eq!(event.subject(), None);
        assert!(event.data().is_empty());
    }

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let first = builder().build().unwrap();
        let second = builder().build().unwrap();
        assert_ne!(first.id(), second.id());
        assert!(first.id() < second.id());
    }

    #[test]
    fn builder_sets_every_attribute() {
        let event = builder()
            .id("evt-1")
            .subject("sess-1")
            .tenant("acme")
            .correlation_id("req-1")
            .data_schema("agentmesh.events.v1.SessionCreated")
            .data_content_type("application/json")
            .data(Bytes::from_static(b"{}"))
            .build()
            .unwrap();
        assert_eq!(event.id(), "evt-1");
        assert_eq!(event.topic(), "session.created");
        assert_eq!(event.source(), "agentmesh/session-store");
        assert_eq!(event.event_type(), "agentmesh.session.created");
        assert_eq!(event.subject(), Some("sess-1"));
        assert_eq!(event.tenant(), Some("acme"));
        assert_eq!(event.correlation_id(), Some("req-1"));
        assert_eq!(event.data_schema(), Some("agentmesh.events.v1.SessionCreated"));
        assert_eq!(event.data_content_type(), "application/json");
        assert_eq!(event.data().as_ref(), b"{}");
    }

    #[test]
    fn invalid_topics_are_rejected() {
        let err = Event::builder("session.*", "s", "t").build().unwrap_err();
        assert!(matches!(err, ValidationError::Topic { .. }));
        let err = Event::builder("session created", "s", "t").build().unwrap_err();
        assert!(matches!(err, ValidationError::Topic { .. }));
    }

    #[test]
    fn empty_required_attributes_are_rejected() {
        let err = Event::builder("a.b", "", "t").build().unwrap_err();
        assert_eq!(err, ValidationError::Attribute { name: "source", reason: "must not be empty" });
        let err = builder().id("").build().unwrap_err();
        assert!(matches!(err, ValidationError::Attribute { name: "id", .. }));
    }

    #[test]
    fn header_unsafe_values_are_rejected() {
        let err = builder().tenant("acme\r\nNats-Msg-Id: x").build().unwrap_err();
        assert!(matches!(err, ValidationError::Attribute { name: "tenant", .. }));
        let err = builder().subject(" sess").build().unwrap_err();
        assert!(matches!(err, ValidationError::Attribute { name: "subject", .. }));
        let err = builder().data_schema("").build().unwrap_err();
        assert!(matches!(err, ValidationError::Attribute { name: "dataschema", .. }));
    }
}
