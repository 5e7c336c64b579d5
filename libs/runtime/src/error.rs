//! The mesh's one error model, from a service's domain error to the REST client's JSON.
//!
//! A service turns its domain error into an [`ApiError`] and that into a
//! [`tonic::Status`] carrying google.rpc details: `ErrorInfo` (reason = the seed's error
//! code, metadata = the seed's `details`), `RetryInfo` (the `retry_after`) and `BadRequest`
//! (field violations). Any hop can read it back with [`ApiError::from_status`], and the
//! gateway renders the seed's `ErrorResponse` / `ValidationErrorResponse` with
//! [`ApiError::to_response`]. The HTTP status mapping is ARCHITECTURE.md §4.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error the mesh produces.
pub const ERROR_DOMAIN: &str = "agentmesh";

/// Metadata key carrying the correlation id on a [`tonic::Status`] and every request.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// The seed's error codes, plus the REST ones it left implicit (marked "extension").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Bad input: 422.
    Validation,
    /// Missing or invalid credentials: 401.
    Authentication,
    /// Valid credentials, not allowed: 403.
    Authorization,
    /// Too many requests: 429 with `Retry-After`.
    RateLimit,
    /// A dependency failed: 503 when retrying may help, 502 when not.
    ExternalService,
    /// A dependency's breaker is open: 503 with `retry_after`.
    CircuitBreakerOpen,
    /// A deadline passed: 504.
    Timeout,
    /// A bug or an unexpected state: 500, details withheld.
    Internal,
    /// Extension: no such resource, or not the caller's: 404.
    NotFound,
    /// Extension: the request conflicts with current state (e.g. idempotency key reuse): 409.
    Conflict,
    /// Extension: the route exists with other methods: 405.
    MethodNotAllowed,
    /// Extension: the body is larger than allowed: 413.
    PayloadTooLarge,
    /// Extension: the body's media type is not JSON: 415.
    UnsupportedMediaType,
    /// Extension: the contract has the operation, its service does not implement it yet
    /// (or a `FEATURE_*` flag switched it off): 501.
    NotImplemented,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 14] = [
        Self::Validation,
        Self::Authentication,
        Self::Authorization,
        Self::RateLimit,
        Self::ExternalService,
        Self::CircuitBreakerOpen,
        Self::Timeout,
        Self::Internal,
        Self::NotFound,
        Self::Conflict,
        Self::MethodNotAllowed,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::NotImplemented,
    ];

    /// The seed's lowercase code string, e.g. `validation_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validation => "validation_error",
            Self::Authentication => "authentication_error",
            Self::Authorization => "authorization_error",
            Self::RateLimit => "rate_limit_error",
            Self::ExternalService => "external_service_error",
            Self::CircuitBreakerOpen => "circuit_breaker_open",
            Self::Timeout => "timeout_error",
            Self::Internal => "internal_error",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotImplemented => "not_implemented",
        }
    }

    /// Parses the lowercase code string.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The gRPC status code carrying this error.
    pub fn grpc_code(self) -> Code {
        match self {
            Self::Validation | Self::UnsupportedMediaType => Code::InvalidArgument,
            Self::Authentication => Code::Unauthenticated,
            Self::Authorization => Code::PermissionDenied,
            Self::RateLimit | Self::PayloadTooLarge => Code::ResourceExhausted,
            Self::ExternalService | Self::CircuitBreakerOpen => Code::Unavailable,
            Self::Timeout => Code::DeadlineExceeded,
            Self::Internal => Code::Internal,
            Self::NotFound => Code::NotFound,
            Self::Conflict => Code::AlreadyExists,
            Self::MethodNotAllowed | Self::NotImplemented => Code::Unimplemented,
        }
    }

    /// The code a bare gRPC status (one without `ErrorInfo`) stands for.
    pub fn from_grpc_code(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => Self::Validation,
            Code::Unauthenticated => Self::Authentication,
            Code::PermissionDenied => Self::Authorization,
            Code::ResourceExhausted => Self::RateLimit,
            Code::Unavailable => Self::ExternalService,
            Code::DeadlineExceeded => Self::Timeout,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists | Code::Aborted => Self::Conflict,
            Code::Unimplemented => Self::NotImplemented,
            Code::Ok | Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => Self::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invalid field: the seed's `ValidationErrorDetail`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldViolation {
    /// The field's name as the client sent it, e.g. `limit` or `sessions[3].title`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// The offending value, as text (`null` when absent).
    pub value: Value,
}

