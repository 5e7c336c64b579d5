//! CloudEvents NATS protocol binding, binary content mode.
//!
//! On NATS an [`Event`] is a message whose body is the payload and whose attributes are
//! headers: `ce-<attribute>` for every CloudEvents attribute and extension, and
//! `Content-Type` for `datacontenttype`. Consumers in any language can read them with a
//! CloudEvents SDK, and routing or auditing never needs to decode the payload.
//! `Nats-Msg-Id` carries the event id too, which is what JetStream deduplicates on.
//!
//! Decoding is strict: a message missing `ce-specversion`, `ce-id`, `ce-source`,
//! `ce-type` or `ce-time` (agentmesh always sets the time), with an unparseable time, or
//! outside the subject root is rejected with a [`DecodeError`]; nothing here panics on
//! foreign input.

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue, NATS_MESSAGE_ID};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::envelope::Event;
use crate::error::{DecodeError, ValidationError};
use crate::topic;

/// The CloudEvents version this binding writes and accepts.
const SPEC_VERSION: &str = "1.0";

const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
const ID: HeaderName = HeaderName::from_static("ce-id");
const SOURCE: HeaderName = HeaderName::from_static("ce-source");
const TYPE: HeaderName = HeaderName::from_static("ce-type");
const SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
const TIME: HeaderName = HeaderName::from_static("ce-time");
const TENANT: HeaderName = HeaderName::from_static("ce-tenant");
const CORRELATION_ID: HeaderName = HeaderName::from_static("ce-correlationid");
const ACTOR: HeaderName = HeaderName::from_static("ce-actor");
const DATA_SCHEMA: HeaderName = HeaderName::from_static("ce-dataschema");
const CONTENT_TYPE: HeaderName = HeaderName::from_static("Content-Type");

/// The headers of `event`'s NATS message (its body is `event.data()`).
pub(crate) fn encode(event: &Event) -> Result<HeaderMap, ValidationError> {
    let time = event.time().to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let attributes = [
        (SPECVERSION, "specversion", Some(SPEC_VERSION)),
        (ID, "id", Some(event.id())),
        (NATS_MESSAGE_ID, "id", Some(event.id())),
        (SOURCE, "source", Some(event.source())),
        (TYPE, "type", Some(event.event_type())),
        (TIME, "time", Some(time.as_str())),
        (CONTENT_TYPE, "datacontenttype", Some(event.data_content_type())),
        (SUBJECT, "subject", event.subject()),
        (TENANT, "tenant", event.tenant()),
        (CORRELATION_ID, "correlationid", event.correlation_id()),
        (ACTOR, "actor", event.actor()),
        (DATA_SCHEMA, "dataschema", event.data_schema()),
    ];
    let mut headers = HeaderMap::new();
    for (header, attribute, value) in attributes {
        let Some(value) = value else { continue };
        let value: HeaderValue = value
            .parse()
            .map_err(|_| ValidationError::Attribute { name: attribute, reason: "cannot be a NATS header value" })?;
        headers.insert(header, value);
    }
    Ok(headers)
}

