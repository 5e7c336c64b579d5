//! Rate limits of the gateway (ARCHITECTURE §8, seed `RateLimitSettings`): per tier
//! (100 / 1,000 / 5,000 requests per minute) and per endpoint group (create session 10/min,
//! execute agent 5/min), keyed by principal or, for anonymous callers, by client IP. REST
//! calls and gRPC / grpc-web passthrough calls of the same RPC spend the same budget.
//!
//! The limiter itself — GCRA in memory or in Redis, its error bound and its fail-open
//! policy on Redis trouble — is `agentmesh-ratelimit` (re-exported here); every request
//! costs one unit. What stays in the gateway is its policy:
//!
//! - [`RateLimitPolicy`] maps a request (principal, client IP, route group) to the checks
//!   it must pass and enforces them, returning the tightest decision;
//! - [`DecisionHeaders::apply_headers`] reports a decision as `X-RateLimit-*` and
//!   `Retry-After`.
//!
//! # Metrics
//!
//! - `agentmesh_ratelimit_decisions_total{result="allowed"|"limited", scope="tier"|"group"}`
//!   — one per check [`RateLimitPolicy::enforce`] performs;
//! - `agentmesh_ratelimit_backend_errors_total{backend="redis", reason=…}` (the library's).

mod policy;

pub use agentmesh_ratelimit::{
    BACKEND_ERRORS_COUNTER, DEFAULT_PREFIX, DEFAULT_TIMEOUT, Decision, Limit, MAX_WINDOW, MemoryRateLimiter,
    MemoryRateLimiterOptions, RateLimitError, RateLimiter, RedisRateLimiter, RedisRateLimiterOptions,
};
use http::{HeaderMap, HeaderName, HeaderValue};
pub use policy::{CREATE_SESSION_GROUP, EXECUTE_AGENT_GROUP, RateLimitPolicy, Scope, WINDOW};

/// Counter of decisions; labels `result` (`allowed` | `limited`) and `scope` (`tier` | `group`).
pub const DECISIONS_COUNTER: &str = "agentmesh_ratelimit_decisions_total";

/// `X-RateLimit-Limit`: requests allowed per window.
pub const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: requests still allowed right now.
pub const REMAINING_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: whole seconds until the full quota is available again.
pub const RESET_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// How a [`Decision`] is told to HTTP and gRPC callers.
pub trait DecisionHeaders {
    /// Sets `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` and, when
    /// denied, `Retry-After`.
    fn apply_headers(&self, headers: &mut HeaderMap);
}

impl DecisionHeaders for Decision {
    fn apply_headers(&self, headers: &mut HeaderMap) {
        headers.insert(LIMIT_HEADER, HeaderValue::from(self.limit));
        headers.insert(REMAINING_HEADER, HeaderValue::from(self.remaining));
        headers.insert(RESET_HEADER, HeaderValue::from(self.reset_after_secs()));
        if let Some(seconds) = self.retry_after_secs() {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn headers_round_seconds_up() {
        let allowed =
            Decision { remaining: 7, reset_after: Duration::from_millis(1_200), ..Decision::unrestricted(10) };
        let mut headers = HeaderMap::new();
        allowed.apply_headers(&mut headers);
        assert_eq!(headers[&LIMIT_HEADER], "10");
        assert_eq!(headers[&REMAINING_HEADER], "7");
        assert_eq!(headers[&RESET_HEADER], "2");
        assert!(!headers.contains_key(http::header::RETRY_AFTER));

        let denied = Decision {
            allowed: false,
            remaining: 0,
            reset_after: Duration::from_secs(60),
            retry_after: Some(Duration::from_millis(1)),
            ..allowed
        };
        let mut headers = HeaderMap::new();
        denied.apply_headers(&mut headers);
        assert_eq!(headers[&RESET_HEADER], "60");
        assert_eq!(headers[http::header::RETRY_AFTER], "1", "a sub-second wait still says 1");
    }
}