impl FieldViolation {
    /// `field` is invalid: `message`, about `value`.
    pub fn new(field: &str, message: &str, value: Value) -> Self {
        Self { field: field.to_owned(), message: message.to_owned(), value }
    }
}

/// An error as it crosses service boundaries: code, message, details, retry hint.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The seed's error code.
    pub code: ErrorCode,
    /// A message safe to show the client.
    pub message: String,
    /// The seed's free-form `details` (e.g. `service_name`, `is_retryable`).
    pub details: Map<String, Value>,
    /// Invalid fields, for validation errors.
    pub field_violations: Vec<FieldViolation>,
    /// When the client may try again.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a code and a client-safe message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: Map::new(), field_violations: Vec::new(), retry_after: None }
    }

    /// A validation error listing the invalid fields.
    pub fn validation(violations: Vec<FieldViolation>) -> Self {
        let message = match violations.as_slice() {
            [one] => format!("Validation failed: {}: {}", one.field, one.message),
            _ => "Validation failed".to_owned(),
        };
        Self { field_violations: violations, ..Self::new(ErrorCode::Validation, message) }
    }

    /// A 404 for `resource` (e.g. `Session`): also what another tenant's id answers, so
    /// existence never leaks.
    pub fn not_found(resource: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{resource} not found"))
    }

    /// An internal error. The cause is for logs only; the client sees a generic message.
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "Internal server error")
    }

    /// A failed dependency, in the seed's shape (`service_name`, `service_type`,
    /// `is_retryable`).
    pub fn external_service(service_name: &str, service_type: &str, is_retryable: bool) -> Self {
        let mut error = Self::new(ErrorCode::ExternalService, format!("External service {service_name} failed"));
        error.details.insert("service_name".into(), service_name.into());
        error.details.insert("service_type".into(), service_type.into());
        error.details.insert("is_retryable".into(), is_retryable.into());
        error
    }

    /// A rejected call because `service_name`'s circuit breaker is open.
    pub fn circuit_open(service_name: &str, retry_after: Duration) -> Self {
        let mut error =
            Self::new(ErrorCode::CircuitBreakerOpen, format!("Circuit breaker open for service: {service_name}"));
        error.details.insert("service_name".into(), service_name.into());
        error.retry_after = Some(retry_after);
        error
    }

    /// A deadline that passed after `after`.
    pub fn timeout(operation: &str, after: Duration) -> Self {
        let mut error = Self::new(ErrorCode::Timeout, format!("{operation} timed out"));
        error.details.insert("timeout_duration".into(), after.as_secs_f64().into());
        error
    }

    /// Adds one entry to `details`.
    #[must_use]
    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Sets the retry hint.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Whether the seed's `is_retryable` detail is false (an external error that retrying
    /// will not fix).
    fn is_permanent(&self) -> bool {
        self.details.get("is_retryable") == Some(&Value::Bool(false))
    }

    /// The HTTP status the gateway answers with.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.code {
            ErrorCode::Validation => S::UNPROCESSABLE_ENTITY,
            ErrorCode::Authentication => S::UNAUTHORIZED,
            ErrorCode::Authorization => S::FORBIDDEN,
            ErrorCode::RateLimit => S::TOO_MANY_REQUESTS,
            ErrorCode::ExternalService if self.is_permanent() => S::BAD_GATEWAY,
            ErrorCode::ExternalService | ErrorCode::CircuitBreakerOpen => S::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => S::GATEWAY_TIMEOUT,
            ErrorCode::Internal => S::INTERNAL_SERVER_ERROR,
            ErrorCode::NotFound => S::NOT_FOUND,
            ErrorCode::Conflict => S::CONFLICT,
            ErrorCode::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => S::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::NotImplemented => S::NOT_IMPLEMENTED,
        }
    }

    /// Reads an error back from a status, whichever service produced it. A status without
    /// agentmesh details (e.g. from tonic itself) maps by its gRPC code and keeps its
    /// message only when that message cannot be internal detail.
    pub fn from_status(status: &tonic::Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info().filter(|info| info.domain == ERROR_DOMAIN);
        let code = info
            .and_then(|info| ErrorCode::parse(&info.reason))
            .unwrap_or_else(|| ErrorCode::from_grpc_code(status.code()));
        let message = if code == ErrorCode::Internal && info.is_none() {
            "Internal server error".to_owned()
        } else {
            status.message().to_owned()
        };
        let mut error = Self::new(code, message);
        if let Some(info) = info {
            for (key, raw) in &info.metadata {
                let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()));
                error.details.insert(key.clone(), value);
            }
        }
        if let Some(bad_request) = details.bad_request() {
            error.field_violations = bad_request
                .field_violations
                .iter()
                .map(|v| {
                    let (message, value) = split_violation_value(&v.description);
                    FieldViolation { field: v.field.clone(), message, value }
                })
                .collect();
        }
        error.retry_after = details.retry_info().and_then(|info| info.retry_delay);
        error
    }

    /// The seed's `ErrorResponse` (or `ValidationErrorResponse`) body.
    pub fn to_response(&self, correlation_id: Option<&str>, path: &str) -> ErrorResponse {
        let mut details = self.details.clone();
        if let Some(after) = self.retry_after {
            details.insert("retry_after".into(), retry_after_seconds(after).into());
        }
        ErrorResponse {
            error: true,
            code: self.code.as_str(),
            message: self.message.clone(),
            details: if details.is_empty() { None } else { Some(details) },
            correlation_id: correlation_id.map(str::to_owned),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            path: path.to_owned(),
            validation_errors: (self.code == ErrorCode::Validation).then(|| self.field_violations.clone()),
        }
    }
}