/// The event carried by a message on `subject` under `root`.
pub(crate) fn decode(
    root: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<Event, DecodeError> {
    let empty = HeaderMap::new();
    let headers = headers.unwrap_or(&empty);

    let spec_version = required(headers, SPECVERSION, "ce-specversion")?;
    if spec_version != SPEC_VERSION {
        return Err(DecodeError::InvalidAttribute {
            name: "ce-specversion",
            reason: format!("unsupported version {spec_version:?}"),
        });
    }
    let id = required(headers, ID, "ce-id")?;
    let source = required(headers, SOURCE, "ce-source")?;
    let event_type = required(headers, TYPE, "ce-type")?;
    let time = required(headers, TIME, "ce-time")?;
    let time = DateTime::parse_from_rfc3339(time)
        .map_err(|err| DecodeError::InvalidAttribute { name: "ce-time", reason: err.to_string() })?
        .with_timezone(&Utc);
    let topic = topic::strip_root(root, subject)
        .ok_or_else(|| DecodeError::ForeignSubject { subject: subject.to_owned(), root: root.to_owned() })?;

    let mut builder = Event::builder(topic, source, event_type).id(id).time(time).data(payload);
    if let Some(value) = optional(headers, SUBJECT) {
        builder = builder.subject(value);
    }
    if let Some(value) = optional(headers, TENANT) {
        builder = builder.tenant(value);
    }
    if let Some(value) = optional(headers, CORRELATION_ID) {
        builder = builder.correlation_id(value);
    }
    if let Some(value) = optional(headers, ACTOR) {
        builder = builder.actor(value);
    }
    if let Some(value) = optional(headers, DATA_SCHEMA) {
        builder = builder.data_schema(value);
    }
    if let Some(value) = optional(headers, CONTENT_TYPE) {
        builder = builder.data_content_type(value);
    }
    Ok(builder.build()?)
}

fn required<'a>(headers: &'a HeaderMap, header: HeaderName, name: &'static str) -> Result<&'a str, DecodeError> {
    optional(headers, header).ok_or(DecodeError::MissingAttribute(name))
}

fn optional(headers: &HeaderMap, header: HeaderName) -> Option<&str> {
    headers.get(header).map(HeaderValue::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "agentmesh";

    fn full_event() -> Event {
        Event::builder("session.created", "agentmesh/session-store", "agentmesh.session.created")
            .subject("sess-1")
            .tenant("acme")
            .correlation_id("req-1")
            .actor("agent-orchestrator")
            .data_schema("agentmesh.events.v1.SessionCreated")
            .data(Bytes::from_static(b"\x0a\x06sess-1"))
            .build()
            .unwrap()
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(HeaderValue::as_str)
    }

    #[test]
    fn encodes_binary_mode_headers() {
        let event = full_event();
        let headers = encode(&event).unwrap();
        assert_eq!(header(&headers, "ce-specversion"), Some("1.0"));
        assert_eq!(header(&headers, "ce-id"), Some(event.id()));
        assert_eq!(header(&headers, "Nats-Msg-Id"), Some(event.id()));
        assert_eq!(header(&headers, "ce-source"), Some("agentmesh/session-store"));
        assert_eq!(header(&headers, "ce-type"), Some("agentmesh.session.created"));
        assert_eq!(header(&headers, "ce-subject"), Some("sess-1"));
        assert_eq!(header(&headers, "ce-tenant"), Some("acme"));
        assert_eq!(header(&headers, "ce-correlationid"), Some("req-1"));
        assert_eq!(header(&headers, "ce-actor"), Some("agent-orchestrator"));
        assert_eq!(header(&headers, "ce-dataschema"), Some("agentmesh.events.v1.SessionCreated"));
        assert_eq!(header(&headers, "Content-Type"), Some("application/protobuf"));
        let time = header(&headers, "ce-time").unwrap();
        assert!(time.ends_with('Z'), "{time} is not RFC 3339 UTC");
        assert_eq!(DateTime::parse_from_rfc3339(time).unwrap(), event.time());
    }

    #[test]
    fn optional_attributes_are_omitted() {
        let event = Event::builder("a.b", "s", "t").build().unwrap();
        let headers = encode(&event).unwrap();
        for absent in ["ce-subject", "ce-tenant", "ce-correlationid", "ce-actor", "ce-dataschema"] {
            assert_eq!(header(&headers, absent), None, "{absent}");
        }
    }

    #[test]
    fn round_trip_preserves_every_attribute() {
        for event in [full_event(), Event::builder("run.r1.output", "s", "t").build().unwrap()] {
            let headers = encode(&event).unwrap();
            let subject = topic::subject(ROOT, event.topic());
            let decoded = decode(ROOT, &subject, Some(&headers), event.data().clone()).unwrap();
            assert_eq!(decoded, event);
        }
    }

    #[test]
    fn missing_required_attributes_are_rejected() {
        let event = full_event();
        let subject = topic::subject(ROOT, event.topic());
        for (name, missing) in [
            ("ce-specversion", "ce-specversion"),
            ("ce-id", "ce-id"),
            ("ce-source", "ce-source"),
            ("ce-type", "ce-type"),
            ("ce-time", "ce-time"),
        ] {
            let mut headers = HeaderMap::new();
            for (key, values) in encode(&event).unwrap().iter() {
                if AsRef::<str>::as_ref(key) != name {
                    for value in values {
                        headers.append(key.clone(), value.clone());
                    }
                }
            }
            let err = decode(ROOT, &subject, Some(&headers), Bytes::new()).unwrap_err();
            assert_eq!(err, DecodeError::MissingAttribute(missing));
        }
    }

    #[test]
    fn messages_without_headers_are_rejected() {
        let err = decode(ROOT, "agentmesh.a.b", None, Bytes::from_static(b"raw")).unwrap_err();
        assert_eq!(err, DecodeError::MissingAttribute("ce-specversion"));
    }

    #[test]
    fn bad_values_are_rejected() {
        let event = full_event();
        let subject = topic::subject(ROOT, event.topic());

        let mut headers = encode(&event).unwrap();
        headers.insert("ce-time", "yesterday");
        let err = decode(ROOT, &subject, Some(&headers), Bytes::new()).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidAttribute { name: "ce-time", .. }));

        let mut headers = encode(&event).unwrap();
        headers.insert("ce-specversion", "0.3");
        let err = decode(ROOT, &subject, Some(&headers), Bytes::new()).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidAttribute { name: "ce-specversion", .. }));

        let mut headers = encode(&event).unwrap();
        headers.insert("ce-id", "");
        let err = decode(ROOT, &subject, Some(&headers), Bytes::new()).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid(ValidationError::Attribute { name: "id", .. })));
    }

    #[test]
    fn subjects_outside_the_root_are_rejected() {
        let event = full_event();
        let headers = encode(&event).unwrap();
        for subject in ["other.session.created", "agentmesh", "agentmeshx.a"] {
            let err = decode(ROOT, subject, Some(&headers), Bytes::new()).unwrap_err();
            assert!(matches!(err, DecodeError::ForeignSubject { .. }), "{subject}");
        }
    }
}
