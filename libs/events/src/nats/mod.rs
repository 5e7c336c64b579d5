//! The production bus: NATS JetStream.
//!
//! One stream (default `AGENTMESH`) captures every subject under the subject root
//! (`agentmesh.>`), file-backed, with limits retention (age, and optionally bytes and
//! count) and `Nats-Msg-Id` deduplication. [`NatsBus::connect`] creates the stream or
//! brings an existing one's subjects and limits in line with [`NatsConfig`], so a config
//! change is applied by restarting a service. Publishes wait for the JetStream ack;
//! subscriptions are pull consumers with explicit acks (module `consumer`); the last
//! event of a topic is read with the stream's get-last-message-by-subject API. Messages
//! use the CloudEvents NATS binding (module `binding`).

mod binding;
mod consumer;
mod errors;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::{ConnectOptions, connection::State};
use async_trait::async_trait;

use crate::bus::{
    DEFAULT_DUPLICATE_WINDOW, DEFAULT_MAX_AGE, EventBus, EventStream, Health, PublishAck, Publisher, Subscriber,
    SubscriptionSpec, validate_name,
};
use crate::envelope::Event;
use crate::error::{EventsError, ValidationError};
use crate::{telemetry, topic};

/// Default stream name.
pub const DEFAULT_STREAM_NAME: &str = "AGENTMESH";

/// Default subject root: events go to `agentmesh.<topic>`.
pub const DEFAULT_SUBJECT_ROOT: &str = "agentmesh";

/// Where to connect and how the stream is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated; credentials may be embedded
    /// (`nats://user:pass@host:4222`).
    pub url: String,
    /// JetStream stream holding every event under `subject_root`.
    pub stream_name: String,
    /// First subject token of every event.
    pub subject_root: String,
    /// Events older than this are removed; zero keeps them until another limit hits.
    pub max_age: Duration,
    /// Window in which a repeated event id is recognised as a duplicate; zero means the
    /// server default (2 minutes).
    pub duplicate_window: Duration,
    /// Cap on stored bytes (oldest removed first); `None` is unlimited.
    pub max_bytes: Option<u64>,
    /// Cap on stored events (oldest removed first); `None` is unlimited.
    pub max_messages: Option<u64>,
    /// Stream replicas in a JetStream cluster (1 to 5).
    pub replicas: usize,
    /// Time allowed to establish the connection.
    pub connect_timeout: Duration,
    /// Time allowed for each JetStream request, publish acks included.
    pub request_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            stream_name: DEFAULT_STREAM_NAME.to_owned(),
            subject_root: DEFAULT_SUBJECT_ROOT.to_owned(),
            max_age: DEFAULT_MAX_AGE,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_bytes: None,
            max_messages: None,
            replicas: 1,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl NatsConfig {
    /// Checks names and settings before anything is sent to the server.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("stream name", &self.stream_name)?;
        topic::validate_root(&self.subject_root)?;
        let setting = |name, reason| Err(ValidationError::Setting { name, reason });
        if !(1..=5).contains(&self.replicas) {
            return setting("replicas", "must be between 1 and 5");
        }
        if self.connect_timeout.is_zero() {
            return setting("connect_timeout", "must be positive");
        }
        if self.request_timeout.is_zero() {
            return setting("request_timeout", "must be positive");
        }
        if !self.max_age.is_zero() && self.duplicate_window() > self.max_age {
            return setting("duplicate_window", "must not exceed max_age");
        }
        Ok(())
    }

    fn duplicate_window(&self) -> Duration {
        if self.duplicate_window.is_zero() { DEFAULT_DUPLICATE_WINDOW } else { self.duplicate_window }
    }

    /// The stream configuration this config asks for.
    fn stream_config(&self) -> stream::Config {
        let limit = |value: Option<u64>| value.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        stream::Config {
            name: self.stream_name.clone(),
            subjects: vec![topic::subject(&self.subject_root, ">")],
            max_age: self.max_age,
            duplicate_window: self.duplicate_window(),
            max_bytes: limit(self.max_bytes),
            max_messages: limit(self.max_messages),
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }
}

