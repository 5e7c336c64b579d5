//! The parts of the document every operation shares: the seed's error bodies exactly as
//! [`agentmesh_runtime::error::ErrorResponse`] serializes them, one reusable response per
//! error status, the response headers the gateway sets, and the request headers it reads.

use agentmesh_runtime::ErrorCode;
use serde_json::{Map, Value as Json, json};

use super::schema::reference;

/// Component name of the seed's error body.
pub const ERROR_RESPONSE: &str = "ErrorResponse";
/// Component name of the seed's 422 body.
pub const VALIDATION_ERROR_RESPONSE: &str = "ValidationErrorResponse";
/// Component name of one invalid field.
pub const VALIDATION_ERROR_DETAIL: &str = "ValidationErrorDetail";

/// An error status an operation may answer with, and its reusable response component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStatus {
    /// 401 `authentication_error`.
    Unauthorized,
    /// 403 `authorization_error`.
    Forbidden,
    /// 404 `not_found`.
    NotFound,
    /// 409 `conflict`.
    Conflict,
    /// 413 `payload_too_large`.
    PayloadTooLarge,
    /// 415 `unsupported_media_type`.
    UnsupportedMediaType,
    /// 422 `validation_error`.
    Validation,
    /// 429 `rate_limit_error`.
    RateLimited,
    /// 500 `internal_error`.
    Internal,
    /// 501 `not_implemented`.
    NotImplemented,
    /// 502 `external_service_error` (not retryable).
    BadGateway,
    /// 503 `external_service_error` (retryable) or `circuit_breaker_open`.
    Unavailable,
    /// 504 `timeout_error`.
    Timeout,
}

impl ErrorStatus {
    /// Every error status, in status order.
    pub const ALL: [ErrorStatus; 13] = [
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::Conflict,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::Validation,
        Self::RateLimited,
        Self::Internal,
        Self::NotImplemented,
        Self::BadGateway,
        Self::Unavailable,
        Self::Timeout,
    ];

    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Validation => 422,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::NotImplemented => 501,
            Self::BadGateway => 502,
            Self::Unavailable => 503,
            Self::Timeout => 504,
        }
    }

    /// The name of its component under `components.responses`.
    pub fn component(self) -> &'static str {
        match self {
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "NotFound",
            Self::Conflict => "Conflict",
            Self::PayloadTooLarge => "PayloadTooLarge",
            Self::UnsupportedMediaType => "UnsupportedMediaType",
            Self::Validation => "ValidationError",
            Self::RateLimited => "RateLimited",
            Self::Internal => "InternalError",
            Self::NotImplemented => "NotImplemented",
            Self::BadGateway => "BadGateway",
            Self::Unavailable => "ServiceUnavailable",
            Self::Timeout => "GatewayTimeout",
        }
    }

    fn description(self) -> String {
        let text = match self {
            Self::Unauthorized => "Missing, invalid or expired credentials (`authentication_error`).",
            Self::Forbidden => "The credentials lack a scope this operation needs (`authorization_error`).",
            Self::NotFound => {
                "No such resource, or it belongs to someone else (`not_found`): existence is never revealed."
            }
            Self::Conflict => {
                "The request conflicts with the current state (`conflict`), for example an `Idempotency-Key` \
                 reused with a different body or still in progress."
            }
            Self::PayloadTooLarge => {
                return format!("The request body exceeds {} bytes (`payload_too_large`).", crate::MAX_BODY_BYTES);
            }
            Self::UnsupportedMediaType => "The body is not `application/json` (`unsupported_media_type`).",
            Self::Validation => {
                "The request is malformed or breaks a field rule (`validation_error`); every invalid field is \
                 listed in `validation_errors`."
            }
            Self::RateLimited => "A rate limit was reached (`rate_limit_error`); retry after `Retry-After` seconds.",
            Self::Internal => "An unexpected error (`internal_error`); details are withheld, quote the correlation id.",
            Self::NotImplemented => "The service behind this operation does not implement it yet (`not_implemented`).",
            Self::BadGateway => {
                "A dependency failed and retrying will not help (`external_service_error` with `is_retryable: false`)."
            }
            Self::Unavailable => {
                "A dependency is unavailable (`external_service_error`) or its circuit breaker is open \
                 (`circuit_breaker_open`, with `details.retry_after`); retry later."
            }
            Self::Timeout => "The operation did not finish within the request timeout (`timeout_error`).",
        };
        text.to_owned()
    }

    /// The reusable response: the error body plus the headers every response carries.
    fn response(self) -> Json {
        let schema = match self {
            Self::Validation => VALIDATION_ERROR_RESPONSE,
            _ => ERROR_RESPONSE,
        };
        let mut headers = common_headers();
        if matches!(self, Self::RateLimited | Self::Unavailable) {
            headers.insert("Retry-After".into(), header_ref("RetryAfter"));
        }
        json!({
            "description": self.description(),
            "headers": headers,
            "content": { "application/json": { "schema": reference(schema) } },
        })
    }
}

/// A `$ref` to the reusable response of `status`.
pub fn response_ref(status: ErrorStatus) -> Json {
    json!({ "$ref": format!("#/components/responses/{}", status.component()) })
}

/// A `$ref` to the header component `name`.
pub fn header_ref(name: &str) -> Json {
    json!({ "$ref": format!("#/components/headers/{name}") })
}

