//! The behaviours: each takes a [`Harness`] and panics when the bus misbehaves.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use agentmesh_events::{Delivery, Event, EventStream, EventsError, StartPosition, SubscriptionSpec, ValidationError};
use futures::StreamExt;
use tokio::time::Instant;

use crate::fixture::Harness;

fn event(topic: &str, payload: &str) -> Event {
    Event::builder(topic, "agentmesh/conformance", "agentmesh.test.happened")
        .data(payload.as_bytes().to_vec())
        .build()
        .unwrap()
}

fn payload(delivery: &Delivery) -> String {
    String::from_utf8(delivery.event().data().to_vec()).unwrap()
}

fn filters(topics: &[&str]) -> Vec<String> {
    topics.iter().map(|topic| (*topic).to_owned()).collect()
}

async fn subscribe(harness: &Harness, spec: SubscriptionSpec) -> EventStream {
    harness.subscriber.subscribe(spec).await.unwrap()
}

async fn publish(harness: &Harness, event: Event) -> u64 {
    let ack = harness.publisher.publish(event).await.unwrap();
    assert!(!ack.duplicate);
    ack.sequence
}

/// The next delivery, failing the test if none arrives in time.
async fn next(harness: &Harness, stream: &mut EventStream) -> Delivery {
    tokio::time::timeout(harness.timing.receive, stream.next())
        .await
        .expect("a delivery should arrive")
        .expect("event streams do not end")
        .expect("delivery should not be an error")
}

/// Receives `count` deliveries, acking each.
async fn receive_acked(harness: &Harness, stream: &mut EventStream, count: usize) -> Vec<String> {
    let mut payloads = Vec::with_capacity(count);
    for _ in 0..count {
        let delivery = next(harness, stream).await;
        delivery.ack().await.unwrap();
        payloads.push(payload(&delivery));
    }
    payloads
}

/// Fails the test if anything arrives within `period`.
async fn assert_quiet_for(stream: &mut EventStream, period: Duration) {
    if let Ok(item) = tokio::time::timeout(period, stream.next()).await {
        panic!("expected nothing more, got {item:?}");
    }
}

async fn assert_quiet(harness: &Harness, stream: &mut EventStream) {
    assert_quiet_for(stream, harness.timing.quiet).await;
}

pub async fn round_trip_preserves_attributes(harness: &Harness) {
    let sent = Event::builder("session.created", "agentmesh/session-store", "agentmesh.session.created")
        .subject("0190f1b2-7c4e-7000-8000-000000000001")
        .tenant("acme")
        .correlation_id("req-42")
        .data_schema("agentmesh.events.v1.SessionCreated")
        .data(vec![0x0a, 0x03, b'a', b'b', b'c'])
        .build()
        .unwrap();
    let sequence = publish(harness, sent.clone()).await;

    let mut stream = subscribe(harness, SubscriptionSpec::ephemeral(filters(&["session.created"]))).await;
    let delivery = next(harness, &mut stream).await;
    assert_eq!(delivery.event(), &sent);
    assert_eq!(delivery.sequence(), sequence);
    assert_eq!(delivery.deliveries(), 1);
    assert!(!delivery.redelivered());
    delivery.ack().await.unwrap();
    assert_quiet(harness, &mut stream).await;
}

pub async fn duplicate_ids_are_stored_once(harness: &Harness) {
    let original = event("message.created", "once");
    let first = harness.publisher.publish(original.clone()).await.unwrap();
    let second = harness.publisher.publish(original.clone()).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.sequence, first.sequence);
    let other = publish(harness, event("message.created", "other")).await;
    assert_eq!(other, first.sequence + 1);

    let mut stream = subscribe(harness, SubscriptionSpec::ephemeral(vec![])).await;
    assert_eq!(receive_acked(harness, &mut stream, 2).await, ["once", "other"]);
    assert_quiet(harness, &mut stream).await;
}

/// Publishes one event per topic (payload = topic) and returns what `filters` receive.
async fn filtered(harness: &Harness, selected: &[&str], expected: usize) -> Vec<String> {
    for topic in [
        "session.created",
        "message.created",
        "run.r1.output",
        "run.r1.completed",
        "session.deleted",
        "run.r2.output",
        "session.created.v2",
    ] {
        publish(harness, event(topic, topic)).await;
    }
    let mut stream = subscribe(harness, SubscriptionSpec::ephemeral(filters(selected))).await;
    let received = receive_acked(harness, &mut stream, expected).await;
    assert_quiet(harness, &mut stream).await;
    received
}

