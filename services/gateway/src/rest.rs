//! The REST front: one handler serves every route of the contract.
//!
//! Native gRPC (and grpc-web, translated by the server) to a public RPC is passed through
//! to its owner with the same authentication, scopes and rate limits.
//!
//! Per REST request: correlation id → route → authentication and scopes → rate limits → JSON
//! body, query and path into the RPC's request message → contract validation → the call,
//! carrying the signed principal, correlation id and idempotency key → the seed's JSON
//! (bare arrays with `X-Total-Count` and `Link`, 201/204 where the contract says). Every
//! failure is the seed's `ErrorResponse`, never an internal detail.

use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_runtime::auth::{Authenticate, PRINCIPAL_HEADER, Principal, PrincipalMinter};
use agentmesh_runtime::context::{TraceHeaders, new_correlation_id, sanitize_correlation_id};
use agentmesh_runtime::deadlines::MethodDeadlines;
use agentmesh_runtime::error::{CORRELATION_ID_HEADER, FieldViolation, retry_after_seconds};
use agentmesh_runtime::server::is_native_grpc;
use agentmesh_runtime::validate::validate_dynamic;
use agentmesh_runtime::{ApiError, ErrorCode, RequestContext, ServiceName};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use futures::FutureExt as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use prost_reflect::{DynamicMessage, ReflectMessage};
use serde_json::Value as Json;
use tokio::time::Instant;

use crate::client_addr::ClientAddresses;
use crate::json::{self, Violations};
use crate::ratelimit::{Decision, DecisionHeaders, RateLimitPolicy, RateLimiter};
use crate::routes::{Matched, Miss, Route, RouteTable};
use crate::sse;
use crate::upstream::Upstreams;
use tonic::codec::Streaming;

/// The client header carrying an idempotency key, forwarded as gRPC metadata.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Everything the REST handler needs, shared by all requests.
pub struct RestGateway {
    /// The contract's routes.
    pub routes: RouteTable,
    /// Channels to the owning services.
    pub upstreams: Upstreams,
    /// Establishes the caller from API keys or tokens.
    pub authenticator: Arc<dyn Authenticate>,
    /// Signs the principal forwarded to services (once per caller per lifetime window).
    pub principals: Arc<PrincipalMinter>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Deadline of one call downstream: each method's maximum from the contract (a REST
    /// caller cannot ask for less), the server's request timeout for the rest. For a
    /// stream (SSE, WebSocket subscription) it bounds the whole stream.
    pub deadlines: MethodDeadlines,
    /// `FEATURE_ENABLE_STREAMING`: whether server-streaming RPCs (SSE, WebSocket
    /// subscriptions, gRPC passthrough) are served.
    pub streaming: bool,
    /// Counts requests per caller (in memory, or in Redis shared by replicas).
    pub limiter: Arc<dyn RateLimiter>,
    /// Which limits apply to a request.
    pub rate_limits: RateLimitPolicy,
    /// Where a caller's address comes from (peer or trusted proxy header).
    pub client_addresses: ClientAddresses,
}

/// A request's identity for logs and errors.
struct Call {
    correlation_id: String,
    path: String,
}

impl Call {
    fn error(&self, error: &ApiError) -> Response {
        error_response(error, &self.correlation_id, &self.path)
    }
}

/// The refusal of a stream while `FEATURE_ENABLE_STREAMING` is off.
fn streaming_disabled() -> ApiError {
    ApiError::new(ErrorCode::NotImplemented, "Streaming is disabled on this deployment")
        .with_detail("feature", "streaming")
}