/// The JetStream bus. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct NatsBus {
    /// The core connection, kept for its connection state.
    client: async_nats::Client,
    /// JetStream API over `client`, with `request_timeout` on every request and ack.
    jetstream: jetstream::Context,
    /// Stream name and subject root, needed on every publish and subscribe.
    config: Arc<NatsConfig>,
    /// Whether the server takes several filter subjects per consumer (NATS 2.10+); older
    /// servers get an unfiltered consumer and filtering happens here.
    multiple_filters: bool,
}

impl NatsBus {
    /// Connects and creates the stream, or updates its subjects and limits when they
    /// differ from `config`.
    pub async fn connect(config: NatsConfig) -> Result<Self, EventsError> {
        config.validate()?;
        let client = ConnectOptions::new()
            .name("agentmesh-events")
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .event_callback(|event| async move {
                tracing::info!(%event, "nats connection event");
            })
            .connect(config.url.as_str())
            .await
            .map_err(errors::connect)?;
        let jetstream = jetstream::ContextBuilder::new().timeout(config.request_timeout).build(client.clone());
        let multiple_filters = supports_multiple_filters(&client.server_info().version);
        let bus = NatsBus { client, jetstream, config: Arc::new(config), multiple_filters };
        bus.ensure_stream().await?;
        Ok(bus)
    }

    /// The configuration the bus was connected with.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// Connection state; the client reconnects on its own after a drop.
    pub fn health(&self) -> Health {
        match self.client.connection_state() {
            State::Connected => Health::Connected,
            State::Pending => Health::Connecting,
            State::Disconnected => Health::Disconnected,
        }
    }

    /// Deletes the stream with every stored event and consumer. For tests and
    /// maintenance; publishing fails until a bus connects again and recreates it.
    pub async fn delete_stream(&self) -> Result<(), EventsError> {
        self.jetstream
            .delete_stream(&self.config.stream_name)
            .await
            .map_err(|err| errors::existing_stream("delete stream", err))?;
        Ok(())
    }

    async fn ensure_stream(&self) -> Result<(), EventsError> {
        let desired = self.config.stream_config();
        let mut attempt = 1;
        let stream = loop {
            match self.jetstream.get_or_create_stream(desired.clone()).await {
                Ok(stream) => break stream,
                Err(err) if attempt < STREAM_CREATE_ATTEMPTS && is_store_race(&err) => {
                    tracing::debug!(stream = %desired.name, %err, attempt, "stream store not ready; creating again");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(err) => return Err(errors::stream("create stream", err)),
            }
        };
        if let Some(updated) = reconcile(&stream.cached_info().config, &desired) {
            tracing::info!(stream = %desired.name, "updating stream subjects and limits");
            self.jetstream.update_stream(&updated).await.map_err(|err| errors::stream("update stream", err))?;
        }
        Ok(())
    }

    async fn store(&self, event: Event) -> Result<PublishAck, EventsError> {
        let headers = binding::encode(&event)?;
        let subject = topic::subject(&self.config.subject_root, event.topic());
        let message = PublishMessage::build().headers(headers).payload(event.data().clone());
        let ack = self
            .jetstream
            .send_publish(subject, message)
            .await
            .map_err(errors::publish)?
            .await
            .map_err(errors::publish)?;
        Ok(PublishAck { sequence: ack.sequence, duplicate: ack.duplicate })
    }

    /// The stream's last message on `topic`'s subject (one `STREAM.MSG.GET` request),
    /// decoded like a delivery.
    async fn last_stored(&self, topic: &str) -> Result<Option<Event>, EventsError> {
        topic::validate_topic(topic)?;
        let root = self.config.subject_root.as_str();
        let stream = self
            .jetstream
            .get_stream_no_info(&self.config.stream_name)
            .await
            .map_err(|err| errors::existing_stream("read last event", err))?;
        let message = match stream.get_last_raw_message_by_subject(&topic::subject(root, topic)).await {
            Ok(message) => message,
            Err(err) if errors::is_no_message(&err) => return Ok(None),
            Err(err) => return Err(errors::last_message(err)),
        };
        binding::decode(root, &message.subject, Some(&message.headers), message.payload)
            .map(Some)
            .map_err(|source| EventsError::Malformed { sequence: message.sequence, source })
    }
}

/// Tries at creating a stream whose storage directory the server failed to create.
const STREAM_CREATE_ATTEMPTS: u32 = 3;

/// Whether creating a stream failed because the server could not create its storage
/// directory (10049 / 10077): JetStream removes an account's stream directory when its
/// last stream is deleted, and a creation racing that removal fails once, then succeeds.
fn is_store_race(err: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::ErrorCode;
    use jetstream::context::CreateStreamErrorKind;
    matches!(err.kind(), CreateStreamErrorKind::JetStream(error)
        if error.error_code() == ErrorCode::STREAM_CREATE || error.error_code() == ErrorCode::STREAM_STORE_FAILED)
}

/// The existing stream's config with `desired`'s subjects and limits, when they differ.
/// Everything else (storage, placement...) is kept, since the server refuses to change it.
fn reconcile(current: &stream::Config, desired: &stream::Config) -> Option<stream::Config> {
    let unchanged = current.subjects == desired.subjects
        && current.max_age == desired.max_age
        && current.duplicate_window == desired.duplicate_window
        && current.max_bytes == desired.max_bytes
        && current.max_messages == desired.max_messages
        && current.num_replicas == desired.num_replicas;
    (!unchanged).then(|| stream::Config {
        subjects: desired.subjects.clone(),
        max_age: desired.max_age,
        duplicate_window: desired.duplicate_window,
        max_bytes: desired.max_bytes,
        max_messages: desired.max_messages,
        num_replicas: desired.num_replicas,
        ..current.clone()
    })
}

/// Whether a server `version` (e.g. `2.10.7`) supports `filter_subjects`.
fn supports_multiple_filters(version: &str) -> bool {
    let mut parts = version.split('.').map(|part| part.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 10),
        _ => false,
    }
}

