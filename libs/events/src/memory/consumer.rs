//! Consumer state of the in-process bus: what was delivered, what is still un-acked.
//!
//! A consumer is a cursor over the log plus a table of outstanding deliveries, like a
//! JetStream consumer: `next` is the first sequence never delivered, `pending` holds
//! delivered-but-unacked sequences with their redelivery deadline. The ack floor is
//! therefore `min(pending) - 1` (or `next - 1`). Deliveries are computed on demand when
//! a subscriber polls, so nothing is buffered per subscriber, and `pending` is bounded
//! by [`MAX_ACK_PENDING`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::lock;
use super::log::Log;
use crate::bus::{MAX_ACK_PENDING, StartPosition, SubscriptionSpec};
use crate::envelope::Event;

/// One consumer; durable ones are shared by every subscription with their name.
#[derive(Debug)]
pub(super) struct Consumer {
    state: Mutex<State>,
    /// Woken on ack and nak, which can free a slot or make a redelivery due now.
    pub(super) settled: Notify,
}

#[derive(Debug)]
struct State {
    /// Filters, ack wait and max deliver in force (updated by `reconfigure`).
    spec: SubscriptionSpec,
    /// First sequence not yet considered for delivery.
    next: u64,
    /// Delivered, not yet acked.
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Deliveries so far, compared with `max_deliver`.
    deliveries: u64,
    /// When it is redelivered unless acked.
    deadline: Instant,
}

/// What a subscriber should do next.
#[derive(Debug)]
pub(super) enum Step {
    /// Hand this delivery out.
    Deliver {
        /// Boxed: this variant is large and most steps are waits.
        event: Box<Event>,
        sequence: u64,
        deliveries: u64,
    },
    /// Nothing to deliver; wait for a publish, a settle, or this redelivery deadline.
    Wait(Option<Instant>),
}

impl State {
    fn new(spec: SubscriptionSpec, log: &Log) -> Self {
        let next = match spec.start {
            StartPosition::All => log.first_sequence(),
            StartPosition::New => log.last_sequence() + 1,
            StartPosition::AfterSequence(sequence) => sequence.saturating_add(1),
        };
        State { spec, next, pending: BTreeMap::new() }
    }
}

impl Consumer {
    pub(super) fn new(spec: SubscriptionSpec, log: &Log) -> Self {
        Consumer { state: Mutex::new(State::new(spec, log)), settled: Notify::new() }
    }

    /// Applies a durable consumer's new spec: filters, ack wait and max deliver change in
    /// place; a different start position starts the consumer over.
    pub(super) fn reconfigure(&self, spec: SubscriptionSpec, log: &Log) {
        let mut state = lock(&self.state);
        if state.spec.start == spec.start {
            state.spec = spec;
        } else {
            tracing::warn!(
                durable = spec.durable_name.as_deref().unwrap_or_default(),
                "start position changed; durable consumer starts over"
            );
            *state = State::new(spec, log);
        }
        self.settled.notify_waiters();
    }

    /// The next delivery: a due redelivery first, else the next matching new event.
    pub(super) fn step(&self, log: &Log, now: Instant) -> Step {
        let mut state = lock(&self.state);
        if let Some(step) = state.redeliver(log, now) {
            return step;
        }
        if state.pending.len() < MAX_ACK_PENDING
            && let Some(step) = state.deliver_new(log, now)
        {
            return step;
        }
        Step::Wait(state.pending.values().map(|p| p.deadline).min())
    }

    /// Records an ack; acking twice or after max deliver is harmless.
    pub(super) fn ack(&self, sequence: u64) {
        lock(&self.state).pending.remove(&sequence);
        self.settled.notify_waiters();
    }

    /// Makes a pending delivery due after `delay` (now when `None`).
    pub(super) fn nak(&self, sequence: u64, delay: Option<Duration>, now: Instant) {
        if let Some(pending) = lock(&self.state).pending.get_mut(&sequence) {
            pending.deadline = now + delay.unwrap_or_default();
        }
        self.settled.notify_waiters();
    }
}

impl State {
    fn redeliver(&mut self, log: &Log, now: Instant) -> Option<Step> {
        let max_deliver = self.spec.max_deliver.map_or(u64::MAX, |max| u64::try_from(max).unwrap_or(1));
        let ack_wait = self.spec.ack_wait;
        loop {
            let sequence =
                self.pending.iter().find(|(_, pending)| pending.deadline <= now).map(|(&sequence, _)| sequence)?;
            let entry = log.get(sequence);
            let pending = self.pending.get_mut(&sequence)?;
            if let Some(entry) = entry
                && pending.deliveries < max_deliver
            {
                pending.deliveries += 1;
                pending.deadline = now + ack_wait;
                return Some(Step::Deliver {
                    event: Box::new(entry.event.clone()),
                    sequence,
                    deliveries: pending.deliveries,
                });
            }
            // Given up on after max deliver, or removed by retention: never again.
            self.pending.remove(&sequence);
        }
    }

    fn deliver_new(&mut self, log: &Log, now: Instant) -> Option<Step> {
        let found = log.entries_from(self.next).find(|entry| self.spec.selects(entry.event.topic()));
        let Some(entry) = found else {
            self.next = self.next.max(log.last_sequence() + 1);
            return None;
        };
        self.next = entry.sequence + 1;
        self.pending.insert(entry.sequence, Pending { deliveries: 1, deadline: now + self.spec.ack_wait });
        Some(Step::Deliver { event: Box::new(entry.event.clone()), sequence: entry.sequence, deliveries: 1 })
    }
}