pub async fn single_token_wildcard_filter(harness: &Harness) {
    let received = filtered(harness, &["session.*"], 2).await;
    assert_eq!(received, ["session.created", "session.deleted"]);
}

pub async fn run_output_wildcard_filter(harness: &Harness) {
    let received = filtered(harness, &["run.*.output"], 2).await;
    assert_eq!(received, ["run.r1.output", "run.r2.output"]);
}

pub async fn full_wildcard_filter(harness: &Harness) {
    let received = filtered(harness, &[">"], 7).await;
    assert_eq!(received.len(), 7);
    let received = filtered(harness, &["session.>"], 6).await;
    assert_eq!(
        received,
        [
            "session.created",
            "session.deleted",
            "session.created.v2",
            "session.created",
            "session.deleted",
            "session.created.v2",
        ]
    );
}

pub async fn several_filters_select_their_union(harness: &Harness) {
    let received = filtered(harness, &["session.created", "run.*.output"], 3).await;
    assert_eq!(received, ["session.created", "run.r1.output", "run.r2.output"]);
}

pub async fn every_subscription_sees_every_event(harness: &Harness) {
    let mut first = subscribe(harness, SubscriptionSpec::ephemeral(vec![])).await;
    let mut second = subscribe(harness, SubscriptionSpec::durable("audit", vec![])).await;
    for index in 0..3 {
        publish(harness, event("agent.updated", &index.to_string())).await;
    }
    assert_eq!(receive_acked(harness, &mut first, 3).await, ["0", "1", "2"]);
    assert_eq!(receive_acked(harness, &mut second, 3).await, ["0", "1", "2"]);
}

pub async fn durable_consumer_resumes_without_redelivering_acked_events(harness: &Harness) {
    let spec = SubscriptionSpec::durable("relay", filters(&["session.*"]));
    for payload in ["1", "2", "3"] {
        publish(harness, event("session.created", payload)).await;
    }
    let mut stream = subscribe(harness, spec.clone()).await;
    assert_eq!(receive_acked(harness, &mut stream, 3).await, ["1", "2", "3"]);
    drop(stream);

    for payload in ["4", "5"] {
        publish(harness, event("session.created", payload)).await;
    }
    let mut stream = subscribe(harness, spec).await;
    assert_eq!(receive_acked(harness, &mut stream, 2).await, ["4", "5"]);
    assert_quiet(harness, &mut stream).await;
}

pub async fn unacked_delivery_survives_resubscribe(harness: &Harness) {
    let spec = SubscriptionSpec::durable("worker", vec![]).ack_wait(harness.timing.ack_wait);
    publish(harness, event("tool.invoked", "acked")).await;
    publish(harness, event("tool.invoked", "dropped")).await;
    let mut stream = subscribe(harness, spec.clone()).await;
    assert_eq!(receive_acked(harness, &mut stream, 1).await, ["acked"]);
    let unacked = next(harness, &mut stream).await;
    assert_eq!(payload(&unacked), "dropped");
    drop(unacked);
    drop(stream);

    let mut stream = subscribe(harness, spec).await;
    let again = next(harness, &mut stream).await;
    assert_eq!(payload(&again), "dropped");
    assert!(again.redelivered());
    again.ack().await.unwrap();
    assert_quiet(harness, &mut stream).await;
}

pub async fn durable_subscriptions_share_the_work(harness: &Harness) {
    let spec = SubscriptionSpec::durable("pool", vec![]);
    let first = subscribe(harness, spec.clone()).await;
    let second = subscribe(harness, spec).await;
    let mut both: EventStream = Box::pin(futures::stream::select(first, second));
    for index in 0..20 {
        publish(harness, event("llm.usage", &index.to_string())).await;
    }
    let received: BTreeSet<String> = receive_acked(harness, &mut both, 20).await.into_iter().collect();
    assert_eq!(received, (0..20).map(|i| i.to_string()).collect());
    assert_quiet(harness, &mut both).await;
}

