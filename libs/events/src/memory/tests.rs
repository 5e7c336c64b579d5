//! In-process bus behaviour beyond the shared conformance suite: retention, backpressure
//! and durable reconfiguration, all on paused time.

use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::bus::{MAX_ACK_PENDING, StartPosition};

fn event(payload: &str) -> Event {
    Event::builder("run.r1.output", "test", "test.event").data(payload.as_bytes().to_vec()).build().unwrap()
}

fn payload(delivery: &Delivery) -> String {
    String::from_utf8(delivery.event().data().to_vec()).unwrap()
}

async fn next(stream: &mut EventStream) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a delivery should arrive")
        .unwrap()
        .unwrap()
}

async fn is_quiet(stream: &mut EventStream) -> bool {
    tokio::time::timeout(Duration::from_secs(5), stream.next()).await.is_err()
}

async fn publish_all(bus: &MemoryBus, payloads: &[&str]) {
    for payload in payloads {
        bus.publish(event(payload)).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn max_messages_keeps_the_newest() {
    let bus = MemoryBus::new(MemoryConfig { max_messages: Some(2), ..MemoryConfig::default() });
    publish_all(&bus, &["1", "2", "3"]).await;
    let mut stream = bus.subscribe(SubscriptionSpec::ephemeral(vec![])).await.unwrap();
    let first = next(&mut stream).await;
    assert_eq!((first.sequence(), payload(&first)), (2, "2".to_owned()));
    assert_eq!(payload(&next(&mut stream).await), "3");
}

#[tokio::test(start_paused = true)]
async fn max_age_expires_old_events() {
    let bus = MemoryBus::new(MemoryConfig { max_age: Duration::from_secs(60), ..MemoryConfig::default() });
    publish_all(&bus, &["old"]).await;
    tokio::time::advance(Duration::from_secs(61)).await;
    publish_all(&bus, &["fresh"]).await;
    let mut stream = bus.subscribe(SubscriptionSpec::ephemeral(vec![])).await.unwrap();
    let delivery = next(&mut stream).await;
    assert_eq!((delivery.sequence(), payload(&delivery)), (2, "fresh".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn last_event_is_gone_once_max_age_expires_it() {
    let bus = MemoryBus::new(MemoryConfig { max_age: Duration::from_secs(60), ..MemoryConfig::default() });
    publish_all(&bus, &["old"]).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let other = Event::builder("run.r2.output", "test", "test.event").build().unwrap();
    bus.publish(other.clone()).await.unwrap();
    let kept = bus.last_event("run.r1.output").await.unwrap().map(|event| event.data().to_vec());
    assert_eq!(kept.as_deref(), Some(b"old".as_slice()));

    // Nothing is published meanwhile: the lookup itself applies retention.
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(bus.last_event("run.r1.output").await.unwrap(), None);
    assert_eq!(bus.last_event("run.r2.output").await.unwrap(), Some(other));
}

#[tokio::test(start_paused = true)]
async fn ids_are_forgotten_after_the_duplicate_window() {
    let bus = MemoryBus::new(MemoryConfig { duplicate_window: Duration::from_secs(10), ..MemoryConfig::default() });
    let original = event("x");
    assert!(!bus.publish(original.clone()).await.unwrap().duplicate);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(bus.publish(original.clone()).await.unwrap().duplicate);
    tokio::time::advance(Duration::from_secs(5)).await;
    let again = bus.publish(original).await.unwrap();
    assert_eq!((again.sequence, again.duplicate), (2, false));
}

#[tokio::test(start_paused = true)]
async fn un_acked_deliveries_are_capped() {
    let bus = MemoryBus::default();
    for index in 0..=MAX_ACK_PENDING {
        bus.publish(event(&index.to_string())).await.unwrap();
    }
    let mut stream = bus.subscribe(SubscriptionSpec::ephemeral(vec![])).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..MAX_ACK_PENDING {
        held.push(next(&mut stream).await);
    }
    assert!(is_quiet(&mut stream).await, "delivered beyond MAX_ACK_PENDING");
    held[0].ack().await.unwrap();
    assert_eq!(payload(&next(&mut stream).await), MAX_ACK_PENDING.to_string());
}

#[tokio::test(start_paused = true)]
async fn nak_with_delay_redelivers_after_the_delay() {
    let bus = MemoryBus::default();
    publish_all(&bus, &["later"]).await;
    let mut stream = bus.subscribe(SubscriptionSpec::ephemeral(vec![])).await.unwrap();
    let first = next(&mut stream).await;
    let naked_at = Instant::now();
    first.nak(Some(Duration::from_secs(3))).await.unwrap();
    let second = next(&mut stream).await;
    assert_eq!(naked_at.elapsed(), Duration::from_secs(3));
    assert_eq!(second.deliveries(), 2);
}

#[tokio::test(start_paused = true)]
async fn events_removed_by_retention_are_not_redelivered() {
    let bus = MemoryBus::new(MemoryConfig { max_messages: Some(1), ..MemoryConfig::default() });
    publish_all(&bus, &["first"]).await;
    let spec = SubscriptionSpec::ephemeral(vec![]).ack_wait(Duration::from_secs(1));
    let mut stream = bus.subscribe(spec).await.unwrap();
    assert_eq!(payload(&next(&mut stream).await), "first");
    publish_all(&bus, &["second"]).await;
    let delivery = next(&mut stream).await;
    assert_eq!(payload(&delivery), "second");
    delivery.ack().await.unwrap();
    assert!(is_quiet(&mut stream).await, "evicted event was redelivered");
}

#[tokio::test(start_paused = true)]
async fn durable_settings_change_in_place_but_a_new_start_resets() {
    let bus = MemoryBus::default();
    publish_all(&bus, &["1", "2"]).await;
    let spec = SubscriptionSpec::durable("d", vec![]);
    let mut stream = bus.subscribe(spec.clone()).await.unwrap();
    next(&mut stream).await.ack().await.unwrap();
    drop(stream);

    let mut stream = bus.subscribe(spec.clone().ack_wait(Duration::from_secs(5))).await.unwrap();
    assert_eq!(payload(&next(&mut stream).await), "2");
    drop(stream);

    let restarted = spec.start(StartPosition::AfterSequence(0));
    let mut stream = bus.subscribe(restarted).await.unwrap();
    assert_eq!(payload(&next(&mut stream).await), "1");
}

#[tokio::test(start_paused = true)]
async fn health_is_always_connected() {
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::default());
    assert!(bus.health().is_ready());
}
