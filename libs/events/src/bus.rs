//! The publish/subscribe contract every bus implements.
//!
//! Services depend on these object-safe traits (`Arc<dyn Publisher>`,
//! `Arc<dyn Subscriber>`, or `Arc<dyn EventBus>` for both plus health), never on a
//! concrete bus, so the all-in-one binary runs on [`crate::MemoryBus`] and production on
//! [`crate::NatsBus`] with the same service code. The semantics are JetStream's:
//! publishing resolves once the event is stored, subscriptions read an append-only log
//! by sequence and need an explicit ack per delivery.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::envelope::Event;
use crate::error::{EventsError, ValidationError};
use crate::topic;

/// Outstanding (delivered, not yet acked) deliveries per consumer; when reached, a
/// consumer delivers nothing new until acks or ack-wait expiries free a slot. Matches
/// JetStream's default `max_ack_pending` and is set explicitly on NATS consumers.
pub const MAX_ACK_PENDING: usize = 1000;

/// Default retention by age of both buses.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Default deduplication window of both buses (JetStream's default).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Default time a delivery may stay un-acked before it is redelivered.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// The broker's receipt for a published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    /// Stream sequence the event is stored at (for a duplicate: the original's).
    pub sequence: u64,
    /// The event id was already stored within the duplicate window; nothing new was
    /// stored.
    pub duplicate: bool,
}

/// Where a new consumer starts reading the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// From the oldest retained event.
    #[default]
    All,
    /// Only events published after the consumer is created.
    New,
    /// From the event after this stream sequence (resume from a `Last-Event-ID`).
    AfterSequence(u64),
}

/// What to subscribe to and how deliveries are acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Durable consumer name: its progress survives the subscriber (and the process).
    /// `None` creates an ephemeral consumer that lives as long as the stream of
    /// deliveries.
    pub durable_name: Option<String>,
    /// Topic filters relative to the subject root, wildcards allowed; empty means all.
    pub filter_topics: Vec<String>,
    /// Where a newly created consumer starts. Changing it for an existing durable
    /// consumer recreates that consumer, forgetting its progress.
    pub start: StartPosition,
    /// How long a delivery may stay un-acked before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one event before the bus gives up on it; `None` is unlimited.
    pub max_deliver: Option<i64>,
}

impl SubscriptionSpec {
    /// A durable consumer `name` over `filter_topics`, from the start of the log.
    pub fn durable(name: impl Into<String>, filter_topics: Vec<String>) -> Self {
        SubscriptionSpec { durable_name: Some(name.into()), ..Self::ephemeral(filter_topics) }
    }

    /// An ephemeral consumer over `filter_topics`, from the start of the log.
    pub fn ephemeral(filter_topics: Vec<String>) -> Self {
        SubscriptionSpec {
            durable_name: None,
            filter_topics,
            start: StartPosition::All,
            ack_wait: DEFAULT_ACK_WAIT,
            max_deliver: None,
        }
    }

    /// Replays `topic` after stream sequence `after` and then follows it live: what the
    /// gateway uses to resume a run's output stream from `Last-Event-ID`.
    pub fn replay(topic: impl Into<String>, after: u64) -> Self {
        SubscriptionSpec { start: StartPosition::AfterSequence(after), ..Self::ephemeral(vec![topic.into()]) }
    }

    /// Sets where a new consumer starts.
    #[must_use]
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Sets the ack wait.
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets the maximum number of deliveries per event.
    #[must_use]
    pub fn max_deliver(mut self, max_deliver: i64) -> Self {
        self.max_deliver = Some(max_deliver);
        self
    }

    /// Checks names, filters and settings; both buses call this before subscribing.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(name) = &self.durable_name {
            validate_name("durable consumer name", name)?;
        }
        for filter in &self.filter_topics {
            topic::validate_filter(filter)?;
        }
        if self.ack_wait.is_zero() {
            return Err(ValidationError::Setting { name: "ack_wait", reason: "must be positive" });
        }
        if self.max_deliver.is_some_and(|max| max < 1) {
            return Err(ValidationError::Setting {
                name: "max_deliver",
                reason: "must be at least 1 (None is unlimited)",
            });
        }
        Ok(())
    }

    /// Whether `topic` passes the filters.
    pub(crate) fn selects(&self, topic: &str) -> bool {
        self.filter_topics.is_empty() || self.filter_topics.iter().any(|filter| topic::matches(filter, topic))
    }
}

/// Checks a stream or consumer name: NATS allows only names usable as one subject token.
pub(crate) fn validate_name(kind: &'static str, name: &str) -> Result<(), ValidationError> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 128 {
        Some("must be at most 128 characters")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Some("may contain only ASCII letters, digits, `-` and `_`")
    } else {
        None
    };
    reason.map_or(Ok(()), |reason| Err(ValidationError::Name { kind, value: name.to_owned(), reason }))
}

/// Settles one delivery with the bus it came from.
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    /// See [`Delivery::ack`].
    async fn ack(&self) -> Result<(), EventsError>;
    /// See [`Delivery::nak`].
    async fn nak(&self, delay: Option<Duration>) -> Result<(), EventsError>;
}

/// One delivery of an event to a consumer; settle it with [`Delivery::ack`] or
/// [`Delivery::nak`], or it is redelivered after the ack wait.
pub struct Delivery {
    event: Event,
    sequence: u64,
    deliveries: u64,
    /// Bus-specific: a consumer handle in memory, the message's reply subject on NATS.
    settle: Box<dyn Settle>,
}

