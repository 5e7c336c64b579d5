//! Channels from one service to another, every one behind the same resilience stack.
//!
//! [`ServiceChannel`] is what generated clients are built on
//! (`SessionServiceClient::new(channel)`). Per call it forwards the current request's
//! correlation id, W3C trace context, remaining deadline (`grpc-timeout`) and signed
//! principal (unchanged, so the callee authorises against the same user), adds this
//! service's actor token when built [`ServiceChannel::acting_as`] a service, buffers the
//! request body so a retry can resend it (the contract has no client-streaming RPCs), and
//! runs the call through `agentmesh_resilience`: breaker → timeout → retry with budget →
//! bulkhead → [`Balanced`], which spreads calls over the peer's replicas. The stack's own
//! refusals (open breaker, timeout, full bulkhead) and transport failures come back as
//! ordinary gRPC statuses with google.rpc details, so a typed client sees
//! `circuit_breaker_open` with its `retry_after` exactly as if a server had said it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentmesh_resilience::{GrpcResponseClassifier, Preset, Resilience, ResilienceError, ResilientService};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use opentelemetry::propagation::Injector;
use tonic::body::Body;
use tonic::transport::Endpoint;
use tower::{Layer, Service, ServiceExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::keys::service_named;
use crate::auth::{ACTOR_HEADER, ActorSigner, PRINCIPAL_HEADER, ServiceIdentity};
use crate::balance::{BalanceError, Balanced, Discovery};
use crate::context::{RequestContext, TRACEPARENT, format_grpc_timeout, new_correlation_id, parse_grpc_timeout};
use crate::error::{ApiError, CORRELATION_ID_HEADER};

/// A peer URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid URL {url:?} for {target}: {reason}")]
pub struct ClientError {
    /// The peer's name.
    pub target: String,
    /// The URL as configured.
    pub url: String,
    /// Why it was refused.
    pub reason: String,
}

/// What callers are told to wait before retrying a peer that could not be reached or
/// had no capacity left.
const UNREACHABLE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A resilient, context-propagating channel to one peer service. Cheap to clone; clones
/// share the peer's breaker, retry budget and bulkhead.
#[derive(Clone)]
pub struct ServiceChannel {
    stack: ResilientService<Balanced, GrpcResponseClassifier>,
    policy: Resilience,
    /// Signs this service's actor token for the peer (reused while fresh).
    actor: Option<Arc<ActorSigner>>,
}

impl ServiceChannel {
    /// A channel to `target` at `url`, connecting lazily on first use (so services can
    /// start in any order), guarded by `preset` and balanced over every address of the
    /// URL's host name through DNS ([`Discovery::default`]).
    pub fn connect_lazy(target: &str, url: &str, preset: &Preset) -> Result<Self, ClientError> {
        Self::connect_with(target, url, preset, &Discovery::default())
    }

    /// Like [`connect_lazy`](Self::connect_lazy), finding replicas as `discovery` says.
    pub fn connect_with(target: &str, url: &str, preset: &Preset, discovery: &Discovery) -> Result<Self, ClientError> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|error| ClientError {
            target: target.to_owned(),
            url: url.to_owned(),
            reason: error.to_string(),
        })?;
        let policy = Resilience::new(target, preset);
        let stack = policy.layer(GrpcResponseClassifier).layer(Balanced::new(target, endpoint.uri(), discovery));
        Ok(Self { stack, policy, actor: None })
    }

    /// Calls go out as `identity`'s service: each carries its actor token for the peer
    /// (when the peer is a service of the mesh, as its target name says).
    #[must_use]
    pub fn acting_as(mut self, identity: &ServiceIdentity) -> Self {
        self.actor = service_named(self.policy.name()).map(|peer| Arc::new(identity.actor_signer(peer)));
        self
    }

    /// The peer's resilience state (breaker snapshot for health output, state-change hooks).
    pub fn policy(&self) -> &Resilience {
        &self.policy
    }
}