/// Whole seconds for `Retry-After` and `retry_after`, rounded up so clients never retry early.
pub fn retry_after_seconds(after: Duration) -> u64 {
    after.as_secs() + u64::from(after.subsec_nanos() > 0)
}

/// The seed's error body: `ErrorResponse`, or `ValidationErrorResponse` when
/// `validation_errors` is present.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorResponse {
    /// Always `true`.
    pub error: bool,
    /// The seed's error code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Free-form details, including `retry_after` in seconds when set.
    pub details: Option<Map<String, Value>>,
    /// The request's correlation id.
    pub correlation_id: Option<String>,
    /// When the error was produced, RFC 3339.
    pub timestamp: String,
    /// The request path.
    pub path: String,
    /// Invalid fields (validation errors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_errors: Option<Vec<FieldViolation>>,
}

/// Separator between a violation's message and its JSON-encoded value inside the
/// google.rpc `FieldViolation.description`, which has no value field of its own.
const VALUE_SEPARATOR: &str = "\u{1f}value=";

fn split_violation_value(description: &str) -> (String, Value) {
    match description.split_once(VALUE_SEPARATOR) {
        Some((message, raw)) => (message.to_owned(), serde_json::from_str(raw).unwrap_or(Value::Null)),
        None => (description.to_owned(), Value::Null),
    }
}

impl ApiError {
    /// The contract's `ErrorDetail` of this error: what a stream's error event and a failed
    /// run carry, with the current request's correlation id.
    pub fn to_detail(&self) -> agentmesh_proto::agentmesh::common::v1::ErrorDetail {
        use agentmesh_proto::agentmesh::common::v1::{ErrorCode as ProtoCode, ErrorDetail};
        let name = format!("ERROR_CODE_{}", self.code.as_str().to_ascii_uppercase());
        ErrorDetail {
            code: ProtoCode::from_str_name(&name).unwrap_or(ProtoCode::InternalError) as i32,
            message: self.message.clone(),
            details: Some(agentmesh_proto::json::object_to_struct(&self.details)),
            retry_after: self.retry_after.map(|after| i32::try_from(retry_after_seconds(after)).unwrap_or(i32::MAX)),
            correlation_id: crate::RequestContext::current().map(|context| context.correlation_id),
        }
    }

