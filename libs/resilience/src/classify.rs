//! Turning a call's result into what it means for resilience — healthy peer, sick peer
//! worth retrying, sick peer not worth retrying, or no signal at all — so the breaker and
//! the retry loop judge gRPC codes, HTTP statuses and server hints the same way everywhere.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, StatusCode};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::error::ResilienceError;

/// What one result says about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The peer answered sanely. This includes caller errors (invalid argument, not
    /// found, ...): the peer is healthy, so the breaker counts a success and nothing is
    /// retried.
    Success,
    /// No evidence either way (the caller cancelled, or a local layer refused the call):
    /// the breaker ignores it and nothing is retried.
    Neutral,
    /// The peer is unhealthy or overloaded. The breaker counts a failure.
    Failure {
        /// Whether sending the same request again may succeed.
        retryable: bool,
        /// The peer's own hint (`Retry-After`, google.rpc `RetryInfo`) of when to retry.
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// A failure worth retrying, without a server hint.
    pub const RETRYABLE: Self = Self::Failure { retryable: true, retry_after: None };
    /// A failure not worth retrying.
    pub const FATAL: Self = Self::Failure { retryable: false, retry_after: None };

    /// Whether the retry layer may send the request again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Failure { retryable: true, .. })
    }

    /// Sets the server's retry hint on a retryable failure; other outcomes are unchanged.
    pub fn with_retry_after(self, hint: Option<Duration>) -> Self {
        match self {
            Self::Failure { retryable: true, retry_after } => {
                Self::Failure { retryable: true, retry_after: hint.or(retry_after) }
            }
            other => other,
        }
    }
}

/// Decides the [`Outcome`] of a client's result; implemented by the classifiers here and
/// by any `Fn(&Result<T, E>) -> Outcome` closure.
pub trait Classify<T, E> {
    /// Classifies one result.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<F, T, E> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// Classifies a gRPC status code.
///
/// | codes | outcome | why |
/// |---|---|---|
/// | Ok | success | |
/// | Unavailable, ResourceExhausted, Aborted | retryable failure | transient by definition |
/// | DeadlineExceeded | failure, not retried | the caller's deadline is spent; the peer was too slow |
/// | Internal, Unknown, DataLoss | failure, not retried | a bug or corruption does not heal in milliseconds |
/// | InvalidArgument, NotFound, AlreadyExists, PermissionDenied, Unauthenticated, FailedPrecondition, OutOfRange, Unimplemented | success | the caller's problem; the peer is healthy |
/// | Cancelled | neutral | usually our own caller gave up; it says nothing about the peer |
pub fn classify_grpc_code(code: Code) -> Outcome {
    match code {
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented => Outcome::Success,
        Code::Cancelled => Outcome::Neutral,
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted => Outcome::RETRYABLE,
        Code::DeadlineExceeded | Code::Internal | Code::Unknown | Code::DataLoss => Outcome::FATAL,
    }
}

/// Classifies an HTTP response status, reading `Retry-After` on retryable failures.
///
/// 408, 429, 502, 503 and 504 are retryable failures; other 5xx are failures not retried,
/// except 501 Not Implemented, which like gRPC Unimplemented is the caller's problem;
/// 1xx–4xx are successes (a 4xx is the caller's problem; the peer is healthy).
pub fn classify_http_status(status: StatusCode, headers: &HeaderMap) -> Outcome {
    match status.as_u16() {
        408 | 429 | 502 | 503 | 504 => Outcome::RETRYABLE
            .with_retry_after(headers.get(RETRY_AFTER).and_then(|value| parse_retry_after(value, SystemTime::now()))),
        501 => Outcome::Success,
        500..=599 => Outcome::FATAL,
        _ => Outcome::Success,
    }
}

/// Parses a `Retry-After` value, either delta-seconds or an HTTP-date (a date already
/// past means "now"); `now` is a parameter so HTTP-dates can be tested.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The retry delay a server put in a status's google.rpc `RetryInfo` detail, if any.
pub fn retry_info(status: &tonic::Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}

/// Classifies results of typed tonic clients (`Result<T, tonic::Status>`), honouring
/// `RetryInfo`; use it with [`Resilience::call`](crate::Resilience::call).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcStatusClassifier;

impl<T> Classify<T, tonic::Status> for GrpcStatusClassifier {
    fn classify(&self, result: &Result<T, tonic::Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(status) => {
                let outcome = classify_grpc_code(status.code());
                if outcome.is_retryable() { outcome.with_retry_after(retry_info(status)) } else { outcome }
            }
        }
    }
}