impl Service<Request<Body>> for ServiceChannel {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The stack waits for readiness inside each call (retry and bulkhead clone per attempt).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let stack = self.stack.clone();
        let target = self.policy.name().to_owned();
        let actor = self.actor.clone();
        let context = RequestContext::current();
        let span = tracing::Span::current();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let remaining = forward_context(&mut parts.headers, context.as_ref(), &span);
            forward_identity(&mut parts.headers, context.as_ref(), actor.as_deref());
            if remaining == Some(std::time::Duration::ZERO) {
                return Ok(status_response(ApiError::timeout(&target, std::time::Duration::ZERO)));
            }
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    tracing::warn!(%target, %error, "request body could not be buffered");
                    return Ok(status_response(ApiError::internal()));
                }
            };
            let call = stack.oneshot(Request::from_parts(parts, body));
            let result = match remaining {
                Some(remaining) => tokio::time::timeout(remaining, call)
                    .await
                    .unwrap_or(Err(ResilienceError::Timeout { after: remaining })),
                None => call.await,
            };
            Ok(result.unwrap_or_else(|error| status_response(api_error(&target, error))))
        })
    }
}

/// Sets correlation id, trace context and `grpc-timeout` on an outgoing call; returns the
/// deadline left, if the caller has one.
fn forward_context(
    headers: &mut HeaderMap,
    context: Option<&RequestContext>,
    span: &tracing::Span,
) -> Option<std::time::Duration> {
    if !headers.contains_key(CORRELATION_ID_HEADER) {
        let id = context.map_or_else(new_correlation_id, |c| c.correlation_id.clone());
        if let Ok(value) = HeaderValue::from_str(&id) {
            headers.insert(CORRELATION_ID_HEADER, value);
        }
    }
    let trace_context = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&trace_context, &mut HeaderInjector(headers)));
    // Without an exporting span of our own, the caller's trace context goes on unchanged.
    if !headers.contains_key(TRACEPARENT)
        && let Some(trace) = context.and_then(|c| c.trace.as_ref())
    {
        trace.write_to(headers);
    }

    let explicit = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
    let inherited = context.and_then(RequestContext::remaining);
    let remaining = match (explicit, inherited) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(remaining) = remaining
        && let Ok(value) = HeaderValue::from_str(&format_grpc_timeout(remaining))
    {
        headers.insert("grpc-timeout", value);
    }
    remaining
}

/// Forwards the caller's signed principal unchanged (unless the call sets one itself, as
/// the gateway and the orchestrator do when they mint) and adds this service's actor
/// token.
fn forward_identity(headers: &mut HeaderMap, context: Option<&RequestContext>, actor: Option<&ActorSigner>) {
    if !headers.contains_key(PRINCIPAL_HEADER)
        && let Some(token) = context.and_then(|c| c.principal_token.clone())
    {
        headers.insert(PRINCIPAL_HEADER, token);
    }
    if let Some(signer) = actor {
        headers.insert(ACTOR_HEADER, signer.token());
    }
}

/// What a failed call through the stack means to the caller. Transport details stay in
/// the logs.
fn api_error(target: &str, error: ResilienceError<BalanceError>) -> ApiError {
    match error {
        ResilienceError::Inner(transport) => {
            tracing::warn!(%target, error = %transport, "peer unreachable");
            ApiError::external_service(target, "internal_service", true).with_retry_after(UNREACHABLE_RETRY_AFTER)
        }
        ResilienceError::Timeout { after } => ApiError::timeout(target, after),
        ResilienceError::CircuitOpen { name, retry_after } => ApiError::circuit_open(&name, retry_after),
        ResilienceError::BulkheadFull { name } => ApiError::external_service(&name, "internal_service", true)
            .with_detail("reason", "too many concurrent calls")
            .with_retry_after(UNREACHABLE_RETRY_AFTER),
    }
}

/// A trailers-only gRPC response carrying `error`.
fn status_response(error: ApiError) -> Response<Body> {
    let mut status = tonic::Status::from(error);
    if let Some(id) = RequestContext::current_correlation_id()
        && let Ok(value) = id.parse()
    {
        status.metadata_mut().insert(CORRELATION_ID_HEADER, value);
    }
    status.into_http()
}

/// Writes W3C trace context into request headers.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}
