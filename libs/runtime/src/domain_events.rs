//! How a service's domain events are built and, without an outbox, published: the
//! envelope every owner of data fills the same way, so a service only names its topics
//! and payloads.
//!
//! An event built by [`EventSource::event`] carries the CloudEvents attributes of the
//! mesh (ARCHITECTURE §6): type `agentmesh.<topic>`, data schema
//! `agentmesh.events.v1.<payload>`, the protobuf payload, the owner's tenant when it has
//! one, and the current request's correlation id and calling service (the actor) when
//! it is built while serving one. Stores without a transactional outbox hand the events
//! of a completed write to an [`EventSink`]; [`PublishDirect`] publishes them to the bus
//! at once (at most once if the process dies between the write and the publish; a
//! PostgreSQL store writes its events to its outbox instead, see
//! `agentmesh_postgres::outbox`).
//!
//! ```
//! use agentmesh_proto::agentmesh::events::v1 as pb;
//! use agentmesh_runtime::domain_events::EventSource;
//!
//! const EVENTS: EventSource = EventSource::new("agentmesh/agent-orchestrator");
//!
//! let session_id = uuid::Uuid::nil().to_string();
//! let payload = pb::SessionDeleted { session_id: session_id.clone(), user_id: None };
//! let event = EVENTS.event("session.deleted", session_id, Some("acme"), "SessionDeleted", &payload);
//! assert_eq!(event.event_type(), "agentmesh.session.deleted");
//! assert_eq!(event.data_schema(), Some("agentmesh.events.v1.SessionDeleted"));
//! assert_eq!(event.tenant(), Some("acme"));
//! ```

use std::sync::Arc;

use agentmesh_events::{Event, Publisher};
use async_trait::async_trait;

use crate::context::RequestContext;

/// The CloudEvents `source` of one service's events, and the builder of its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSource {
    source: &'static str,
}

impl EventSource {
    /// Events from `source` (`agentmesh/<service>`).
    pub const fn new(source: &'static str) -> Self {
        Self { source }
    }

    /// The `source` attribute.
    pub const fn as_str(&self) -> &'static str {
        self.source
    }

    /// An event on `topic` about `subject` (an id), carrying `payload`, whose protobuf full
    /// name is `agentmesh.events.v1.<schema>`. `tenant` is the owner's (`None` or empty for
    /// records of no tenant: the extension is then omitted).
    pub fn event(
        &self,
        topic: &str,
        subject: String,
        tenant: Option<&str>,
        schema: &str,
        payload: &impl prost::Message,
    ) -> Event {
        let event_type = format!("agentmesh.{topic}");
        let schema = format!("agentmesh.events.v1.{schema}");
        let data = payload.encode_to_vec();
        let essential = || {
            Event::builder(topic, self.source, event_type.clone())
                .subject(subject.clone())
                .data_schema(schema.clone())
                .data(data.clone())
        };
        let mut builder = essential();
        if let Some(tenant) = tenant.filter(|tenant| !tenant.is_empty()) {
            builder = builder.tenant(tenant);
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
            // Topic, source and type are the service's constants and the subject an id:
            // always valid.
            essential().build().unwrap_or_else(|error| unreachable!("essential event attributes are valid: {error}"))
        })
    }
}

/// Receives the events of completed writes.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Delivers `events`; failures are the sink's to log and count, never the caller's.
    async fn emit(&self, events: Vec<Event>);
}

/// Publishes straight to the bus; a lost event is logged and counted in
/// `agentmesh_events_publish_failures_total` under its source.
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
                let source = event.source().to_owned();
                metrics::counter!("agentmesh_events_publish_failures_total", "source" => source).increment(1);
                tracing::error!(%error, event_type = event.event_type(), event_id = event.id(), "event lost");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_events::{MemoryBus, StartPosition, Subscriber, SubscriptionSpec};
    use agentmesh_proto::agentmesh::events::v1 as pb;
    use futures::StreamExt as _;

    use super::*;
    use crate::config::ServiceName;

    const EVENTS: EventSource = EventSource::new("agentmesh/test");

    fn deleted(tenant: Option<&str>) -> Event {
        let payload = pb::SessionDeleted { session_id: "s1".into(), user_id: None };
        EVENTS.event("session.deleted", "s1".into(), tenant, "SessionDeleted", &payload)
    }

    #[tokio::test]
    async fn events_name_the_calling_service_and_the_request() {
        let context = RequestContext {
            correlation_id: "req-7".into(),
            actor: Some(ServiceName::AgentOrchestrator),
            ..RequestContext::new()
        };
        let event = context.scope(async { deleted(Some("acme")) }).await;
        assert_eq!(event.actor(), Some("agent-orchestrator"));
        assert_eq!(event.correlation_id(), Some("req-7"));
        assert_eq!(event.tenant(), Some("acme"));
        assert_eq!(event.source(), "agentmesh/test");
        let outside = deleted(Some(""));
        assert_eq!((outside.actor(), outside.tenant()), (None, None), "no call, no actor; no tenant");
    }

    #[tokio::test]
    async fn publishing_directly_reaches_the_bus() {
        let bus = MemoryBus::default();
        let spec = SubscriptionSpec::ephemeral(vec!["session.*".into()]).start(StartPosition::All);
        let mut deliveries = bus.subscribe(spec).await.unwrap_or_else(|e| panic!("{e}"));
        PublishDirect::new(Arc::new(bus.clone())).emit(vec![deleted(None)]).await;
        let delivery = deliveries.next().await.and_then(Result::ok).map(|d| d.event().event_type().to_owned());
        assert_eq!(delivery.as_deref(), Some("agentmesh.session.deleted"));
    }
}