    /// The error an `ErrorDetail` describes (an unknown code reads as `internal_error`).
    pub fn from_detail(detail: &agentmesh_proto::agentmesh::common::v1::ErrorDetail) -> Self {
        use agentmesh_proto::agentmesh::common::v1::ErrorCode as ProtoCode;
        let code = ProtoCode::try_from(detail.code)
            .ok()
            .and_then(|code| code.as_str_name().strip_prefix("ERROR_CODE_").map(str::to_ascii_lowercase))
            .and_then(|name| ErrorCode::parse(&name))
            .unwrap_or(ErrorCode::Internal);
        let mut error = Self::new(code, detail.message.clone());
        error.details = detail.details.as_ref().map(agentmesh_proto::json::struct_to_object).unwrap_or_default();
        error.retry_after = detail.retry_after.and_then(|after| u64::try_from(after).ok()).map(Duration::from_secs);
        error
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        let metadata = error
            .details
            .iter()
            .map(|(key, value)| (key.clone(), value.to_string()))
            .collect::<std::collections::HashMap<_, _>>();
        let mut details = ErrorDetails::with_error_info(error.code.as_str(), ERROR_DOMAIN, metadata);
        if let Some(after) = error.retry_after {
            details.set_retry_info(Some(after));
        }
        if !error.field_violations.is_empty() {
            let violations = error
                .field_violations
                .iter()
                .map(|v| {
                    tonic_types::FieldViolation::new(&v.field, format!("{}{VALUE_SEPARATOR}{}", v.message, v.value))
                })
                .collect::<Vec<_>>();
            details.set_bad_request(violations);
        }
        tonic::Status::with_error_details(error.code.grpc_code(), error.message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_a_trip_through_a_grpc_status() {
        for code in ErrorCode::ALL {
            let original = ApiError::new(code, "boom").with_detail("service_name", "llm").with_detail("attempts", 3);
            let status = tonic::Status::from(original.clone());
            assert_eq!(status.code(), code.grpc_code());
            assert_eq!(ApiError::from_status(&status), original, "{code}");
        }
    }

    #[test]
    fn field_violations_and_retry_after_survive_with_values() {
        let original = ApiError::validation(vec![
            FieldViolation {
                field: "limit".into(),
                message: "must be between 1 and 100".into(),
                value: Value::from(500),
            },
            FieldViolation { field: "sort_by".into(), message: "unknown field".into(), value: Value::from("name") },
        ])
        .with_retry_after(Duration::from_millis(1500));
        let back = ApiError::from_status(&tonic::Status::from(original.clone()));
        assert_eq!(back, original);
    }

    #[test]
    fn http_status_follows_architecture_section_4() {
        use http::StatusCode as S;
        let cases = [
            (ApiError::validation(vec![]), S::UNPROCESSABLE_ENTITY),
            (ApiError::new(ErrorCode::Authentication, "x"), S::UNAUTHORIZED),
            (ApiError::new(ErrorCode::Authorization, "x"), S::FORBIDDEN),
            (ApiError::not_found("Session"), S::NOT_FOUND),
            (ApiError::new(ErrorCode::Conflict, "x"), S::CONFLICT),
            (ApiError::new(ErrorCode::RateLimit, "x"), S::TOO_MANY_REQUESTS),
            (ApiError::external_service("openai", "llm_provider", true), S::SERVICE_UNAVAILABLE),
            (ApiError::external_service("openai", "llm_provider", false), S::BAD_GATEWAY),
            (ApiError::circuit_open("openai", Duration::from_secs(30)), S::SERVICE_UNAVAILABLE),
            (ApiError::timeout("chat", Duration::from_secs(5)), S::GATEWAY_TIMEOUT),
            (ApiError::internal(), S::INTERNAL_SERVER_ERROR),
            (ApiError::from_status(&tonic::Status::unimplemented("Not yet implemented")), S::NOT_IMPLEMENTED),
        ];
        for (error, expected) in cases {
            assert_eq!(error.http_status(), expected, "{}", error.code);
        }
    }

    #[test]
    fn a_bare_internal_status_does_not_leak_its_message() {
        let status = tonic::Status::internal("connection to 10.0.0.7:5432 refused");
        let error = ApiError::from_status(&status);
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(!error.message.contains("10.0.0.7"));
        let not_found = ApiError::from_status(&tonic::Status::not_found("Session not found"));
        assert_eq!((not_found.code, not_found.message.as_str()), (ErrorCode::NotFound, "Session not found"));
    }

    #[test]
    fn responses_have_the_seed_shape() {
        let body = serde_json::to_value(
            ApiError::circuit_open("llm-proxy", Duration::from_millis(2500)).to_response(Some("c-1"), "/api/v1/x"),
        )
        .unwrap();
        assert_eq!(body["error"], true);
        assert_eq!(body["code"], "circuit_breaker_open");
        assert_eq!(body["details"]["service_name"], "llm-proxy");
        assert_eq!(body["details"]["retry_after"], 3);
        assert_eq!(body["correlation_id"], "c-1");
        assert_eq!(body["path"], "/api/v1/x");
        assert!(body.get("validation_errors").is_none());
        assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());

        let validation = serde_json::to_value(
            ApiError::validation(vec![FieldViolation {
                field: "limit".into(),
                message: "too big".into(),
                value: 500.into(),
            }])
            .to_response(None, "/p"),
        )
        .unwrap();
        assert_eq!(validation["code"], "validation_error");
        assert_eq!(validation["validation_errors"][0]["field"], "limit");
        assert_eq!(validation["validation_errors"][0]["value"], 500);
        assert_eq!(validation["correlation_id"], Value::Null);
    }
}