/// A `$ref` to the parameter component `name`.
pub fn parameter_ref(name: &str) -> Json {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

/// The headers on every response: the correlation id and the rate-limit state.
pub fn common_headers() -> Map<String, Json> {
    let mut headers = Map::new();
    headers.insert("X-Correlation-ID".into(), header_ref("CorrelationId"));
    headers.insert("X-RateLimit-Limit".into(), header_ref("RateLimitLimit"));
    headers.insert("X-RateLimit-Remaining".into(), header_ref("RateLimitRemaining"));
    headers.insert("X-RateLimit-Reset".into(), header_ref("RateLimitReset"));
    headers
}

/// `components.responses`: one per error status.
pub fn responses() -> Map<String, Json> {
    ErrorStatus::ALL.iter().map(|status| (status.component().to_owned(), status.response())).collect()
}

/// `components.headers`.
pub fn headers() -> Map<String, Json> {
    let count =
        |description: &str| json!({ "description": description, "schema": { "type": "integer", "minimum": 0 } });
    let mut headers = Map::new();
    headers.insert(
        "CorrelationId".into(),
        json!({
            "description": "The request's correlation id: the caller's `X-Correlation-ID` when it was valid, \
                            else a generated one. Also in error bodies and every log line.",
            "required": true,
            "schema": { "type": "string" },
        }),
    );
    headers
        .insert("RateLimitLimit".into(), count("Requests allowed per minute by the limit the caller will hit first."));
    headers.insert("RateLimitRemaining".into(), count("Requests still allowed in the current window."));
    headers.insert("RateLimitReset".into(), count("Seconds until the full quota is available again."));
    headers.insert("RetryAfter".into(), count("Seconds to wait before retrying."));
    headers.insert("TotalCount".into(), count("Number of items matching the filter, across all pages."));
    headers.insert(
        "Link".into(),
        json!({
            "description": "The next page, when there is one: `</api/v1/…?page_token=…>; rel=\"next\"`.",
            "schema": { "type": "string" },
        }),
    );
    headers
}

/// `components.parameters`: the request headers the gateway reads.
pub fn parameters() -> Map<String, Json> {
    let mut parameters = Map::new();
    parameters.insert(
        "CorrelationId".into(),
        json!({
            "name": "X-Correlation-ID",
            "in": "header",
            "description": "Your id for this request, echoed in the response and passed to every service: \
                            1 to 128 characters from `A-Z a-z 0-9 - _ . :`. Other values are replaced by a \
                            generated id, never refused.",
            "schema": { "type": "string" },
        }),
    );
    parameters.insert(
        "IdempotencyKey".into(),
        json!({
            "name": "Idempotency-Key",
            "in": "header",
            "description": "Makes a create safe to retry: the same key with the same body within 24 hours \
                            returns the first result; with another body it is a 409. 1 to 255 visible ASCII \
                            characters.",
            "schema": { "type": "string", "pattern": "^[!-~]{1,255}$" },
        }),
    );
    parameters.insert(
        "LastEventId".into(),
        json!({
            "name": "Last-Event-ID",
            "in": "header",
            "description": "Resumes the stream after this event `id` (a sequence number), as browsers send \
                            on reconnection; other values are ignored.",
            "schema": { "type": "string" },
        }),
    );
    parameters
}

/// The `ErrorResponse`, `ValidationErrorResponse` and `ValidationErrorDetail` schemas.
pub fn schemas() -> [(&'static str, Json); 3] {
    let codes: Vec<&str> = ErrorCode::ALL.iter().filter(|c| **c != ErrorCode::Validation).map(|c| c.as_str()).collect();
    [
        (ERROR_RESPONSE, error_body(json!({ "type": "string", "enum": codes }), false)),
        (VALIDATION_ERROR_RESPONSE, error_body(json!({ "type": "string", "const": "validation_error" }), true)),
        (
            VALIDATION_ERROR_DETAIL,
            json!({
                "type": "object",
                "description": "One invalid field.",
                "required": ["field", "message", "value"],
                "additionalProperties": false,
                "properties": {
                    "field": {
                        "type": "string",
                        "description": "The field as the client sent it: `limit`, `sessions[3].title`, or `body`.",
                    },
                    "message": { "type": "string", "description": "What is wrong with it." },
                    "value": { "description": "The offending value (long strings cut, objects and arrays as null)." },
                },
            }),
        ),
    ]
}

fn error_body(code: Json, validation: bool) -> Json {
    let mut properties = json!({
        "error": { "type": "boolean", "const": true, "description": "Always `true`." },
        "code": code,
        "message": { "type": "string", "description": "A human-readable message, safe to show." },
        "details": {
            "type": ["object", "null"],
            "description": "Free-form details, for example `service_name`, `is_retryable`, `allowed_methods`, \
                            or `retry_after` (seconds).",
        },
        "correlation_id": {
            "type": ["string", "null"],
            "description": "The request's correlation id, also in the `X-Correlation-ID` header.",
        },
        "timestamp": { "type": "string", "format": "date-time", "description": "When the error occurred." },
        "path": { "type": "string", "description": "The request path." },
    });
    let mut required = vec!["error", "code", "message", "details", "correlation_id", "timestamp", "path"];
    let description = if validation {
        properties["validation_errors"] = json!({
            "type": "array",
            "items": reference(VALIDATION_ERROR_DETAIL),
            "description": "Every invalid field.",
        });
        required.push("validation_errors");
        "The body of a 422: an `ErrorResponse` that lists every invalid field."
    } else {
        "The body of every error response except 422."
    };
    properties["code"]["description"] = Json::from("The error code; it decides the HTTP status.");
    json!({
        "type": "object",
        "description": description,
        "required": required,
        "additionalProperties": false,
        "properties": properties,
    })
}