/// The seed's error body for `error`, with `Retry-After` and `X-Correlation-ID`.
pub fn error_response(error: &ApiError, correlation_id: &str, path: &str) -> Response {
    let body = error.to_response(Some(correlation_id), path);
    let mut response = (error.http_status(), axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Some(after) = error.retry_after
        && let Ok(value) = HeaderValue::from_str(&retry_after_seconds(after).to_string())
    {
        headers.insert(header::RETRY_AFTER, value);
    }
    if let Ok(value) = HeaderValue::from_str(correlation_id) {
        headers.insert(CORRELATION_ID_HEADER, value);
    }
    response
}

impl RestGateway {
    /// The caller's address: the TCP peer, or the trusted proxy header's address when one
    /// is configured ([`ClientAddresses`]).
    pub(crate) fn client_ip(&self, request: &axum::extract::Request) -> IpAddr {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(addr)| addr.ip());
        self.client_addresses.resolve(request.headers(), peer)
    }

    /// Serves a request no local gRPC service claimed: native gRPC to a public RPC of
    /// another service is passed through (grpc-web arrives here already translated to it
    /// by the server); anything else is REST.
    pub async fn dispatch(self: Arc<Self>, request: axum::extract::Request) -> Response {
        if is_native_grpc(request.headers()) {
            return self.passthrough(request).await;
        }
        let path = request.uri().path().to_owned();
        // A bug in one handler answers 500 in the seed's format instead of dropping the connection.
        match AssertUnwindSafe(self.handle(request)).catch_unwind().await {
            Ok(response) => response,
            Err(_panic) => {
                tracing::error!(%path, "REST handler panicked");
                error_response(&ApiError::internal(), &new_correlation_id(), &path)
            }
        }
    }

    /// Forwards a native gRPC call to the service owning it, after authenticating the
    /// caller, applying the route's rate limits (the same budget as its REST route) and
    /// replacing any principal header with a signed one. Only public RPCs (those with a
    /// REST route) are reachable this way; internal ones stay internal. The rate-limit
    /// headers (and `retry-after` when refused) are response metadata; a refused call is
    /// RESOURCE_EXHAUSTED.
    async fn passthrough(&self, request: axum::extract::Request) -> Response {
        let rpc = request.uri().path().trim_start_matches('/').replacen('/', ".", 1);
        let Some(route) = self.routes.for_rpc(&rpc) else {
            return grpc_error(ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{rpc} is not served by the gateway"),
            ));
        };
        if route.is_streaming() && !self.streaming {
            return grpc_error(streaming_disabled());
        }
        let ip = self.client_ip(&request);
        let (mut parts, body) = request.into_parts();
        parts.headers.remove(PRINCIPAL_HEADER);
        // The server layer has already authenticated this gRPC call.
        let caller = parts.extensions.get::<RequestContext>().and_then(|context| context.principal.clone());
        let principal = match admit(route, caller) {
            Ok(principal) => principal,
            Err(error) => return grpc_error(error),
        };
        let decision = match self.rate_limit(route, principal.as_ref(), ip).await {
            Ok(decision) => decision,
            Err(error) => return grpc_error(error),
        };
        let mut response = if decision.allowed {
            if let Some(principal) = &principal {
                parts.headers.insert(PRINCIPAL_HEADER, self.principals.mint(principal));
            }
            let forwarded = http::Request::from_parts(parts, tonic::body::Body::new(body));
            match self.upstreams.forward(route.owner, forwarded).await {
                Ok(response) => response.map(Body::new),
                Err(status) => status.into_http::<Body>(),
            }
        } else {
            grpc_error(rate_limited(&decision))
        };
        decision.apply_headers(response.headers_mut());
        response
    }

    /// Serves one REST request.
    pub async fn handle(self: Arc<Self>, request: axum::extract::Request) -> Response {
        let started = Instant::now();
        let correlation_id = request
            .headers()
            .get(CORRELATION_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(sanitize_correlation_id)
            .map_or_else(new_correlation_id, str::to_owned);
        let call = Call { correlation_id, path: request.uri().path().to_owned() };
        let method = request.method().clone();
        let (route_label, response) = match self.routes.find(&method, &call.path) {
            Ok(matched) => {
                let label = matched.route.metric_label.clone();
                // OpenTelemetry names HTTP server spans `METHOD /route`, the route's template.
                let span = tracing::info_span!(
                    "http.request",
                    otel.name = %format_args!("{method} {}", matched.route.template),
                    otel.kind = "server",
                    http.request.method = %method,
                    http.route = %matched.route.template,
                    url.path = %call.path,
                    correlation_id = %call.correlation_id,
                );
                agentmesh_runtime::telemetry::join_caller_trace(
                    &span,
                    request.headers(),
                    ServiceName::Gateway.as_str(),
                );
                (label, tracing::Instrument::instrument(self.serve(&call, matched, request), span).await)
            }
            Err(miss) => (metrics::SharedString::const_str("unmatched"), miss_response(&miss, &method, &call)),
        };
        let mut response = response;
        if let Ok(value) = HeaderValue::from_str(&call.correlation_id) {
            response.headers_mut().insert(CORRELATION_ID_HEADER, value);
        }
        record(&method, route_label, response.status(), started);
        response
    }

    async fn serve(&self, call: &Call, matched: Matched<'_>, request: axum::extract::Request) -> Response {
        let route = matched.route;
        let principal = match self.authenticate(route, request.headers()).await {
            Ok(principal) => principal,
            Err(error) => return call.error(&error),
        };
        let decision = match self.rate_limit(route, principal.as_ref(), self.client_ip(&request)).await {
            Ok(decision) => decision,
            Err(error) => return call.error(&error),
        };
        let mut response = if decision.allowed {
            self.invoke(call, &matched, principal, request).await
        } else {
            call.error(&rate_limited(&decision))
        };
        decision.apply_headers(response.headers_mut());
        response
    }

    /// Counts one call of `route` by its caller against the route's limits. REST and gRPC
    /// calls of an RPC share keys, so they spend one budget.
    async fn rate_limit(
        &self,
        route: &Route,
        principal: Option<&Principal>,
        client_ip: IpAddr,
    ) -> Result<Decision, ApiError> {
        let group = route.rate_limit_group.as_deref();
        self.rate_limits.enforce(self.limiter.as_ref(), principal, client_ip, group).await.map_err(|error| {
            tracing::error!(%error, "rate limit check failed");
            ApiError::internal()
        })
    }

    async fn invoke(
        &self,
        call: &Call,
        matched: &Matched<'_>,
        principal: Option<Principal>,
        request: axum::extract::Request,
    ) -> Response {
        let route = matched.route;
        let (parts, body) = request.into_parts();
        let headers = &parts.headers;
        let body = if route.body.is_empty() {
            None
        } else {
            match self.read_json(headers, body).await {
                Ok(json) => Some(json),
                Err(error) => return call.error(&error),
            }
        };
        let last_event_id = headers.get(sse::LAST_EVENT_ID).and_then(|v| v.to_str().ok());
        let message = match request_message(route, &matched.variables, parts.uri.query(), body, last_event_id) {
            Ok(message) => message,
            Err(error) => return call.error(&error),
        };
        let idempotency_key = match headers.get(IDEMPOTENCY_KEY).map(|k| k.to_str()) {
            None => None,
            Some(Ok(key)) => Some(key.to_owned()),
            Some(Err(_)) => {
                let violation = FieldViolation {
                    field: "Idempotency-Key".into(),
                    message: "must be visible ASCII characters".into(),
                    value: Json::Null,
                };
                return call.error(&ApiError::validation(vec![violation]));
            }
        };
        let invocation = Invocation {
            route,
            message,
            principal,
            idempotency_key,
            correlation_id: call.correlation_id.clone(),
            trace: TraceHeaders::from_headers(headers),
        };
        if route.is_streaming() {
            return match self.open_stream(invocation).await {
                Ok(stream) => {
                    sse::response(stream, route.response_body.clone(), call.correlation_id.clone(), call.path.clone())
                }
                Err(error) => call.error(&error),
            };
        }
        let (context, request) = self.grpc_request(invocation);
        match context.scope(self.upstreams.unary(route, request)).await {
            Ok(response) => success(route, &response.into_inner(), call),
            Err(status) => call.error(&ApiError::from_status(&status)),
        }
    }

    /// Opens a server-streaming call (SSE and WebSocket subscriptions).
    pub async fn open_stream(&self, invocation: Invocation<'_>) -> Result<Streaming<DynamicMessage>, ApiError> {
        if !self.streaming {
            return Err(streaming_disabled());
        }
        let (route, (context, request)) = (invocation.route, self.grpc_request(invocation));
        let opened = context.scope(self.upstreams.server_streaming(route, request)).await;
        opened.map(tonic::Response::into_inner).map_err(|status| ApiError::from_status(&status))
    }

    /// The gRPC request for an invocation, with the metadata services rely on, and the
    /// request context the call runs in.
    fn grpc_request(&self, invocation: Invocation<'_>) -> (RequestContext, tonic::Request<DynamicMessage>) {
        let limit = self.deadlines.max_for(invocation.route.grpc_path.path());
        let context = RequestContext {
            correlation_id: invocation.correlation_id,
            deadline: Some(Instant::now() + limit),
            principal_token: invocation.principal.as_ref().map(|principal| self.principals.mint(principal)),
            principal: invocation.principal,
            actor: None,
            run: None,
            trace: invocation.trace,
        };
        let mut request = tonic::Request::new(invocation.message);
        request.set_timeout(limit);
        request.extensions_mut().insert(context.clone());
        let metadata = request.metadata_mut();
        if let Some(value) = context.principal_token.as_ref().and_then(|token| token.to_str().ok()?.parse().ok()) {
            metadata.insert(PRINCIPAL_HEADER, value);
        }
        if let Some(key) = invocation.idempotency_key.and_then(|k| k.parse().ok()) {
            metadata.insert(IDEMPOTENCY_KEY, key);
        }
        if let Ok(value) = context.correlation_id.parse() {
            metadata.insert(CORRELATION_ID_HEADER, value);
        }
        (context, request)
    }

    /// The caller of a REST request, admitted to `route`.
    async fn authenticate(&self, route: &Route, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
        let principal = self.authenticator.authenticate(headers).await?;
        admit(route, principal)
    }

    pub(crate) async fn read_json(&self, headers: &HeaderMap, body: Body) -> Result<Json, ApiError> {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let is_json = content_type.is_empty()
            || content_type
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("Content-Type must be application/json, not {content_type}"),
            ));
        }
        let bytes = axum::body::to_bytes(body, self.max_body_bytes).await.map_err(|_| {
            ApiError::new(ErrorCode::PayloadTooLarge, format!("Request body exceeds {} bytes", self.max_body_bytes))
        })?;
        if bytes.is_empty() {
            return Err(ApiError::validation(vec![FieldViolation {
                field: "body".into(),
                message: "a JSON body is required".into(),
                value: Json::Null,
            }]));
        }
        serde_json::from_slice(&bytes).map_err(|error| {
            ApiError::validation(vec![FieldViolation {
                field: "body".into(),
                message: format!("is not valid JSON: {error}"),
                value: Json::Null,
            }])
        })
    }
}

