//! Subscriptions on NATS: JetStream pull consumers with explicit acks.
//!
//! A [`SubscriptionSpec`] becomes a pull consumer on the bus's stream: durable when it
//! has a name (the server keeps its ack floor, so a new subscription resumes where the
//! last one stopped), ephemeral otherwise (the server removes it once nobody pulls).
//! When an existing durable consumer's settings differ from the spec, it is updated in
//! place; if the server refuses the update (the start position cannot change), it is
//! deleted and recreated, which forgets its progress.
//!
//! Deliveries are pulled in bounded batches, so at most one batch per subscription is
//! buffered in the client, and every message is decoded with the CloudEvents binding.
//! A message that does not decode is terminated (never redelivered) and reported as
//! [`EventsError::Malformed`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, MessagesError};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use futures::StreamExt;

use super::{NatsBus, binding, errors};
use crate::bus::{Delivery, EventStream, MAX_ACK_PENDING, Settle, StartPosition, SubscriptionSpec};
use crate::error::EventsError;
use crate::topic;

/// Messages requested per pull: the most a subscription buffers in the client.
const PULL_BATCH: usize = 100;

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// Idle heartbeat the server sends during a pull; a missed one surfaces as an error.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

/// Creates or resumes the consumer for `spec` and streams its deliveries.
pub(super) async fn subscribe(bus: &NatsBus, spec: SubscriptionSpec) -> Result<EventStream, EventsError> {
    spec.validate()?;
    let root = bus.config.subject_root.as_str();
    let (config, filter_here) = consumer_config(&spec, root, bus.multiple_filters);
    let consumer = match &spec.durable_name {
        Some(name) => durable(bus, name, config).await?,
        None => bus
            .jetstream
            .create_consumer_on_stream(config, &bus.config.stream_name)
            .await
            .map_err(|err| errors::consumer("create consumer", err))?,
    };
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(errors::pull)?;

    let root: Arc<str> = Arc::from(root);
    let deliveries = messages
        .then(move |item| {
            let root = Arc::clone(&root);
            let filter_here = filter_here.clone();
            async move { to_delivery(item, &root, filter_here.as_deref()).await }
        })
        .filter_map(futures::future::ready);
    Ok(Box::pin(deliveries))
}

