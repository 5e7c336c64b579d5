//! Error types of the event bus.
//!
//! Callers mostly need one answer from an error: retry later or give up. [`EventsError`]
//! gives it through [`EventsError::is_retryable`]: only [`EventsError::Unavailable`] is
//! worth retrying (the broker is down, slow or restarting); everything else would fail
//! the same way again. Building-time mistakes ([`ValidationError`]) and wire-format
//! problems on received messages ([`DecodeError`]) are kept apart, so a consumer can
//! tell "my code built a bad event" from "someone put a bad message on the stream".

use std::error::Error as StdError;

/// Boxed cause of an [`EventsError::Unavailable`], kept for logs.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An event, topic, subscription or configuration value that can never be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A topic to publish on or look up is malformed (empty token, whitespace, wildcard).
    #[error("invalid topic {topic:?}: {reason}")]
    Topic {
        /// The rejected topic.
        topic: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A subscription filter is malformed.
    #[error("invalid topic filter {filter:?}: {reason}")]
    Filter {
        /// The rejected filter.
        filter: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A CloudEvents attribute of an event is empty or cannot travel in a header.
    #[error("invalid event attribute {name}: {reason}")]
    Attribute {
        /// CloudEvents name of the attribute (`id`, `source`, ...).
        name: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A name (stream, durable consumer, subject root) is not usable on NATS.
    #[error("invalid {kind} {value:?}: {reason}")]
    Name {
        /// What the name is for.
        kind: &'static str,
        /// The rejected name.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A numeric or duration setting is out of range.
    #[error("invalid setting {name}: {reason}")]
    Setting {
        /// The setting's field name.
        name: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// A message on the stream that is not a valid agentmesh CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A required CloudEvents attribute header is absent.
    #[error("missing required attribute header {0}")]
    MissingAttribute(&'static str),
    /// An attribute header is present but its value is unusable.
    #[error("invalid attribute header {name}: {reason}")]
    InvalidAttribute {
        /// The header name.
        name: &'static str,
        /// Why the value was rejected.
        reason: String,
    },
    /// The message's subject is not under the bus's subject root.
    #[error("subject {subject:?} is outside subject root {root:?}")]
    ForeignSubject {
        /// The message's NATS subject.
        subject: String,
        /// The bus's subject root.
        root: String,
    },
    /// The attributes decoded but do not form a valid event.
    #[error("decoded event is invalid: {0}")]
    Invalid(#[from] ValidationError),
}

/// Error of a publish, subscribe, ack or administration call.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The input can never be accepted; fix the caller.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A stored message could not be decoded. A subscription has terminated it so it is
    /// not redelivered, and continues with the next message.
    #[error("malformed message at stream sequence {sequence}: {source}")]
    Malformed {
        /// Stream sequence of the bad message.
        sequence: u64,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
    /// The broker refused the request for a reason that retrying will not change
    /// (limits, permissions, incompatible configuration).
    #[error("{operation} rejected: {reason}")]
    Rejected {
        /// What was being done.
        operation: &'static str,
        /// The broker's reason.
        reason: String,
    },
    /// The broker could not be reached or did not answer in time; retry later.
    #[error("event broker unavailable during {operation}: {source}")]
    Unavailable {
        /// What was being done.
        operation: &'static str,
        /// The underlying transport or timeout error.
        #[source]
        source: BoxError,
    },
}

impl EventsError {
    /// Whether the same call may succeed later (the broker was unreachable or slow).
    pub fn is_retryable(&self) -> bool {
        matches!(self, EventsError::Unavailable { .. })
    }

    /// A [`EventsError::Rejected`] for `operation`.
    pub(crate) fn rejected(operation: &'static str, reason: impl ToString) -> Self {
        EventsError::Rejected { operation, reason: reason.to_string() }
    }

    /// An [`EventsError::Unavailable`] for `operation`.
    pub(crate) fn unavailable(operation: &'static str, source: impl Into<BoxError>) -> Self {
        EventsError::Unavailable { operation, source: source.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(EventsError::unavailable("publish", "connection reset").is_retryable());
        assert!(!EventsError::rejected("publish", "maximum messages exceeded").is_retryable());
        let invalid = ValidationError::Setting { name: "ack_wait", reason: "must be positive" };
        assert!(!EventsError::from(invalid).is_retryable());
    }
}
