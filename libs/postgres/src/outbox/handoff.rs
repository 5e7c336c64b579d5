//! Committed events handed from their writer straight to this process's relay.
//!
//! Reading back what a write has just queued costs the relay a transaction per wake-up:
//! lock the rows, publish, mark them, commit (four round trips and a WAL flush), which on
//! the agent-run benchmark was as many round trips as all of a run's own statements. A
//! writer that still holds its events once its transaction has committed hands them over
//! here instead ([`Outbox::committed_events`](super::Outbox::committed_events)); the relay
//! publishes them at once and marks their rows published many at a time.
//!
//! The rows stay the record. An event the relay never gets to here — the queue was full,
//! its publish failed, the process died before the mark — is still unpublished in
//! `outbox`, and the relay's reading of the table publishes it with the same id, which the
//! bus deduplicates.

use std::sync::{Mutex, PoisonError};

use agentmesh_events::Event;
use tokio::sync::Notify;

/// Events waiting in one process beyond this are left to the table: the relay is behind,
/// and reading the table catches up in bigger batches than publishing one by one.
const CAPACITY: usize = 4096;

/// What writers have handed to the relay since it last looked.
#[derive(Debug, Default)]
pub(super) struct Handed {
    /// Committed events, in the order their writers handed them over.
    pub(super) events: Vec<Event>,
    /// Whether the table holds committed events that were not handed over (a writer
    /// only woke the relay, or the queue was full).
    pub(super) read_table: bool,
}

/// The queue between an outbox's writers and its relay, with the relay's wake-up.
#[derive(Debug, Default)]
pub(super) struct Handoff {
    handed: Mutex<Handed>,
    wake: Notify,
}

impl Handoff {
    /// Queues committed `events` for the relay and wakes it.
    pub(super) fn events(&self, events: impl IntoIterator<Item = Event>) {
        {
            let mut handed = self.handed.lock().unwrap_or_else(PoisonError::into_inner);
            for event in events {
                if handed.events.len() < CAPACITY {
                    handed.events.push(event);
                } else {
                    handed.read_table = true;
                }
            }
        }
        self.wake.notify_one();
    }

    /// Tells the relay that the table holds committed events it was not handed.
    pub(super) fn table(&self) {
        self.handed.lock().unwrap_or_else(PoisonError::into_inner).read_table = true;
        self.wake.notify_one();
    }

    /// Everything handed over since the last call.
    pub(super) fn take(&self) -> Handed {
        std::mem::take(&mut *self.handed.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Resolves once something was handed over (at once if it was since the last wait).
    pub(super) async fn notified(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Event {
        Event::builder("order.created", "orders", "agentmesh.order.created")
            .data(n.to_le_bytes().to_vec())
            .build()
            .unwrap()
    }

    #[test]
    fn events_are_taken_in_order_and_once() {
        let handoff = Handoff::default();
        let (a, b) = (event(1), event(2));
        handoff.events([a.clone()]);
        handoff.events([b.clone()]);
        let taken = handoff.take();
        let ids: Vec<&str> = taken.events.iter().map(Event::id).collect();
        assert_eq!(ids, [a.id(), b.id()]);
        assert!(!taken.read_table);
        assert!(handoff.take().events.is_empty(), "taken once");
    }

    #[test]
    fn a_full_queue_leaves_the_rest_to_the_table() {
        let handoff = Handoff::default();
        handoff.events((0..CAPACITY + 3).map(event));
        let taken = handoff.take();
        assert_eq!(taken.events.len(), CAPACITY);
        assert!(taken.read_table, "what did not fit is read from the table");
        handoff.table();
        assert!(handoff.take().read_table);
    }

    #[tokio::test]
    async fn a_handoff_before_the_wait_still_wakes_the_relay() {
        let handoff = Handoff::default();
        handoff.events([event(1)]);
        tokio::time::timeout(std::time::Duration::from_secs(5), handoff.notified())
            .await
            .expect("the wake-up was kept");
    }
}
