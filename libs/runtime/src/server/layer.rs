//! The tower layer in front of every gRPC handler.
//!
//! Per call it: adopts or mints the correlation id, joins the caller's trace
//! (`traceparent`) under a span named `package.Service/Method`, turns `grpc-timeout` into
//! a deadline (at most the method's maximum from the contract, see [`MethodDeadlines`];
//! for a stream it bounds the whole body), authenticates (user and calling service; the
//! span's `actor` field names the latter), runs the handler
//! inside a span and a [`RequestContext`], and records the RED metrics
//! (`agentmesh_grpc_server_requests_total`, `..._request_duration_seconds`,
//! `..._in_flight`) with the final gRPC code — read from the response headers for
//! trailers-only errors and from the trailers otherwise, since streaming calls only know
//! their outcome at the end.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::{Authenticate, Caller, is_open_path};
use crate::context::{RequestContext, TraceHeaders, new_correlation_id, parse_grpc_timeout, sanitize_correlation_id};
use crate::deadlines::MethodDeadlines;
use crate::error::{ApiError, CORRELATION_ID_HEADER};
use crate::telemetry::join_caller_trace;

/// Adds [`ServerCall`] around a service.
#[derive(Clone)]
pub(crate) struct ServerCallLayer {
    pub(crate) service_name: &'static str,
    pub(crate) authenticator: Option<Arc<dyn Authenticate>>,
    /// Each method's longest deadline, which also applies when the caller sent none.
    pub(crate) deadlines: Arc<MethodDeadlines>,
}

impl<S> Layer<S> for ServerCallLayer {
    type Service = ServerCall<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerCall {
            inner,
            service_name: self.service_name,
            authenticator: self.authenticator.clone(),
            deadlines: self.deadlines.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct ServerCall<S> {
    inner: S,
    service_name: &'static str,
    authenticator: Option<Arc<dyn Authenticate>>,
    deadlines: Arc<MethodDeadlines>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ServerCall<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Default + Send + 'static,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The ready service goes with this call; the clone waits for the next one.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);

        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc {
            return Box::pin(async move { Ok(inner.call(request).await?.map(MeteredBody::plain)) });
        }

        let path = request.uri().path().to_owned();
        let (rpc_service, method) = split_path(&path);
        let headers = request.headers();
        let correlation_id = headers
            .get(CORRELATION_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(sanitize_correlation_id)
            .map_or_else(new_correlation_id, str::to_owned);
        let requested = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let timeout = self.deadlines.limit(&path, requested);
        let expires = Instant::now() + timeout;
        let deadline = Some(expires);

        // OpenTelemetry names gRPC spans `package.Service/Method`: the path without its slash.
        let span = tracing::info_span!(
            "grpc.request",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %method,
            correlation_id = %correlation_id,
            actor = tracing::field::Empty,
        );
        let trace = TraceHeaders::from_headers(headers);
        join_caller_trace(&span, headers, self.service_name);

        let authenticator = if is_open_path(&path) { None } else { self.authenticator.clone() };
        let service_name = self.service_name;
        let call_span = span.clone();
        Box::pin(
            async move {
                let caller = match &authenticator {
                    None => Caller::default(),
                    Some(auth) => match auth.authenticate_call(&path, request.headers()).await {
                        Ok(caller) => caller,
                        Err(error) => {
                            tracing::info!(code = %error.code, reason = %error.message, "call refused by authentication");
                            let started = Instant::now();
                            let response = error_response(error, &correlation_id);
                            record(service_name, &rpc_service, &method, grpc_code_of(response.headers()), started);
                            return Ok(response.map(|()| MeteredBody::plain(ResBody::default())));
                        }
                    },
                };
                if let Some(actor) = caller.actor {
                    tracing::Span::current().record("actor", actor.as_str());
                }
                let context = RequestContext {
                    correlation_id: correlation_id.clone(),
                    deadline,
                    principal: caller.principal,
                    principal_token: caller.principal_token,
                    actor: caller.actor,
                    run: caller.run,
                    trace,
                };
                request.extensions_mut().insert(context.clone());
                let call = Call { service_name, rpc_service, method, started: Instant::now(), span: call_span };
                metrics::gauge!("agentmesh_grpc_server_in_flight", "service" => service_name).increment(1.0);
                context
                    .scope(async move {
                        // A panicking handler answers INTERNAL instead of dropping the connection.
                        let handled = AssertUnwindSafe(inner.call(request)).catch_unwind();
                        let error = match tokio::time::timeout(timeout, handled).await {
                            Ok(Ok(result)) => Ok(result?),
                            Ok(Err(_panic)) => {
                                tracing::error!("handler panicked");
                                Err(ApiError::internal())
                            }
                            Err(_) => Err(ApiError::timeout("request", timeout)),
                        };
                        let mut response = match error {
                            Ok(response) => response,
                            Err(error) => {
                                let response = error_response(error, &correlation_id);
                                let code = grpc_code_of(response.headers());
                                let body = MeteredBody::metered(ResBody::default(), call, code, None);
                                return Ok(response.map(|()| body));
                            }
                        };
                        if let Ok(value) = HeaderValue::from_str(&correlation_id) {
                            response.headers_mut().insert(CORRELATION_ID_HEADER, value);
                        }
                        let header_code = grpc_code_of(response.headers());
                        // A trailers-only answer is complete; any other body (a stream) must
                        // end by the deadline too.
                        let cut = header_code.is_none().then_some((expires, timeout));
                        Ok(response.map(|body| MeteredBody::metered(body, call, header_code, cut)))
                    })
                    .await
            }
            .instrument(span),
        )
    }
}

/// A trailers-only gRPC error response for a call refused before its handler ran.
fn error_response(error: ApiError, correlation_id: &str) -> Response<()> {
    let mut status = tonic::Status::from(error);
    if let Ok(value) = correlation_id.parse() {
        status.metadata_mut().insert(CORRELATION_ID_HEADER, value);
    }
    status.into_http::<()>()
}

fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => (trimmed.to_owned(), String::new()),
    }
}