/// The pull consumer config for `spec`, and the spec itself when its filters must be
/// applied here: several filters on a server without `filter_subjects` (before NATS
/// 2.10) get a consumer over the whole stream instead.
fn consumer_config(
    spec: &SubscriptionSpec,
    root: &str,
    multiple_filters: bool,
) -> (pull::Config, Option<Arc<SubscriptionSpec>>) {
    let mut config = pull::Config {
        durable_name: spec.durable_name.clone(),
        deliver_policy: match spec.start {
            StartPosition::All => DeliverPolicy::All,
            StartPosition::New => DeliverPolicy::New,
            StartPosition::AfterSequence(sequence) => {
                DeliverPolicy::ByStartSequence { start_sequence: sequence.saturating_add(1) }
            }
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver.unwrap_or(-1),
        max_ack_pending: i64::try_from(MAX_ACK_PENDING).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let filters: Vec<String> = spec.filter_topics.iter().map(|filter| topic::subject(root, filter)).collect();
    let mut filter_here = None;
    match filters.as_slice() {
        [] => {}
        [only] => config.filter_subject.clone_from(only),
        _ if multiple_filters => config.filter_subjects = filters,
        _ => filter_here = Some(Arc::new(spec.clone())),
    }
    (config, filter_here)
}

/// Gets the durable consumer `name` with `config`, updating or recreating it if needed.
async fn durable(bus: &NatsBus, name: &str, config: pull::Config) -> Result<PullConsumer, EventsError> {
    let stream = bus.config.stream_name.as_str();
    let js = &bus.jetstream;
    match js.get_consumer_from_stream::<pull::Config, _, _>(name, stream).await {
        Ok(existing) if same_settings(&existing.cached_info().config, &config) => {
            return Ok(existing);
        }
        Ok(_) => match js.create_consumer_on_stream(config.clone(), stream).await {
            Ok(updated) => return Ok(updated),
            Err(err) if errors::is_consumer_api_error(&err) => {
                tracing::warn!(
                    consumer = name,
                    error = %err,
                    "durable consumer cannot be updated; recreating it from its start position"
                );
                js.delete_consumer_from_stream(name, stream)
                    .await
                    .map_err(|err| errors::consumer("delete consumer", err))?;
            }
            Err(err) => return Err(errors::consumer("update consumer", err)),
        },
        Err(err) if errors::is_consumer_not_found(&err) => {}
        Err(err) => return Err(errors::consumer("look up consumer", err)),
    }
    js.create_consumer_on_stream(config, stream).await.map_err(|err| errors::consumer("create consumer", err))
}

/// Whether an existing consumer already has the settings we would give it.
fn same_settings(current: &jetstream::consumer::Config, desired: &pull::Config) -> bool {
    let filters = |single: &String, many: &Vec<String>| {
        let mut all: Vec<String> = many.clone();
        if !single.is_empty() {
            all.push(single.clone());
        }
        all.sort();
        all
    };
    let unlimited = |max: i64| if max <= 0 { -1 } else { max };
    current.deliver_policy == desired.deliver_policy
        && current.ack_policy == desired.ack_policy
        && current.ack_wait == desired.ack_wait
        && unlimited(current.max_deliver) == unlimited(desired.max_deliver)
        && current.max_ack_pending == desired.max_ack_pending
        && filters(&current.filter_subject, &current.filter_subjects)
            == filters(&desired.filter_subject, &desired.filter_subjects)
}

/// Turns one pulled message into a delivery; `None` skips a message filtered out here.
async fn to_delivery(
    item: Result<jetstream::Message, MessagesError>,
    root: &str,
    filter_here: Option<&SubscriptionSpec>,
) -> Option<Result<Delivery, EventsError>> {
    let message = match item {
        Ok(message) => message,
        Err(err) => return Some(Err(errors::messages(err))),
    };
    let (sequence, deliveries) = match message.info() {
        Ok(info) => (info.stream_sequence, u64::try_from(info.delivered).unwrap_or(1)),
        Err(err) => return Some(Err(EventsError::rejected("read delivery metadata", err))),
    };
    let (message, acker) = message.split();
    let settle = NatsSettle { acker };
    let decoded = binding::decode(root, message.subject.as_str(), message.headers.as_ref(), message.payload);
    match decoded {
        Ok(event) if filter_here.is_some_and(|spec| !spec.selects(event.topic())) => settle.ack().await.err().map(Err),
        Ok(event) => Some(Ok(Delivery::new(event, sequence, deliveries, Box::new(settle)))),
        Err(source) => {
            if let Err(err) = settle.acker.ack_with(AckKind::Term).await {
                tracing::warn!(sequence, error = %err, "could not terminate malformed message");
            }
            Some(Err(EventsError::Malformed { sequence, source }))
        }
    }
}

/// Settles a delivery with the server.
struct NatsSettle {
    /// The message's reply subject on the server, all an ack needs.
    acker: Acker,
}

#[async_trait]
impl Settle for NatsSettle {
    /// Waits for the server to confirm the ack, so a subscriber that re-subscribes right
    /// after acking is not handed the event again.
    async fn ack(&self) -> Result<(), EventsError> {
        self.acker.double_ack().await.map_err(|err| EventsError::unavailable("ack", err))
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), EventsError> {
        self.acker.ack_with(AckKind::Nak(delay)).await.map_err(|err| EventsError::unavailable("nak", err))
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::consumer::IntoConsumerConfig;

    use super::*;

    #[test]
    fn specs_map_to_explicit_ack_pull_consumers() {
        let spec = SubscriptionSpec::durable("relay", vec!["session.*".into()])
            .ack_wait(Duration::from_secs(3))
            .max_deliver(5)
            .start(StartPosition::AfterSequence(41));
        let (config, filter_here) = consumer_config(&spec, "agentmesh", true);
        assert_eq!(config.durable_name.as_deref(), Some("relay"));
        assert_eq!(config.ack_policy, AckPolicy::Explicit);
        assert_eq!(config.deliver_policy, DeliverPolicy::ByStartSequence { start_sequence: 42 });
        assert_eq!(config.ack_wait, Duration::from_secs(3));
        assert_eq!(config.max_deliver, 5);
        assert_eq!(config.filter_subject, "agentmesh.session.*");
        assert!(filter_here.is_none());
    }

    #[test]
    fn several_filters_use_filter_subjects_or_fall_back_to_filtering_here() {
        let spec = SubscriptionSpec::ephemeral(vec!["a.*".into(), "b.>".into()]);
        let (config, filter_here) = consumer_config(&spec, "root", true);
        assert_eq!(config.filter_subjects, ["root.a.*", "root.b.>"]);
        assert!(filter_here.is_none());

        let (config, filter_here) = consumer_config(&spec, "root", false);
        assert!(config.filter_subject.is_empty() && config.filter_subjects.is_empty());
        assert_eq!(filter_here.as_deref(), Some(&spec));
        assert_eq!(config.max_deliver, -1);
    }

    #[test]
    fn equivalent_settings_are_recognised() {
        let spec = SubscriptionSpec::durable("d", vec!["a.*".into(), "b.*".into()]);
        let (desired, _) = consumer_config(&spec, "root", true);
        let mut current = jetstream::consumer::Config {
            filter_subjects: vec!["root.b.*".into(), "root.a.*".into()],
            max_deliver: 0,
            ..desired.clone().into_consumer_config()
        };
        assert!(same_settings(&current, &desired));
        current.ack_wait = Duration::from_secs(1);
        assert!(!same_settings(&current, &desired));
    }
}