/// Lets `principal` use `route`: anonymous callers only where the contract allows them,
/// authenticated ones only with every scope the route requires.
pub(crate) fn admit(route: &Route, principal: Option<Principal>) -> Result<Option<Principal>, ApiError> {
    match principal {
        None if !route.allow_anonymous => {
            Err(ApiError::new(ErrorCode::Authentication, "Authentication required: send an API key or token"))
        }
        Some(principal) => {
            let missing: Vec<&str> =
                route.required_scopes.iter().filter(|s| !principal.has_scope(s)).map(String::as_str).collect();
            if missing.is_empty() {
                Ok(Some(principal))
            } else {
                Err(ApiError::new(ErrorCode::Authorization, format!("Missing scope: {}", missing.join(", "))))
            }
        }
        None => Ok(None),
    }
}

/// The RPC request from body, query, path and `Last-Event-ID`, strictly typed and
/// validated against the contract.
pub fn request_message(
    route: &Route,
    variables: &[(String, String)],
    query: Option<&str>,
    body: Option<Json>,
    last_event_id: Option<&str>,
) -> Result<DynamicMessage, ApiError> {
    let descriptor = route.rpc.input();
    let mut message = DynamicMessage::new(descriptor.clone());
    let mut out = Violations::default();
    let mut bound: Vec<String> = variables.iter().map(|(field, _)| field.clone()).collect();
    if let Some(json) = body {
        if route.body == "*" {
            json::merge_object(&mut message, &json, "", &mut out);
            bound.extend(descriptor.fields().map(|f| f.name().to_owned()));
        } else if let Some(field) = descriptor.get_field_by_name(&route.body) {
            if let Some(value) = json::field_from_json(&field, &json, "body", &mut out, 0) {
                message.set_field(&field, value);
            }
            bound.push(route.body.clone());
        }
    }
    for (name, raw) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        // Unknown query parameters are ignored (caches and browsers add their own);
        // fields bound by the path or body cannot be overridden from the query.
        let Some(field) = descriptor.get_field_by_name(&name) else { continue };
        if bound.iter().any(|b| b == field.name()) || matches!(field.kind(), prost_reflect::Kind::Message(_)) {
            continue;
        }
        json::set_from_text(&mut message, &field, &raw, &mut out);
    }
    for (name, raw) in variables {
        if let Some(field) = descriptor.get_field_by_name(name) {
            json::set_from_text(&mut message, &field, raw, &mut out);
        }
    }
    if let Some(resume) = last_event_id.and_then(sse::resume_from)
        && let Some(field) = descriptor.get_field_by_name(sse::RESUME_FIELD)
        && !message.has_field(&field)
    {
        message.set_field(&field, resume);
    }
    // Contract rules on what did convert, so one response names every bad field.
    if let Err(rules) = validate_dynamic(&message) {
        let reported: Vec<String> = out.0.iter().map(|v| v.field.clone()).collect();
        out.0.extend(rules.field_violations.into_iter().filter(|v| !reported.contains(&v.field)));
    }
    if out.0.is_empty() {
        return Ok(message);
    }
    // Report in the request message's field order, whatever found each problem.
    let position = |path: &str| {
        let name = path.split(['.', '[']).next().unwrap_or(path);
        descriptor.fields().position(|f| f.name() == name).unwrap_or(usize::MAX)
    };
    out.0.sort_by_key(|violation| position(&violation.field));
    Err(ApiError::validation(out.0))
}