fn grpc_code_of(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Labels and start time of one call, recorded when its response body ends.
struct Call {
    service_name: &'static str,
    rpc_service: String,
    method: String,
    started: Instant,
    /// The call's span, so the completion log line carries its correlation id.
    span: tracing::Span,
}

fn record(service_name: &'static str, rpc_service: &str, method: &str, code: Option<i32>, started: Instant) {
    let code = format!("{:?}", tonic::Code::from(code.unwrap_or(0)));
    let (rpc_service, method) = (rpc_service.to_owned(), method.to_owned());
    metrics::counter!(
        "agentmesh_grpc_server_requests_total",
        "service" => service_name, "rpc_service" => rpc_service.clone(), "rpc_method" => method.clone(), "code" => code
    )
    .increment(1);
    metrics::histogram!(
        "agentmesh_grpc_server_request_duration_seconds",
        "service" => service_name, "rpc_service" => rpc_service, "rpc_method" => method
    )
    .record(started.elapsed().as_secs_f64());
}

pin_project_lite::pin_project! {
    /// A response body that records the call's metrics when it ends or is dropped, and
    /// ends a stream still running at the call's deadline with DEADLINE_EXCEEDED (`cut`
    /// is set once those trailers are sent: the body is over).
    pub(crate) struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
        code: Option<i32>,
        deadline: Option<Deadline>,
        cut: bool,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(call) = this.call.take() {
                // Dropped before its trailers: the client went away mid-stream.
                let code = this.code.or(Some(tonic::Code::Cancelled as i32));
                finish(call, code);
            }
        }
    }
}

/// When a response body must end, and the limit to name in its error.
struct Deadline {
    expires: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl<B> MeteredBody<B> {
    fn plain(inner: B) -> Self {
        Self { inner, call: None, code: None, deadline: None, cut: false }
    }

    fn metered(inner: B, call: Call, header_code: Option<i32>, deadline: Option<(Instant, Duration)>) -> Self {
        let deadline =
            deadline.map(|(expires, limit)| Deadline { expires: Box::pin(tokio::time::sleep_until(expires)), limit });
        Self { inner, call: Some(call), code: header_code, deadline, cut: false }
    }
}

/// The trailers ending a call whose deadline passed mid-body.
fn deadline_trailers(limit: Duration) -> HeaderMap {
    // A trailers-only response carries exactly the status fields trailers need.
    let (parts, ()) = tonic::Status::from(ApiError::timeout("request", limit)).into_http::<()>().into_parts();
    let mut trailers = parts.headers;
    trailers.remove(http::header::CONTENT_TYPE);
    trailers
}

fn finish(call: Call, code: Option<i32>) {
    metrics::gauge!("agentmesh_grpc_server_in_flight", "service" => call.service_name).decrement(1.0);
    let _entered = call.span.enter();
    tracing::debug!(code = ?tonic::Code::from(code.unwrap_or(0)), elapsed = ?call.started.elapsed(), "call finished");
    record(call.service_name, &call.rpc_service, &call.method, code, call.started);
}

impl<B: Body<Data = Bytes>> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.cut {
            if let Some(call) = this.call.take() {
                finish(call, *this.code);
            }
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline
            && deadline.expires.as_mut().poll(cx).is_ready()
        {
            *this.cut = true;
            *this.code = Some(tonic::Code::DeadlineExceeded as i32);
            tracing::info!(limit = ?deadline.limit, "deadline passed mid-stream: DEADLINE_EXCEEDED");
            return Poll::Ready(Some(Ok(Frame::trailers(deadline_trailers(deadline.limit)))));
        }
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = grpc_code_of(trailers)
                {
                    *this.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => *this.code = Some(tonic::Code::Internal as i32),
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    finish(call, *this.code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