/// Classifies results at the tonic `Channel` level (`http::Response<B>` or a transport
/// error), where a gRPC error is a successful HTTP response.
///
/// Tonic servers send errors as trailers-only responses: HTTP 200 with `grpc-status` in
/// the headers, which this reads. An error sent in trailers after a body is invisible at
/// this level (the response future resolves at the headers), so it counts as success.
/// A non-200 status (a proxy's answer) is classified as HTTP. Transport errors are
/// retryable failures: the request could not be exchanged with the peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcResponseClassifier;

impl<B, E> Classify<http::Response<B>, E> for GrpcResponseClassifier {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        let response = match result {
            Ok(response) => response,
            Err(_) => return Outcome::RETRYABLE,
        };
        if response.status() != StatusCode::OK {
            return classify_http_status(response.status(), response.headers());
        }
        let Some(value) = response.headers().get("grpc-status") else {
            return Outcome::Success;
        };
        let code = Code::from_bytes(value.as_bytes());
        let outcome = classify_grpc_code(code);
        if outcome.is_retryable() {
            outcome.with_retry_after(header_retry_info(code, response.headers()))
        } else {
            outcome
        }
    }
}

/// Same padding tolerance as tonic's own decoder of `grpc-status-details-bin`.
const STATUS_DETAILS_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Reads `RetryInfo` from `grpc-status-details-bin`. Decoded here rather than through
/// `tonic::Status::from_header_map`, which panics when a peer sends malformed base64.
fn header_retry_info(code: Code, headers: &HeaderMap) -> Option<Duration> {
    let encoded = headers.get("grpc-status-details-bin")?;
    let details = STATUS_DETAILS_BASE64.decode(encoded.as_bytes()).ok()?;
    retry_info(&tonic::Status::with_details(code, "", details.into()))
}

