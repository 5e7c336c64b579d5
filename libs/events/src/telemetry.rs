//! Metrics the buses record, named once so both buses report the same series.
//!
//! `agentmesh_events_published_total{backend, outcome}` counts publish calls by result
//! (`stored`, `duplicate`, `rejected`, `unavailable`, `invalid`): a rising `duplicate`
//! rate shows outbox re-sends, a rising `unavailable` rate a broker outage.

use crate::bus::PublishAck;
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