pub async fn unacked_delivery_is_redelivered_after_ack_wait(harness: &Harness) {
    let ack_wait = harness.timing.ack_wait;
    let sequence = publish(harness, event("run.r1.output", "token")).await;
    let mut stream = subscribe(harness, SubscriptionSpec::ephemeral(vec![]).ack_wait(ack_wait)).await;

    let first = next(harness, &mut stream).await;
    let delivered_at = Instant::now();
    assert_eq!((first.sequence(), first.deliveries()), (sequence, 1));

    let second = next(harness, &mut stream).await;
    assert!(delivered_at.elapsed() >= ack_wait.mul_f64(0.8), "redelivered too early");
    assert_eq!(second.sequence(), sequence);
    assert_eq!(second.deliveries(), 2);
    assert!(second.redelivered());
    assert_eq!(second.event(), first.event());
    second.ack().await.unwrap();
    assert_quiet_for(&mut stream, ack_wait + harness.timing.quiet).await;
}

pub async fn nak_redelivers_before_ack_wait(harness: &Harness) {
    let ack_wait = Duration::from_secs(60);
    publish(harness, event("run.r1.output", "retry me")).await;
    let mut stream = subscribe(harness, SubscriptionSpec::ephemeral(vec![]).ack_wait(ack_wait)).await;
    let first = next(harness, &mut stream).await;
    let naked_at = Instant::now();
    first.nak(None).await.unwrap();
    let second = next(harness, &mut stream).await;
    assert!(naked_at.elapsed() < ack_wait);
    assert_eq!(second.sequence(), first.sequence());
    assert_eq!(second.deliveries(), 2);
    second.ack().await.unwrap();
}

pub async fn max_deliver_stops_redelivery(harness: &Harness) {
    let ack_wait = harness.timing.ack_wait;
    publish(harness, event("mcp.tool.failed", "poison")).await;
    let spec = SubscriptionSpec::ephemeral(vec![]).ack_wait(ack_wait).max_deliver(2);
    let mut stream = subscribe(harness, spec).await;
    assert_eq!(next(harness, &mut stream).await.deliveries(), 1);
    assert_eq!(next(harness, &mut stream).await.deliveries(), 2);
    assert_quiet_for(&mut stream, ack_wait * 2 + harness.timing.quiet).await;
}

pub async fn after_sequence_replays_only_later_events(harness: &Harness) {
    let topic = agentmesh_events::topic::run_output("r1");
    let mut sequences = Vec::new();
    for index in 1..=5 {
        sequences.push(publish(harness, event(&topic, &index.to_string())).await);
        publish(harness, event("run.r2.output", "noise")).await;
    }
    let mut stream = subscribe(harness, SubscriptionSpec::replay(topic.as_str(), sequences[1])).await;
    let replayed: Vec<Delivery> = {
        let mut replayed = Vec::new();
        for _ in 0..3 {
            replayed.push(next(harness, &mut stream).await);
        }
        replayed
    };
    assert_eq!(replayed.iter().map(payload).collect::<Vec<_>>(), ["3", "4", "5"]);
    assert_eq!(replayed.iter().map(Delivery::sequence).collect::<Vec<_>>(), sequences[2..]);
    for delivery in &replayed {
        delivery.ack().await.unwrap();
    }
    assert_quiet(harness, &mut stream).await;

    publish(harness, event(&topic, "6")).await;
    assert_eq!(receive_acked(harness, &mut stream, 1).await, ["6"]);
}

pub async fn start_new_skips_history(harness: &Harness) {
    publish(harness, event("session.created", "old")).await;
    let spec = SubscriptionSpec::ephemeral(vec![]).start(StartPosition::New);
    let mut stream = subscribe(harness, spec).await;
    publish(harness, event("session.created", "new")).await;
    assert_eq!(receive_acked(harness, &mut stream, 1).await, ["new"]);
    assert_quiet(harness, &mut stream).await;
}

pub async fn order_is_preserved_per_subject(harness: &Harness) {
    for index in 0..50 {
        let topic = if index % 3 == 0 { "run.a.output" } else { "run.b.output" };
        publish(harness, event(topic, &index.to_string())).await;
    }
    let mut stream = subscribe(harness, SubscriptionSpec::ephemeral(filters(&["run.*.output"]))).await;
    let mut last_per_topic: std::collections::HashMap<String, (u64, u32)> = Default::default();
    for _ in 0..50 {
        let delivery = next(harness, &mut stream).await;
        delivery.ack().await.unwrap();
        let index: u32 = payload(&delivery).parse().unwrap();
        let topic = delivery.event().topic().to_owned();
        if let Some((sequence, previous)) = last_per_topic.get(&topic) {
            assert!(delivery.sequence() > *sequence && index > *previous, "{topic} out of order");
        }
        last_per_topic.insert(topic, (delivery.sequence(), index));
    }
}

