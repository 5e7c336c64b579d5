//! The in-process bus's append-only log: sequences, retention and deduplication.
//!
//! One log holds every topic, like one JetStream stream: sequences are global, start at 1
//! and increase by one per stored event. Retention only ever removes the oldest entries
//! (by count or age), so retained sequences stay contiguous and an entry is found by
//! index arithmetic. Deduplication remembers each id for the duplicate window
//! independently of retention, as JetStream does.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::bus::PublishAck;
use crate::envelope::Event;

/// Retention and deduplication limits of a [`Log`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Oldest entries are dropped beyond this many; `None` is unlimited.
    pub(super) max_messages: Option<u64>,
    /// Entries older than this are dropped; zero is unlimited.
    pub(super) max_age: Duration,
    /// How long an id is remembered for deduplication.
    pub(super) duplicate_window: Duration,
}

/// A stored event.
#[derive(Debug)]
pub(super) struct Entry {
    /// Position in the log, reported to subscribers.
    pub(super) sequence: u64,
    /// The stored event, cloned (cheaply: the payload is `Bytes`) into deliveries.
    pub(super) event: Event,
    /// When it was stored (tokio time, so tests can pause and advance it).
    stored_at: Instant,
}

/// The log itself; the bus guards it with a mutex.
#[derive(Debug)]
pub(super) struct Log {
    /// Retained entries, oldest first, with contiguous sequences.
    entries: VecDeque<Entry>,
    /// Sequence of the newest event ever stored (0 before the first).
    last_sequence: u64,
    /// Ids inside the duplicate window, with the sequence they were stored at.
    recent_ids: HashMap<String, u64>,
    /// The same ids in expiry order, so expiring them never scans the map.
    id_expiries: VecDeque<(Instant, String)>,
    /// Retention and deduplication settings.
    limits: Limits,
}

impl Log {
    pub(super) fn new(limits: Limits) -> Self {
        Log {
            entries: VecDeque::new(),
            last_sequence: 0,
            recent_ids: HashMap::new(),
            id_expiries: VecDeque::new(),
            limits,
        }
    }

    /// Stores `event` unless its id was stored within the duplicate window.
    pub(super) fn append(&mut self, event: Event, now: Instant) -> PublishAck {
        self.expire(now);
        if let Some(&sequence) = self.recent_ids.get(event.id()) {
            return PublishAck { sequence, duplicate: true };
        }
        self.last_sequence += 1;
        let sequence = self.last_sequence;
        self.recent_ids.insert(event.id().to_owned(), sequence);
        self.id_expiries.push_back((now + self.limits.duplicate_window, event.id().to_owned()));
        self.entries.push_back(Entry { sequence, event, stored_at: now });
        if let Some(max) = self.limits.max_messages {
            while self.entries.len() as u64 > max {
                self.entries.pop_front();
            }
        }
        PublishAck { sequence, duplicate: false }
    }

    /// Drops entries past the max age and ids past the duplicate window.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((expiry, _)) = self.id_expiries.front()
            && *expiry <= now
        {
            if let Some((_, id)) = self.id_expiries.pop_front() {
                self.recent_ids.remove(&id);
            }
        }
        if self.limits.max_age.is_zero() {
            return;
        }
        while let Some(entry) = self.entries.front()
            && entry.stored_at + self.limits.max_age <= now
        {
            self.entries.pop_front();
        }
    }

    /// Sequence of the oldest retained entry, or the next sequence when empty.
    pub(super) fn first_sequence(&self) -> u64 {
        self.entries.front().map_or(self.last_sequence + 1, |entry| entry.sequence)
    }

    /// Sequence of the newest event ever stored (0 before the first).
    pub(super) fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// The retained entry at `sequence`.
    pub(super) fn get(&self, sequence: u64) -> Option<&Entry> {
        let index = sequence.checked_sub(self.first_sequence())?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// The newest retained entry on `topic`, found by scanning from the newest end.
    pub(super) fn last_on(&self, topic: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|entry| entry.event.topic() == topic)
    }

    /// Retained entries from `sequence` on, oldest first.
    pub(super) fn entries_from(&self, sequence: u64) -> impl Iterator<Item = &Entry> {
        let skip = sequence.saturating_sub(self.first_sequence());
        self.entries.iter().skip(usize::try_from(skip).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits =
        Limits { max_messages: None, max_age: Duration::from_secs(60), duplicate_window: Duration::from_secs(10) };

    fn event(id: &str) -> Event {
        Event::builder("a.b", "test", "test.event").id(id).build().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn sequences_start_at_one_and_increase() {
        let mut log = Log::new(LIMITS);
        assert_eq!(log.first_sequence(), 1);
        assert_eq!(log.last_sequence(), 0);
        let now = Instant::now();
        assert_eq!(log.append(event("a"), now).sequence, 1);
        assert_eq!(log.append(event("b"), now).sequence, 2);
        assert_eq!(log.get(2).unwrap().event.id(), "b");
        assert!(log.get(0).is_none() && log.get(3).is_none());
        let ids: Vec<_> = log.entries_from(2).map(|e| e.event.id()).collect();
        assert_eq!(ids, ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn last_on_finds_the_newest_entry_of_a_topic() {
        let mut log = Log::new(LIMITS);
        let now = Instant::now();
        assert!(log.last_on("a.b").is_none());
        log.append(event("a"), now);
        log.append(Event::builder("c.d", "test", "test.event").id("other").build().unwrap(), now);
        log.append(event("b"), now);
        log.append(Event::builder("c.d", "test", "test.event").id("newest").build().unwrap(), now);
        assert_eq!(log.last_on("a.b").map(|e| (e.sequence, e.event.id())), Some((3, "b")));
        assert_eq!(log.last_on("c.d").map(|e| e.event.id()), Some("newest"));
        assert!(log.last_on("a").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_return_the_original_sequence_within_the_window() {
        let mut log = Log::new(LIMITS);
        let now = Instant::now();
        log.append(event("a"), now);
        let again = log.append(event("a"), now + Duration::from_secs(9));
        assert_eq!(again, PublishAck { sequence: 1, duplicate: true });
        let later = log.append(event("a"), now + Duration::from_secs(10));
        assert_eq!(later, PublishAck { sequence: 2, duplicate: false });
    }

    #[tokio::test(start_paused = true)]
    async fn max_messages_drops_the_oldest() {
        let mut log = Log::new(Limits { max_messages: Some(2), ..LIMITS });
        let now = Instant::now();
        for id in ["a", "b", "c"] {
            log.append(event(id), now);
        }
        assert_eq!(log.first_sequence(), 2);
        assert_eq!(log.last_sequence(), 3);
        assert!(log.get(1).is_none());
        let ids: Vec<_> = log.entries_from(1).map(|e| e.event.id()).collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_age_drops_old_entries_but_keeps_sequences() {
        let mut log = Log::new(LIMITS);
        let now = Instant::now();
        log.append(event("a"), now);
        log.append(event("b"), now + Duration::from_secs(30));
        log.expire(now + Duration::from_secs(60));
        assert_eq!(log.first_sequence(), 2);
        log.expire(now + Duration::from_secs(90));
        assert_eq!(log.first_sequence(), 3);
        assert_eq!(log.append(event("c"), now + Duration::from_secs(91)).sequence, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_age_keeps_everything() {
        let mut log = Log::new(Limits { max_age: Duration::ZERO, ..LIMITS });
        let now = Instant::now();
        log.append(event("a"), now);
        log.expire(now + Duration::from_secs(86_400 * 365));
        assert_eq!(log.first_sequence(), 1);
    }
}
