//! NATS-only behaviour: stream and consumer administration, foreign messages on the
//! stream, and which failures are retryable.

use std::time::Duration;

use agentmesh_events::{DecodeError, Event};
use agentmesh_events::{
    EventsError, Health, NatsBus, NatsConfig, Publisher, StartPosition, Subscriber, SubscriptionSpec,
};
use async_nats::jetstream;
use futures::StreamExt;

use crate::fixture::{NatsStream, config};

async fn raw_jetstream(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

fn event(topic: &str, payload: &str) -> Event {
    Event::builder(topic, "agentmesh/nats-tests", "agentmesh.test.happened")
        .data(payload.as_bytes().to_vec())
        .build()
        .unwrap()
}

async fn next_item(stream: &mut agentmesh_events::EventStream) -> Result<agentmesh_events::Delivery, EventsError> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an item should arrive")
        .expect("event streams do not end")
}

#[tokio::test]
async fn connecting_again_with_other_limits_updates_the_stream() {
    let Some(url) = agentmesh_testkit::require(agentmesh_testkit::Service::Nats).await else {
        return;
    };
    let first_config = config(&url);
    let first = NatsStream::create_with(url.clone(), first_config.clone()).await;
    for index in 0..5 {
        first.bus().publish(event("session.created", &index.to_string())).await.unwrap();
    }

    let limited = NatsConfig {
        max_messages: Some(3),
        max_bytes: Some(1 << 20),
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(30),
        ..first_config
    };
    let second = NatsBus::connect(limited).await.expect("reconnect with new limits");

    let mut stream = raw_jetstream(&url).await.get_stream(&second.config().stream_name).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.max_messages, 3);
    assert_eq!(info.config.max_bytes, 1 << 20);
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));
    assert_eq!(info.state.messages, 3);

    let mut deliveries = second.subscribe(SubscriptionSpec::ephemeral(vec![])).await.unwrap();
    let oldest = next_item(&mut deliveries).await.unwrap();
    assert_eq!(oldest.sequence(), 3);
    first.cleanup().await;
}

#[tokio::test]
async fn durable_consumer_is_updated_in_place_or_recreated_for_a_new_start() {
    let Some(fixture) = NatsStream::create().await else {
        return;
    };
    let bus = fixture.bus();
    for index in 0..3 {
        bus.publish(event("session.created", &index.to_string())).await.unwrap();
    }
    let spec = SubscriptionSpec::durable("projector", vec!["session.*".into()]);
    let mut stream = bus.subscribe(spec.clone()).await.unwrap();
    for _ in 0..3 {
        next_item(&mut stream).await.unwrap().ack().await.unwrap();
    }
    drop(stream);
    bus.publish(event("session.created", "3")).await.unwrap();

    // A new ack wait is applied in place: progress is kept.
    let updated = spec.clone().ack_wait(Duration::from_secs(10));
    let mut stream = bus.subscribe(updated).await.unwrap();
    let fourth = next_item(&mut stream).await.unwrap();
    assert_eq!(fourth.event().data().as_ref(), b"3");
    fourth.ack().await.unwrap();
    drop(stream);
    let consumer = raw_jetstream(fixture.url())
        .await
        .get_stream(&bus.config().stream_name)
        .await
        .unwrap()
        .consumer_info("projector")
        .await
        .unwrap();
    assert_eq!(consumer.config.ack_wait, Duration::from_secs(10));

    // A new start position cannot be applied in place: the consumer starts over.
    let restarted = spec.start(StartPosition::AfterSequence(1));
    let mut stream = bus.subscribe(restarted).await.unwrap();
    let first = next_item(&mut stream).await.unwrap();
    assert_eq!(first.sequence(), 2);
    first.ack().await.unwrap();
    fixture.cleanup().await;
}