pub async fn concurrent_publishes_arrive_exactly_once(harness: &Harness) {
    const COUNT: usize = 1000;
    let events: Vec<Event> =
        (0..COUNT).map(|index| event(&format!("message.m{}.created", index % 7), &index.to_string())).collect();
    let acks = futures::future::join_all(events.iter().map(|event| harness.publisher.publish(event.clone()))).await;
    let sequences: HashSet<u64> = acks
        .into_iter()
        .map(|ack| {
            let ack = ack.unwrap();
            assert!(!ack.duplicate);
            ack.sequence
        })
        .collect();
    assert_eq!(sequences.len(), COUNT);

    let mut stream = subscribe(harness, SubscriptionSpec::durable("bulk", filters(&["message.>"]))).await;
    let mut seen = HashSet::new();
    for _ in 0..COUNT {
        let delivery = next(harness, &mut stream).await;
        assert!(sequences.contains(&delivery.sequence()));
        assert!(seen.insert(delivery.event().id().to_owned()), "delivered twice");
        delivery.ack().await.unwrap();
    }
    let sent: HashSet<String> = events.iter().map(|event| event.id().to_owned()).collect();
    assert_eq!(seen, sent);
    assert_quiet(harness, &mut stream).await;
}

pub async fn invalid_subscriptions_are_rejected(harness: &Harness) {
    let invalid = [
        SubscriptionSpec::ephemeral(filters(&["session..created"])),
        SubscriptionSpec::ephemeral(filters(&["run.>.output"])),
        SubscriptionSpec::durable("has.dot", vec![]),
        SubscriptionSpec::ephemeral(vec![]).ack_wait(Duration::ZERO),
    ];
    for spec in invalid {
        match harness.subscriber.subscribe(spec.clone()).await {
            Err(err @ EventsError::Invalid(_)) => assert!(!err.is_retryable()),
            Err(other) => panic!("{spec:?}: expected Invalid, got {other}"),
            Ok(_) => panic!("{spec:?} should be rejected"),
        }
    }
    let invalid_event = Event::builder("session.*", "s", "t").build();
    assert!(matches!(invalid_event, Err(ValidationError::Topic { .. })));
}

pub async fn last_event_is_none_when_nothing_is_stored(harness: &Harness) {
    let topic = agentmesh_events::topic::run_output("r1");
    assert_eq!(harness.subscriber.last_event(&topic).await.unwrap(), None);
    publish(harness, event("run.r2.output", "elsewhere")).await;
    publish(harness, event("run.r1.output.v2", "deeper")).await;
    assert_eq!(harness.subscriber.last_event(&topic).await.unwrap(), None);
}

pub async fn last_event_is_the_newest_on_its_topic(harness: &Harness) {
    let asked = agentmesh_events::topic::run_output("r1");
    let other = agentmesh_events::topic::run_output("r2");
    let mut newest = None;
    for sequence in 1..=4 {
        let sent = Event::builder(asked.as_str(), "agentmesh/agent-orchestrator", "agentmesh.run.output")
            .id(format!("r1:{sequence}"))
            .subject("r1")
            .tenant("acme")
            .correlation_id("req-7")
            .actor("agent-orchestrator")
            .data_schema("agentmesh.events.v1.RunOutput")
            .data(vec![0x08, sequence])
            .build()
            .unwrap();
        publish(harness, sent.clone()).await;
        publish(harness, event(&other, &format!("r2:{sequence}"))).await;
        newest = Some(sent);
    }
    publish(harness, event(&other, "r2:last")).await;

    let last = harness.subscriber.last_event(&asked).await.unwrap();
    assert_eq!(last, newest);
    let last = last.unwrap();
    assert_eq!(last.id(), "r1:4");
    assert_eq!(last.data().as_ref(), [0x08, 4]);
    let last_other = harness.subscriber.last_event(&other).await.unwrap().unwrap();
    assert_eq!(last_other.data().as_ref(), b"r2:last");
}

pub async fn last_event_rejects_wildcards_and_malformed_topics(harness: &Harness) {
    for topic in ["run.*.output", "run.>", ">", "run..output", "run r1"] {
        match harness.subscriber.last_event(topic).await {
            Err(err @ EventsError::Invalid(ValidationError::Topic { .. })) => assert!(!err.is_retryable()),
            other => panic!("{topic:?}: expected an invalid topic error, got {other:?}"),
        }
    }
}
