//! Classification of async-nats errors into retryable and permanent [`EventsError`]s.
//!
//! async-nats reports each call with its own error kind enum. What callers need is the
//! retry decision (see [`EventsError::is_retryable`]): timeouts, lost connections, "no
//! responders" (JetStream restarting or the stream missing) and server-side 5xx API
//! errors are [`EventsError::Unavailable`]; authentication, limits and invalid
//! configuration are [`EventsError::Rejected`]. Each mapping lives here, next to the
//! others, so the policy is read in one place.

use async_nats::jetstream;
use async_nats::jetstream::consumer::StreamErrorKind;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::stream::{ConsumerErrorKind, LastRawMessageError, LastRawMessageErrorKind};
use async_nats::{ConnectErrorKind, RequestError, jetstream::context::CreateStreamError};

use crate::error::EventsError;

/// Server-side failures (5xx) are transient; 4xx API errors are the request's fault.
fn api(operation: &'static str, api: &jetstream::Error, err: impl ToString) -> EventsError {
    if api.code() >= 500 {
        EventsError::unavailable(operation, err.to_string())
    } else {
        EventsError::rejected(operation, err)
    }
}

/// Whether a consumer API error means "no such consumer".
pub(super) fn is_consumer_not_found(err: &jetstream::stream::ConsumerError) -> bool {
    matches!(err.kind(), ConsumerErrorKind::JetStream(api)
        if api.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND)
}

/// Whether the server answered a consumer request with an API error (as opposed to not
/// answering at all).
pub(super) fn is_consumer_api_error(err: &jetstream::stream::ConsumerError) -> bool {
    matches!(err.kind(), ConsumerErrorKind::JetStream(_))
}

pub(super) fn connect(err: async_nats::ConnectError) -> EventsError {
    match err.kind() {
        ConnectErrorKind::ServerParse
        | ConnectErrorKind::Authentication
        | ConnectErrorKind::AuthorizationViolation
        | ConnectErrorKind::Tls => EventsError::rejected("connect", err),
        ConnectErrorKind::Dns | ConnectErrorKind::TimedOut | ConnectErrorKind::Io | ConnectErrorKind::MaxReconnects => {
            EventsError::unavailable("connect", err)
        }
    }
}

pub(super) fn stream(operation: &'static str, err: CreateStreamError) -> EventsError {
    match err.kind() {
        CreateStreamErrorKind::JetStream(error) => api(operation, &error, err),
        CreateStreamErrorKind::JetStreamUnavailable
        | CreateStreamErrorKind::TimedOut
        | CreateStreamErrorKind::Response => EventsError::unavailable(operation, err),
        CreateStreamErrorKind::EmptyStreamName
        | CreateStreamErrorKind::InvalidStreamName
        | CreateStreamErrorKind::DomainAndExternalSet
        | CreateStreamErrorKind::NotFound
        | CreateStreamErrorKind::ResponseParse => EventsError::rejected(operation, err),
    }
}

/// A failed request about an existing stream (look it up, delete it).
pub(super) fn existing_stream(operation: &'static str, err: jetstream::context::GetStreamError) -> EventsError {
    match err.kind() {
        GetStreamErrorKind::JetStream(error) => api(operation, &error, err),
        GetStreamErrorKind::Request => EventsError::unavailable(operation, err),
        GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => EventsError::rejected(operation, err),
    }
}

/// Whether a get-last-message request found no message on the subject.
pub(super) fn is_no_message(err: &LastRawMessageError) -> bool {
    matches!(err.kind(), LastRawMessageErrorKind::NoMessageFound)
}

/// A get-last-message failure other than "no message". A missing stream is retryable,
/// as on publish: the next bus to connect recreates it.
pub(super) fn last_message(err: LastRawMessageError) -> EventsError {
    const OPERATION: &str = "read last event";
    match err.kind() {
        LastRawMessageErrorKind::JetStream(error) if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
            EventsError::unavailable(OPERATION, err)
        }
        LastRawMessageErrorKind::JetStream(error) => api(OPERATION, &error, err),
        LastRawMessageErrorKind::NoMessageFound | LastRawMessageErrorKind::InvalidSubject => {
            EventsError::rejected(OPERATION, err)
        }
        LastRawMessageErrorKind::Other => {
            let unanswered = std::error::Error::source(&err).is_some_and(|source| source.is::<RequestError>());
            if unanswered {
                // Timed out, no responders, or the request could not be sent.
                EventsError::unavailable(OPERATION, err)
            } else {
                // The server answered with a message this client cannot read.
                EventsError::rejected(OPERATION, err)
            }
        }
    }
}

pub(super) fn publish(err: jetstream::context::PublishError) -> EventsError {
    const OPERATION: &str = "publish";
    match err.kind() {
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => EventsError::unavailable(OPERATION, err),
        PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::MaxPayloadExceeded => EventsError::rejected(OPERATION, err),
        PublishErrorKind::Other => {
            let api_error =
                std::error::Error::source(&err).and_then(|source| source.downcast_ref::<jetstream::Error>()).cloned();
            match api_error {
                Some(error) => api(OPERATION, &error, err),
                // Not an answer from the server: the request could not be sent.
                None => EventsError::unavailable(OPERATION, err),
            }
        }
    }
}

pub(super) fn consumer(operation: &'static str, err: jetstream::stream::ConsumerError) -> EventsError {
    match err.kind() {
        ConsumerErrorKind::JetStream(error) => api(operation, &error, err),
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => EventsError::unavailable(operation, err),
        ConsumerErrorKind::InvalidConsumerType | ConsumerErrorKind::InvalidName | ConsumerErrorKind::Other => {
            EventsError::rejected(operation, err)
        }
    }
}

pub(super) fn pull(err: jetstream::consumer::StreamError) -> EventsError {
    match err.kind() {
        StreamErrorKind::TimedOut | StreamErrorKind::Other => EventsError::unavailable("start pulling", err),
    }
}

pub(super) fn messages(err: jetstream::consumer::pull::MessagesError) -> EventsError {
    const OPERATION: &str = "pull";
    match err.kind() {
        MessagesErrorKind::ConsumerDeleted
        | MessagesErrorKind::PushBasedConsumer
        | MessagesErrorKind::RequestLimitExceeded => EventsError::rejected(OPERATION, err),
        MessagesErrorKind::MissingHeartbeat
        | MessagesErrorKind::Pull
        | MessagesErrorKind::NoResponders
        | MessagesErrorKind::Other => EventsError::unavailable(OPERATION, err),
    }
}