/// Classifies a result coming out of an inner layer: `Inner` errors and successes go to
/// `classifier`; a timeout from a per-attempt deadline is a retryable failure; another
/// layer's rejection (bulkhead full, nested breaker open) is neutral. Returns the result
/// unchanged beside its outcome.
pub(crate) fn classify_lifted<C, T, E>(
    classifier: &C,
    result: Result<T, ResilienceError<E>>,
) -> (Outcome, Result<T, ResilienceError<E>>)
where
    C: Classify<T, E> + ?Sized,
{
    let plain = match result {
        Ok(value) => Ok(value),
        Err(ResilienceError::Inner(error)) => Err(error),
        Err(timeout @ ResilienceError::Timeout { .. }) => {
            return (Outcome::RETRYABLE, Err(timeout));
        }
        Err(rejection) => return (Outcome::Neutral, Err(rejection)),
    };
    let outcome = classifier.classify(&plain);
    (outcome, plain.map_err(ResilienceError::Inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn grpc_code_table() {
        let retryable = [Code::Unavailable, Code::ResourceExhausted, Code::Aborted];
        let fatal = [Code::DeadlineExceeded, Code::Internal, Code::Unknown, Code::DataLoss];
        let caller = [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::Unimplemented,
        ];
        for code in retryable {
            assert_eq!(classify_grpc_code(code), Outcome::RETRYABLE, "{code:?}");
        }
        for code in fatal {
            assert_eq!(classify_grpc_code(code), Outcome::FATAL, "{code:?}");
        }
        for code in caller {
            assert_eq!(classify_grpc_code(code), Outcome::Success, "{code:?}");
        }
        assert_eq!(classify_grpc_code(Code::Cancelled), Outcome::Neutral);
    }

    #[test]
    fn http_status_table() {
        let none = HeaderMap::new();
        for status in [408, 429, 502, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(classify_http_status(status, &none), Outcome::RETRYABLE);
        }
        for status in [500, 505, 599] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(classify_http_status(status, &none), Outcome::FATAL);
        }
        for status in [200, 201, 204, 301, 400, 401, 403, 404, 409, 422, 501] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(classify_http_status(status, &none), Outcome::Success);
        }
    }

    #[test]
    fn http_status_honours_retry_after_only_when_retryable() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            classify_http_status(StatusCode::TOO_MANY_REQUESTS, &headers),
            Outcome::Failure { retryable: true, retry_after: Some(Duration::from_secs(7)) }
        );
        assert_eq!(classify_http_status(StatusCode::BAD_REQUEST, &headers), Outcome::Success);
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let parse = |text: &'static str| parse_retry_after(&HeaderValue::from_static(text), now);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse("-5"), None);
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("99999999999999999999999"), None);

        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let value = HeaderValue::from_str(&later).unwrap();
        assert_eq!(parse_retry_after(&value, now), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        let value = HeaderValue::from_str(&earlier).unwrap();
        assert_eq!(parse_retry_after(&value, now), Some(Duration::ZERO));
    }

    fn status_with_retry_info(code: Code, delay: Duration) -> tonic::Status {
        let details = ErrorDetails::with_retry_info(Some(delay));
        tonic::Status::with_error_details(code, "slow down", details)
    }

    #[test]
    fn status_classifier_reads_retry_info() {
        let status = status_with_retry_info(Code::Unavailable, Duration::from_millis(1500));
        let result: Result<(), _> = Err(status);
        assert_eq!(
            GrpcStatusClassifier.classify(&result),
            Outcome::Failure { retryable: true, retry_after: Some(Duration::from_millis(1500)) }
        );

        let not_found: Result<(), _> = Err(tonic::Status::not_found("no such session"));
        assert_eq!(GrpcStatusClassifier.classify(&not_found), Outcome::Success);
        let ok: Result<(), tonic::Status> = Ok(());
        assert_eq!(GrpcStatusClassifier.classify(&ok), Outcome::Success);
    }

    /// A trailers-only error response as a tonic server sends it, as seen by a client
    /// (the server-side `Status` extension does not cross the wire).
    fn grpc_response(status: &tonic::Status) -> http::Response<()> {
        let mut response = status.clone().into_http::<()>();
        response.extensions_mut().clear();
        response
    }

    #[test]
    fn response_classifier_reads_grpc_status_from_headers() {
        let classify =
            |response: http::Response<()>| GrpcResponseClassifier.classify(&Ok::<_, std::io::Error>(response));
        let unavailable = status_with_retry_info(Code::Unavailable, Duration::from_secs(2));
        assert_eq!(
            classify(grpc_response(&unavailable)),
            Outcome::Failure { retryable: true, retry_after: Some(Duration::from_secs(2)) }
        );
        assert_eq!(classify(grpc_response(&tonic::Status::internal("bug"))), Outcome::FATAL);
        assert_eq!(classify(grpc_response(&tonic::Status::not_found("gone"))), Outcome::Success);
        assert_eq!(classify(http::Response::new(())), Outcome::Success);

        let mut proxy_error = http::Response::new(());
        *proxy_error.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(classify(proxy_error), Outcome::RETRYABLE);

        let transport: Result<http::Response<()>, _> = Err(std::io::Error::other("reset"));
        assert_eq!(GrpcResponseClassifier.classify(&transport), Outcome::RETRYABLE);
    }

    #[test]
    fn response_classifier_survives_malformed_details() {
        let mut response = http::Response::new(());
        let headers = response.headers_mut();
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        headers.insert("grpc-status-details-bin", HeaderValue::from_static("%%% not base64 %%%"));
        let result: Result<_, std::io::Error> = Ok(response);
        assert_eq!(GrpcResponseClassifier.classify(&result), Outcome::RETRYABLE);
    }

    #[test]
    fn lifted_results_keep_layer_errors_apart() {
        let classifier = |result: &Result<u8, &str>| match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::FATAL,
        };
        let (outcome, _) = classify_lifted(&classifier, Ok::<u8, ResilienceError<&str>>(1));
        assert_eq!(outcome, Outcome::Success);
        let (outcome, result) = classify_lifted(&classifier, Err(ResilienceError::Inner("x")));
        assert_eq!(outcome, Outcome::FATAL);
        assert!(matches!(result, Err(ResilienceError::Inner("x"))));
        let timeout = ResilienceError::Timeout { after: Duration::from_secs(1) };
        let (outcome, _) = classify_lifted(&classifier, Err::<u8, _>(timeout));
        assert_eq!(outcome, Outcome::RETRYABLE);
        let full = ResilienceError::BulkheadFull { name: "db".into() };
        let (outcome, _) = classify_lifted(&classifier, Err::<u8, _>(full));
        assert_eq!(outcome, Outcome::Neutral);
    }
}