#[tokio::test]
async fn malformed_messages_are_reported_once_and_skipped() {
    let Some(fixture) = NatsStream::create().await else {
        return;
    };
    let bus = fixture.bus();
    let subject = format!("{}.session.created", bus.config().subject_root);
    raw_jetstream(fixture.url()).await.publish(subject, "not a cloudevent".into()).await.unwrap().await.unwrap();
    bus.publish(event("session.created", "valid")).await.unwrap();

    let spec = SubscriptionSpec::durable("reader", vec![]).ack_wait(Duration::from_secs(1));
    let mut stream = bus.subscribe(spec).await.unwrap();
    match next_item(&mut stream).await {
        Err(EventsError::Malformed { sequence: 1, source: DecodeError::MissingAttribute("ce-specversion") }) => {}
        other => panic!("expected a malformed message error, got {other:?}"),
    }
    let valid = next_item(&mut stream).await.unwrap();
    assert_eq!(valid.sequence(), 2);
    valid.ack().await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await;
    assert!(quiet.is_err(), "the malformed message was redelivered");
    fixture.cleanup().await;
}

#[tokio::test]
async fn a_malformed_last_message_is_reported_with_its_sequence() {
    let Some(fixture) = NatsStream::create().await else {
        return;
    };
    let bus = fixture.bus();
    bus.publish(event("session.created", "valid")).await.unwrap();
    let subject = format!("{}.session.created", bus.config().subject_root);
    raw_jetstream(fixture.url()).await.publish(subject, "not a cloudevent".into()).await.unwrap().await.unwrap();

    match bus.last_event("session.created").await {
        Err(EventsError::Malformed { sequence: 2, source: DecodeError::MissingAttribute("ce-specversion") }) => {}
        other => panic!("expected a malformed message error, got {other:?}"),
    }
    fixture.cleanup().await;
}

#[tokio::test]
async fn oversized_events_are_rejected_not_retried() {
    let Some(fixture) = NatsStream::create().await else {
        return;
    };
    assert_eq!(fixture.bus().health(), Health::Connected);
    let huge = Event::builder("session.created", "s", "t").data(vec![0_u8; 2 << 20]).build().unwrap();
    let err = fixture.bus().publish(huge).await.unwrap_err();
    assert!(matches!(err, EventsError::Rejected { .. }), "{err}");
    assert!(!err.is_retryable());
    fixture.cleanup().await;
}

#[tokio::test]
async fn without_the_stream_publish_and_last_event_are_retryable_until_reconnect_recreates_it() {
    let Some(fixture) = NatsStream::create().await else {
        return;
    };
    fixture.bus().delete_stream().await.unwrap();
    let err = fixture.bus().publish(event("session.created", "lost")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = fixture.bus().last_event("session.created").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");

    let recreated = NatsBus::connect(fixture.bus().config().clone()).await.unwrap();
    assert_eq!(recreated.last_event("session.created").await.unwrap(), None);
    let kept = event("session.created", "kept");
    let ack = recreated.publish(kept.clone()).await.unwrap();
    assert_eq!(ack.sequence, 1);
    assert_eq!(recreated.last_event("session.created").await.unwrap(), Some(kept));
    fixture.cleanup().await;
}

#[tokio::test]
async fn unreachable_server_is_retryable() {
    let config = NatsConfig {
        url: "nats://127.0.0.1:1".to_owned(),
        connect_timeout: Duration::from_secs(1),
        ..NatsConfig::default()
    };
    let err = NatsBus::connect(config).await.unwrap_err();
    assert!(matches!(err, EventsError::Unavailable { .. }), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn invalid_config_is_rejected_before_connecting() {
    let config = NatsConfig { subject_root: "agentmesh.*".to_owned(), ..NatsConfig::default() };
    let err = NatsBus::connect(config).await.unwrap_err();
    assert!(matches!(err, EventsError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn a_test_that_fails_still_deletes_its_stream() {
    let Some(fixture) = NatsStream::create().await else {
        return;
    };
    let url = fixture.url().to_owned();
    let stream_name = fixture.bus().config().stream_name.clone();
    // What unwinding does when a test panics before `cleanup`.
    drop(fixture);
    let lookup = raw_jetstream(&url).await.get_stream(&stream_name).await;
    assert!(lookup.is_err(), "stream {stream_name} was left behind");
}
