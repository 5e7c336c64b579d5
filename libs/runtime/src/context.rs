//! What one request carries through a service and on to the next: correlation id,
//! deadline, the caller's principal (and the signed header it came in), the calling
//! service and trace context.
//!
//! The server layer installs a [`RequestContext`] as a task-local for the handler's
//! future; client channels read it to forward `x-correlation-id`, `traceparent`, the
//! remaining `grpc-timeout` and the principal header, so one id, one deadline and one
//! user follow a request across the mesh.
//! Work spawned onto other tasks must carry the context explicitly ([`RequestContext::scope`]).

use std::future::Future;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::auth::Principal;
use crate::config::ServiceName;

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// The request-scoped values every hop forwards.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Ties together every log line, span and error of one client request.
    pub correlation_id: String,
    /// When the caller stops waiting (from `grpc-timeout`); downstream calls get what is left.
    pub deadline: Option<Instant>,
    /// Who is calling, once authenticated.
    pub principal: Option<Principal>,
    /// The signed `x-agentmesh-principal` the principal came in, forwarded unchanged on
    /// the calls this request makes (a service other than a minter cannot sign one).
    pub principal_token: Option<HeaderValue>,
    /// The service that made this call, for calls inside the mesh.
    pub actor: Option<ServiceName>,
    /// The run the principal is bound to, when the orchestrator minted it for one.
    pub run: Option<String>,
    /// The caller's W3C trace context, as received.
    pub trace: Option<TraceHeaders>,
}

/// Name of the W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// Name of the W3C vendor trace state header.
pub const TRACESTATE: &str = "tracestate";

/// A caller's `traceparent` (and `tracestate`) headers. A process that exports no traces
/// runs no OpenTelemetry layer (it would cost a sixth of a gateway request's CPU for spans
/// nobody receives) and forwards these unchanged instead, so a trace crosses it intact.
#[derive(Debug, Clone)]
pub struct TraceHeaders {
    traceparent: HeaderValue,
    tracestate: Option<HeaderValue>,
}

impl TraceHeaders {
    /// The trace context in `headers`, if they carry a `traceparent`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let traceparent = headers.get(TRACEPARENT)?.clone();
        Some(Self { traceparent, tracestate: headers.get(TRACESTATE).cloned() })
    }

    /// Writes the headers onto an outgoing request.
    pub fn write_to(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            headers.insert(TRACESTATE, state.clone());
        }
    }
}

impl RequestContext {
    /// A context with a fresh correlation id and no deadline or principal.
    pub fn new() -> Self {
        Self {
            correlation_id: new_correlation_id(),
            deadline: None,
            principal: None,
            principal_token: None,
            actor: None,
            run: None,
            trace: None,
        }
    }

    /// The context of the running request, if this task serves one.
    pub fn current() -> Option<RequestContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The current request's correlation id, if any.
    pub fn current_correlation_id() -> Option<String> {
        CURRENT.try_with(|c| c.correlation_id.clone()).ok()
    }

    /// Time left before the deadline (zero once passed); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Runs `future` with this context as the current one.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }
}

impl Default for RequestContext {
    fn default() -> Self {
        Self::new()
    }
}

/// A new correlation id (a UUID v7: unique and roughly time-ordered, which helps log search).
pub fn new_correlation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Accepts a client-supplied correlation id only if it is short and printable, so it can
/// be echoed in headers and logs without injection.
pub fn sanitize_correlation_id(raw: &str) -> Option<&str> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then_some(raw)
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, units H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value (at most 8 digits, as the spec requires).
pub fn format_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    if nanos <= MAX {
        return format!("{nanos}n");
    }
    let micros = timeout.as_micros();
    if micros <= MAX {
        return format!("{micros}u");
    }
    let millis = timeout.as_millis();
    if millis <= MAX {
        return format!("{millis}m");
    }
    format!("{}S", timeout.as_secs().min(99_999_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_round_trip() {
        for d in
            [Duration::from_nanos(5), Duration::from_millis(250), Duration::from_secs(30), Duration::from_secs(7200)]
        {
            let text = format_grpc_timeout(d);
            assert!(text.len() <= 9, "{text}");
            assert_eq!(parse_grpc_timeout(&text), Some(d));
        }
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn correlation_ids_from_clients_are_sanitized() {
        assert_eq!(sanitize_correlation_id("req-42_a.b:c"), Some("req-42_a.b:c"));
        assert_eq!(sanitize_correlation_id("bad\nheader"), None);
        assert_eq!(sanitize_correlation_id(&"x".repeat(129)), None);
        assert_eq!(sanitize_correlation_id(""), None);
    }

    #[tokio::test]
    async fn the_current_context_is_visible_only_inside_its_scope() {
        assert!(RequestContext::current().is_none());
        let context = RequestContext { correlation_id: "abc".into(), ..RequestContext::new() };
        let seen = context.scope(async { RequestContext::current_correlation_id() }).await;
        assert_eq!(seen.as_deref(), Some("abc"));
    }
}