#[async_trait]
impl Publisher for NatsBus {
    async fn publish(&self, event: Event) -> Result<PublishAck, EventsError> {
        let result = self.store(event).await;
        telemetry::record_publish("nats", &result);
        result
    }
}

#[async_trait]
impl Subscriber for NatsBus {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<EventStream, EventsError> {
        consumer::subscribe(self, spec).await
    }

    async fn last_event(&self, topic: &str) -> Result<Option<Event>, EventsError> {
        self.last_stored(topic).await
    }
}

impl EventBus for NatsBus {
    fn health(&self) -> Health {
        NatsBus::health(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_the_agentmesh_root() {
        let config = NatsConfig::default();
        assert!(config.validate().is_ok());
        let stream = config.stream_config();
        assert_eq!(stream.name, "AGENTMESH");
        assert_eq!(stream.subjects, vec!["agentmesh.>".to_owned()]);
        assert_eq!(stream.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(stream.duplicate_window, Duration::from_secs(120));
        assert_eq!((stream.max_bytes, stream.max_messages), (-1, -1));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            NatsConfig { stream_name: "a.b".into(), ..Default::default() },
            NatsConfig { subject_root: "agentmesh.>".into(), ..Default::default() },
            NatsConfig { replicas: 0, ..Default::default() },
            NatsConfig { max_age: Duration::from_secs(60), ..Default::default() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn reconcile_changes_only_subjects_and_limits() {
        let desired = NatsConfig::default().stream_config();
        assert!(reconcile(&desired, &desired).is_none());
        let current = stream::Config { max_messages: 10, storage: stream::StorageType::Memory, ..desired.clone() };
        let updated = reconcile(&current, &desired).unwrap();
        assert_eq!(updated.max_messages, -1);
        assert_eq!(updated.storage, stream::StorageType::Memory);
    }

    #[test]
    fn multiple_filters_need_nats_2_10() {
        assert!(supports_multiple_filters("2.10.0"));
        assert!(supports_multiple_filters("2.11.3"));
        assert!(supports_multiple_filters("3.0.0"));
        assert!(!supports_multiple_filters("2.9.10"));
        assert!(!supports_multiple_filters(""));
    }
}