impl Delivery {
    pub(crate) fn new(event: Event, sequence: u64, deliveries: u64, settle: Box<dyn Settle>) -> Self {
        crate::telemetry::record_delivery(&event);
        Delivery { event, sequence, deliveries, settle }
    }

    /// The delivered event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Stream sequence of the event: strictly increasing in publish order, usable as an
    /// SSE event id and as [`StartPosition::AfterSequence`] to resume.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// How many times this event has been delivered to this consumer, this one included.
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    /// Whether the event was delivered before (and not acked in time, or nak'ed).
    pub fn redelivered(&self) -> bool {
        self.deliveries > 1
    }

    /// Marks the event processed; it is not delivered to this consumer again. Resolves
    /// once the bus has recorded the ack.
    pub async fn ack(&self) -> Result<(), EventsError> {
        self.settle.ack().await
    }

    /// Asks for redelivery, after `delay` if given, instead of waiting for the ack wait.
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), EventsError> {
        self.settle.nak(delay).await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event)
            .field("sequence", &self.sequence)
            .field("deliveries", &self.deliveries)
            .finish_non_exhaustive()
    }
}

/// Deliveries of a subscription, in stream order (redeliveries interleave).
///
/// An `Err` item reports one failed pull or one malformed message and the stream goes
/// on; it ends only if its consumer is deleted on the server (NATS). Dropping it ends
/// the subscription; a durable consumer keeps its progress.
pub type EventStream = BoxStream<'static, Result<Delivery, EventsError>>;

/// Connection state of a bus, for readiness checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Connected: publishes and deliveries flow.
    Connected,
    /// Not connected yet, or reconnecting after a drop.
    Connecting,
    /// Disconnected; publishes fail with [`EventsError::Unavailable`].
    Disconnected,
}

impl Health {
    /// Whether the service depending on the bus should report ready.
    pub fn is_ready(self) -> bool {
        self == Health::Connected
    }
}

/// Publishes events durably.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Stores `event` on its topic. Resolves only once the event is durably stored (or
    /// recognised as a duplicate of a stored event), so an outbox relay may mark it sent
    /// as soon as this returns `Ok`.
    async fn publish(&self, event: Event) -> Result<PublishAck, EventsError>;
}

/// Reads events from the log.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Creates (or resumes, for a durable name) a consumer and streams its deliveries.
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<EventStream, EventsError>;

    /// The newest event stored on `topic` (a literal topic, no wildcards), if any is retained.
    ///
    /// One lookup, without a consumer or a replay: what a restarted publisher reads to
    /// continue a per-topic numbering from the last event it actually stored. `None` when
    /// nothing was ever stored on `topic` or retention has removed all of it. A wildcard
    /// or malformed topic is [`EventsError::Invalid`].
    async fn last_event(&self, topic: &str) -> Result<Option<Event>, EventsError>;
}

/// A complete bus: publish, subscribe and report health.
///
/// `Arc<dyn EventBus>` upcasts to `Arc<dyn Publisher>` or `Arc<dyn Subscriber>`.
pub trait EventBus: Publisher + Subscriber {
    /// Current connection state.
    fn health(&self) -> Health;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_fill_defaults() {
        let spec = SubscriptionSpec::durable("relay", vec!["session.*".into()]);
        assert_eq!(spec.durable_name.as_deref(), Some("relay"));
        assert_eq!(spec.start, StartPosition::All);
        assert_eq!(spec.ack_wait, DEFAULT_ACK_WAIT);
        assert_eq!(spec.max_deliver, None);

        let spec = SubscriptionSpec::replay("run.r1.output", 41);
        assert_eq!(spec.durable_name, None);
        assert_eq!(spec.filter_topics, vec!["run.r1.output".to_owned()]);
        assert_eq!(spec.start, StartPosition::AfterSequence(41));
    }

    #[test]
    fn validation_rejects_bad_names_filters_and_settings() {
        let ok = SubscriptionSpec::durable("relay_1-a", vec!["run.*.output".into()]);
        assert!(ok.validate().is_ok());

        for name in ["", "a.b", "a b", "a*", "a>"] {
            let spec = SubscriptionSpec::durable(name, vec![]);
            assert!(matches!(spec.validate(), Err(ValidationError::Name { .. })), "{name:?} should be rejected");
        }
        let spec = SubscriptionSpec::ephemeral(vec!["a.>.b".into()]);
        assert!(matches!(spec.validate(), Err(ValidationError::Filter { .. })));
        let spec = SubscriptionSpec::ephemeral(vec![]).ack_wait(Duration::ZERO);
        assert!(matches!(spec.validate(), Err(ValidationError::Setting { .. })));
        let spec = SubscriptionSpec::ephemeral(vec![]).max_deliver(0);
        assert!(matches!(spec.validate(), Err(ValidationError::Setting { .. })));
    }

    #[test]
    fn empty_filters_select_everything() {
        let all = SubscriptionSpec::ephemeral(vec![]);
        assert!(all.selects("anything.at.all"));
        let some = SubscriptionSpec::ephemeral(vec!["session.*".into(), "run.>".into()]);
        assert!(some.selects("session.created"));
        assert!(some.selects("run.r1.output"));
        assert!(!some.selects("message.created"));
    }
}