/// One call of an RPC on behalf of a caller.
pub struct Invocation<'a> {
    /// The route (and RPC) called.
    pub route: &'a Route,
    /// The request message.
    pub message: DynamicMessage,
    /// The authenticated caller.
    pub principal: Option<Principal>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// The request's correlation id.
    pub correlation_id: String,
    /// The client's W3C trace context, if it sent one.
    pub trace: Option<TraceHeaders>,
}

/// The error refusing a call over its rate limit, with when to retry.
fn rate_limited(decision: &Decision) -> ApiError {
    ApiError::new(ErrorCode::RateLimit, "Rate limit exceeded")
        .with_detail("limit", decision.limit)
        .with_retry_after(decision.retry_after.unwrap_or(Duration::from_secs(1)))
}

/// A trailers-only gRPC error response.
fn grpc_error(error: ApiError) -> Response {
    tonic::Status::from(error).into_http::<Body>()
}

/// The seed's response for a successful call.
fn success(route: &Route, message: &DynamicMessage, call: &Call) -> Response {
    if route.success_status == StatusCode::NO_CONTENT {
        return StatusCode::NO_CONTENT.into_response();
    }
    let descriptor = message.descriptor();
    let body = match descriptor.get_field_by_name(&route.response_body) {
        Some(field) if !route.response_body.is_empty() => {
            let value = message.get_field(&field);
            let json = json::field_to_json(&field, &value);
            if json.is_null() { Json::Object(serde_json::Map::new()) } else { json }
        }
        _ => json::message_to_json(message),
    };
    let mut response = (route.success_status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Some(total) = descriptor.get_field_by_name("total_count").and_then(|f| message.get_field(&f).as_i64())
        && let Ok(value) = HeaderValue::from_str(&total.to_string())
    {
        headers.insert("x-total-count", value);
    }
    if let Some(token) = descriptor
        .get_field_by_name("next_page_token")
        .and_then(|f| message.get_field(&f).as_str().map(str::to_owned))
        .filter(|t| !t.is_empty())
        && let Ok(value) = HeaderValue::from_str(&format!("<{}>; rel=\"next\"", next_link(&call.path, &token)))
    {
        headers.insert(header::LINK, value);
    }
    response
}

/// The URL of the next page: same path, the token, no offset.
fn next_link(path: &str, token: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("page_token", token);
    format!("{path}?{}", query.finish())
}

/// 404 for an unknown path; 405 with `Allow` for a known path and another method.
fn miss_response(miss: &Miss, method: &Method, call: &Call) -> Response {
    match miss {
        Miss::NotFound => call.error(&ApiError::new(ErrorCode::NotFound, format!("No route for {}", call.path))),
        Miss::MethodNotAllowed(allowed) => {
            let allowed = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            let error = ApiError::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed on {}", call.path))
                .with_detail("allowed_methods", allowed.clone());
            let mut response = call.error(&error);
            if let Ok(value) = HeaderValue::from_str(&allowed) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            response
        }
    }
}

fn record(method: &Method, route: metrics::SharedString, status: StatusCode, started: Instant) {
    let method = metrics::SharedString::const_str(method_label(method));
    metrics::counter!(
        "agentmesh_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status.as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("agentmesh_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
}

/// The method as a static label (the router only matches these; anything else is `OTHER`).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
