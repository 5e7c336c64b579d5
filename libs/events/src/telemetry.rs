//! Metrics the buses record, named once so both buses report the same series.
//!
//! `agentmesh_events_published_total{backend, outcome}` counts publish calls by result
//! (`stored`, `duplicate`, `rejected`, `unavailable`, `invalid`): a rising `duplicate`
//! rate shows outbox re-sends, a rising `unavailable` rate a broker outage.

use crate::bus::PublishAck;
use crate::envelope::Event;
use crate::error::EventsError;

/// Counts one publish call of `backend` (`memory` or `nats`).
pub(crate) fn record_publish(backend: &'static str, result: &Result<PublishAck, EventsError>) {
    let outcome = match result {
        Ok(ack) if ack.duplicate => "duplicate",
        Ok(_) => "stored",
        Err(EventsError::Unavailable { .. }) => "unavailable",
        Err(EventsError::Invalid(_)) => "invalid",
        Err(EventsError::Rejected { .. } | EventsError::Malformed { .. }) => "rejected",
    };
    metrics::counter!(
        "agentmesh_events_published_total",
        "backend" => backend,
        "outcome" => outcome
    )
    .increment(1);
}

/// Records how old `event` is as it is delivered.
pub(crate) fn record_delivery(event: &Event) {
    record_delivery_lag(event.event_type(), event.time());
}

/// Records the delivery, now, of an event of type `event_type` created at `created`: for
/// consumers served an event's copy rather than the bus' delivery (a replica's live copy
/// of a run's output), so that every consumer's lag is one series.
pub fn record_delivery_lag(event_type: &str, created: chrono::DateTime<chrono::Utc>) {
    let lag = (chrono::Utc::now() - created).to_std().unwrap_or_default();
    metrics::histogram!(DELIVERY_LAG_HISTOGRAM, "type" => event_type.to_owned()).record(lag.as_secs_f64());
}

/// How old events are when delivered, by CloudEvents type.
pub const DELIVERY_LAG_HISTOGRAM: &str = "agentmesh_events_delivery_lag_seconds";
