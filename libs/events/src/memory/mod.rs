//! In-process event bus with JetStream's semantics, for development and tests.
//!
//! `agentmesh up` and service tests run on [`MemoryBus`] instead of NATS. It keeps one
//! append-only log (like one stream), deduplicates ids within the duplicate window,
//! applies retention by count and age, and serves durable and ephemeral consumers with
//! explicit acks, ack-wait redelivery, `max_deliver` and NATS wildcard filters. Time is
//! tokio time, so tests can pause and advance it.
//!
//! Differences from JetStream that callers may notice:
//! - Nothing survives the process: durable consumers are durable across subscriptions,
//!   not restarts.
//! - Retention by bytes is not implemented (only count and age); the oldest events are
//!   always discarded first (JetStream's `DiscardPolicy::Old`). The count is capped at
//!   [`DEFAULT_MAX_MESSAGES`] by default, where the NATS stream is unlimited.
//! - Deliveries are computed when the subscriber polls: nothing is prefetched. On NATS up
//!   to one pull batch (100 events) is buffered per subscription; if the subscription is
//!   dropped, those are redelivered only after their ack wait.
//! - Durable consumers are never removed, and an ephemeral consumer ends as soon as its
//!   stream is dropped (JetStream keeps it for its inactivity threshold).
//! - Changing a durable consumer's start position resets it in place; subscriptions
//!   still open on it continue from the new position (on NATS they end).
//! - Publishing never fails: there is no broker to be unavailable.

mod consumer;
mod log;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::consumer::{Consumer, Step};
use self::log::{Limits, Log};
use crate::bus::{
    DEFAULT_DUPLICATE_WINDOW, DEFAULT_MAX_AGE, Delivery, EventBus, EventStream, Health, PublishAck, Publisher, Settle,
    Subscriber, SubscriptionSpec,
};
use crate::envelope::Event;
use crate::error::EventsError;
use crate::{telemetry, topic};

/// Default cap on events the in-process bus keeps. JetStream's default is unlimited,
/// but this log lives in the process's memory with nothing to spill to.
pub const DEFAULT_MAX_MESSAGES: u64 = 100_000;

/// Limits of a [`MemoryBus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Keep at most this many events, dropping the oldest; `None` is unlimited.
    pub max_messages: Option<u64>,
    /// Drop events older than this; zero is unlimited.
    pub max_age: Duration,
    /// Remember event ids this long for deduplication; zero means the default.
    pub duplicate_window: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_messages: Some(DEFAULT_MAX_MESSAGES),
            max_age: DEFAULT_MAX_AGE,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
        }
    }
}

/// The in-process bus. Cheap to clone; clones share the log and consumers.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The one log every topic is appended to.
    log: Mutex<Log>,
    /// Woken on every stored event so idle subscriptions look again.
    appended: Notify,
    /// Durable consumers by name. Lock order: `durables`, then `log`, then a consumer.
    durables: Mutex<HashMap<String, Arc<Consumer>>>,
}

fn limits(config: &MemoryConfig) -> Limits {
    Limits {
        max_messages: config.max_messages,
        max_age: config.max_age,
        duplicate_window: if config.duplicate_window.is_zero() {
            DEFAULT_DUPLICATE_WINDOW
        } else {
            config.duplicate_window
        },
    }
}

/// Locks a mutex whose critical sections cannot panic, so poisoning is impossible; if it
/// ever happened the data is still consistent and is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBus {
    /// A bus with `config`'s limits.
    pub fn new(config: MemoryConfig) -> Self {
        MemoryBus {
            shared: Arc::new(Shared {
                log: Mutex::new(Log::new(limits(&config))),
                appended: Notify::new(),
                durables: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Always [`Health::Connected`]: there is no connection to lose.
    pub fn health(&self) -> Health {
        Health::Connected
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new(MemoryConfig::default())
    }
}

#[async_trait]
impl Publisher for MemoryBus {
    async fn publish(&self, event: Event) -> Result<PublishAck, EventsError> {
        let ack = lock(&self.shared.log).append(event, Instant::now());
        if !ack.duplicate {
            self.shared.appended.notify_waiters();
        }
        let result = Ok(ack);
        telemetry::record_publish("memory", &result);
        result
    }
}

#[async_trait]
impl Subscriber for MemoryBus {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<EventStream, EventsError> {
        spec.validate()?;
        let consumer = match spec.durable_name.clone() {
            Some(name) => {
                let mut durables = lock(&self.shared.durables);
                let log = lock(&self.shared.log);
                match durables.get(&name) {
                    Some(existing) => {
                        existing.reconfigure(spec, &log);
                        Arc::clone(existing)
                    }
                    None => {
                        let created = Arc::new(Consumer::new(spec, &log));
                        durables.insert(name, Arc::clone(&created));
                        created
                    }
                }
            }
            None => Arc::new(Consumer::new(spec, &lock(&self.shared.log))),
        };
        let shared = Arc::clone(&self.shared);
        let deliveries = futures::stream::unfold((shared, consumer), |(shared, consumer)| async move {
            let delivery = next_delivery(&shared, &consumer).await;
            Some((Ok(delivery), (shared, consumer)))
        });
        Ok(Box::pin(deliveries))
    }

    async fn last_event(&self, topic: &str) -> Result<Option<Event>, EventsError> {
        topic::validate_topic(topic)?;
        let mut log = lock(&self.shared.log);
        log.expire(Instant::now());
        Ok(log.last_on(topic).map(|entry| entry.event.clone()))
    }
}

impl EventBus for MemoryBus {
    fn health(&self) -> Health {
        MemoryBus::health(self)
    }
}

/// Waits until `consumer` has something to deliver.
async fn next_delivery(shared: &Shared, consumer: &Arc<Consumer>) -> Delivery {
    loop {
        // Register for wake-ups before looking, so a publish or settle that lands
        // between the look and the wait is not missed.
        let appended = shared.appended.notified();
        let settled = consumer.settled.notified();
        tokio::pin!(appended, settled);
        appended.as_mut().enable();
        settled.as_mut().enable();

        let now = Instant::now();
        let step = {
            let mut log = lock(&shared.log);
            log.expire(now);
            consumer.step(&log, now)
        };
        let deadline = match step {
            Step::Deliver { event, sequence, deliveries } => {
                let settle = MemorySettle { consumer: Arc::clone(consumer), sequence };
                return Delivery::new(*event, sequence, deliveries, Box::new(settle));
            }
            Step::Wait(deadline) => deadline,
        };
        let redelivery_due = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = appended => {}
            () = settled => {}
            () = redelivery_due => {}
        }
    }
}

/// Settles one delivery on its consumer.
struct MemorySettle {
    /// The consumer the delivery came from (its durable state outlives the stream).
    consumer: Arc<Consumer>,
    /// Which pending delivery to settle.
    sequence: u64,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(&self) -> Result<(), EventsError> {
        self.consumer.ack(self.sequence);
        Ok(())
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), EventsError> {
        self.consumer.nak(self.sequence, delay, Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
