//! A server started with `GrpcServer` and a client on `ServiceChannel`, over loopback:
//! correlation id, deadline and trace context travel with each call; retries, the breaker
//! and transport failures reach the caller as the mesh's typed errors; the authentication
//! hook guards every RPC but health; by default a server requires the mesh's principal
//! and actor tokens, which a channel acting as a service forwards and adds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_proto::agentmesh::session::v1::session_service_server::{SessionService, SessionServiceServer};
use agentmesh_proto::agentmesh::session::v1::{GetSessionRequest, GetSessionResponse, Session};
use agentmesh_resilience::{BreakerConfig, Preset, RetryPolicy};
use agentmesh_runtime::auth::{Authenticate, Principal, ServiceIdentity, Tier};
use agentmesh_runtime::client::ServiceChannel;
use agentmesh_runtime::context::TraceHeaders;
use agentmesh_runtime::{ApiError, Config, ErrorCode, GrpcServer, RequestContext, ServiceName, telemetry};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;

/// Echoes what the server saw of the call, and fails on demand.
#[derive(Default)]
struct Echo {
    /// Calls that reached the handler.
    calls: AtomicUsize,
}

#[tonic::async_trait]
impl SessionService for Echo {
    async fn get_session(&self, request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let id = request.get_ref().session_id.clone();
        // "fail-N": the first N calls are Unavailable; "down": always Unavailable.
        let failures = match id.strip_prefix("fail-") {
            Some(n) => n.parse().unwrap(),
            None if id == "down" => usize::MAX,
            None => 0,
        };
        if call < failures {
            return Err(Status::unavailable("try again"));
        }
        let context = RequestContext::current().expect("handlers run inside a request context");
        let traceparent = request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let remaining_ms = context.remaining().map_or(-1, |d| i64::try_from(d.as_millis()).unwrap());
        Ok(Response::new(GetSessionResponse {
            session: Some(Session {
                id,
                title: Some(context.correlation_id),
                user_id: context.principal.map(|p| p.user_id),
                message_count: remaining_ms,
                metadata: Some(prost_types::Struct {
                    fields: [
                        (
                            "traceparent".to_owned(),
                            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(traceparent)) },
                        ),
                        (
                            "actor".to_owned(),
                            prost_types::Value {
                                kind: Some(prost_types::value::Kind::StringValue(
                                    context.actor.map(|a| a.as_str().to_owned()).unwrap_or_default(),
                                )),
                            },
                        ),
                    ]
                    .into(),
                }),
                ..Session::default()
            }),
        }))
    }
}

/// Accepts callers that name themselves in `x-test-user`; refuses the rest.
struct HeaderUser;

#[tonic::async_trait]
impl Authenticate for HeaderUser {
    async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Option<Principal>, ApiError> {
        let user = headers.get("x-test-user").and_then(|v| v.to_str().ok());
        let user = user.ok_or_else(|| ApiError::new(ErrorCode::Authentication, "Authentication failed"))?;
        Ok(Some(Principal {
            user_id: user.to_owned(),
            tenant_id: "t1".to_owned(),
            tier: Tier::Authenticated,
            scopes: vec![],
        }))
    }
}

struct Running {
    url: String,
    echo: Arc<Echo>,
    _stop: oneshot::Sender<()>,
}

/// How the test server authenticates.
enum Auth {
    /// Not at all.
    Off,
    /// With this authenticator.
    With(Arc<dyn Authenticate>),
    /// As `GrpcServer` does by default: the mesh's principal and actor tokens.
    Mesh,
}

async fn start(authenticator: Option<Arc<dyn Authenticate>>) -> Running {
    start_with(authenticator.map_or(Auth::Off, Auth::With)).await
}

async fn start_with(auth: Auth) -> Running {
    let config = Config::load(None, []).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let echo = Arc::new(Echo::default());
    let mut server =
        GrpcServer::new(ServiceName::SessionStore, &config).add_service(SessionServiceServer::from_arc(echo.clone()));
    server = match auth {
        Auth::Off => server.without_authentication(),
        Auth::With(authenticator) => server.with_authenticator(authenticator),
        Auth::Mesh => server,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    Running { url, echo, _stop: stop }
}

/// Fast retries and a breaker that opens after two failed calls.
fn preset() -> Preset {
    Preset {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            multiplier: 2.0,
            jitter: false,
        },
        breaker: BreakerConfig {
            failure_threshold: 2,
            recovery_timeout: Duration::from_secs(60),
            ..Preset::internal().breaker
        },
        ..Preset::internal()
    }
}

fn client(url: &str) -> SessionServiceClient<ServiceChannel> {
    SessionServiceClient::new(ServiceChannel::connect_lazy("session-store", url, &preset()).unwrap())
}

fn get(id: &str) -> GetSessionRequest {
    GetSessionRequest { session_id: id.to_owned() }
}

#[tokio::test]
async fn correlation_id_deadline_and_trace_context_follow_the_call() {
    // Traces are exported (to a port where nothing listens): the OpenTelemetry layer runs.
    let settings = [("OBSERVABILITY_LOG_FORMAT", "text"), ("OBSERVABILITY_OTLP_ENDPOINT", "http://127.0.0.1:9")];
    let config = Config::load(None, settings.map(|(k, v)| (k.to_owned(), v.to_owned()))).unwrap();
    let telemetry = telemetry::init("mesh-test", &config.observability).unwrap();
    let server = start(None).await;
    let mut client = client(&server.url);

    let context = RequestContext {
        correlation_id: "corr-123".to_owned(),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(5)),
        ..RequestContext::new()
    };
    let span = tracing::info_span!("caller");
    let trace_id = {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.context().span().span_context().trace_id().to_string()
    };
    let response = context.scope(client.get_session(get("s1"))).instrument(span).await.unwrap();
    assert_eq!(response.metadata().get("x-correlation-id").unwrap(), "corr-123");
    let session = response.into_inner().session.unwrap();
    assert_eq!(session.title.as_deref(), Some("corr-123"), "the server runs under the caller's correlation id");
    assert!(
        (1..=5000).contains(&session.message_count),
        "remaining deadline seen by the server: {}ms",
        session.message_count
    );
    let traceparent = match &session.metadata.unwrap().fields["traceparent"].kind {
        Some(prost_types::value::Kind::StringValue(value)) => value.clone(),
        other => panic!("{other:?}"),
    };
    assert!(traceparent.contains(&trace_id), "traceparent {traceparent:?} continues trace {trace_id}");
    // Flushing at shutdown would wait on the unreachable collector.
    std::mem::forget(telemetry);
}

#[tokio::test]
async fn a_hop_exporting_no_traces_forwards_the_callers_trace_context_unchanged() {
    let server = start(None).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut incoming = http::HeaderMap::new();
    incoming.insert("traceparent", http::HeaderValue::from_static(traceparent));
    incoming.insert("tracestate", http::HeaderValue::from_static("vendor=opaque"));
    let context = RequestContext { trace: TraceHeaders::from_headers(&incoming), ..RequestContext::new() };
    let response = context.scope(client(&server.url).get_session(get("s1"))).await.unwrap();
    let seen = match &response.into_inner().session.unwrap().metadata.unwrap().fields["traceparent"].kind {
        Some(prost_types::value::Kind::StringValue(value)) => value.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(seen, traceparent);
}

#[tokio::test]
async fn a_call_without_context_gets_a_fresh_correlation_id_and_the_server_deadline() {
    let server = start(None).await;
    let session = client(&server.url).get_session(get("s1")).await.unwrap().into_inner().session.unwrap();
    let id = session.title.unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let remaining_ms = session.message_count;
    assert!((1..=60_000).contains(&remaining_ms), "SERVER_REQUEST_TIMEOUT bounds the call: {remaining_ms}ms");
}

#[tokio::test]
async fn transient_unavailability_is_retried_within_the_attempt_limit() {
    let server = start(None).await;
    let response = client(&server.url).get_session(get("fail-2")).await;
    assert!(response.is_ok(), "{response:?}");
    assert_eq!(server.echo.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn after_repeated_failures_the_breaker_answers_for_the_peer() {
    let server = start(None).await;
    let mut client = client(&server.url);
    for _ in 0..2 {
        let status = client.get_session(get("down")).await.unwrap_err();
        assert_eq!(ApiError::from_status(&status).code, ErrorCode::ExternalService, "{status:?}");
    }
    let reached = server.echo.calls.load(Ordering::SeqCst);
    assert_eq!(reached, 6, "two calls of three attempts each");

    let status = client.get_session(get("s1")).await.unwrap_err();
    let error = ApiError::from_status(&status);
    assert_eq!(error.code, ErrorCode::CircuitBreakerOpen, "{status:?}");
    assert!(error.retry_after.is_some_and(|after| after > Duration::from_secs(50)));
    assert_eq!(error.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.echo.calls.load(Ordering::SeqCst), reached, "an open breaker does not call the peer");
}

#[tokio::test]
async fn an_unreachable_peer_is_a_retryable_external_service_error() {
    let port = agentmesh_testkit::ports::reserve().unwrap();
    let status = client(&format!("http://127.0.0.1:{port}")).get_session(get("s1")).await.unwrap_err();
    let error = ApiError::from_status(&status);
    assert_eq!(error.code, ErrorCode::ExternalService, "{status:?}");
    assert_eq!(error.details["service_name"], "session-store");
    assert_eq!(error.details["is_retryable"], true);
    assert_eq!(error.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_spent_deadline_fails_fast_without_calling_the_peer() {
    let server = start(None).await;
    let context = RequestContext { deadline: Some(tokio::time::Instant::now()), ..RequestContext::new() };
    let status = context.scope(client(&server.url).get_session(get("s1"))).await.unwrap_err();
    assert_eq!(ApiError::from_status(&status).code, ErrorCode::Timeout);
    assert_eq!(server.echo.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_authenticator_guards_rpcs_but_not_health() {
    let server = start(Some(Arc::new(HeaderUser))).await;
    let mut client = client(&server.url);

    let status = client.get_session(get("s1")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(ApiError::from_status(&status).code, ErrorCode::Authentication);
    assert_eq!(server.echo.calls.load(Ordering::SeqCst), 0, "refused before the handler");

    let mut request = Request::new(get("s1"));
    request.metadata_mut().insert("x-test-user", "alice".parse().unwrap());
    let session = client.get_session(request).await.unwrap().into_inner().session.unwrap();
    assert_eq!(session.user_id.as_deref(), Some("alice"), "the handler sees the principal");

    let channel = tonic::transport::Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let health = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
    assert!(health.is_ok(), "health needs no credentials: {health:?}");
}

#[tokio::test]
async fn calls_are_counted_by_method_and_code() {
    telemetry::prometheus_handle();
    let server = start(None).await;
    let mut client = client(&server.url);
    client.get_session(get("fail-1")).await.unwrap();
    let text = telemetry::render_metrics();
    let counted = |code: &str| {
        text.lines().any(|line| {
            line.starts_with("agentmesh_grpc_server_requests_total{")
                && line.contains("rpc_method=\"GetSession\"")
                && line.contains(&format!("code=\"{code}\""))
        })
    };
    assert!(counted("Unavailable") && counted("Ok"), "{text}");
    assert!(text.contains("agentmesh_grpc_server_request_duration_seconds_bucket"), "{text}");
}

#[tokio::test]
async fn by_default_a_server_requires_the_mesh_identity_which_channels_forward_and_add() {
    let server = start_with(Auth::Mesh).await;
    let status = client(&server.url).get_session(get("s1")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("actor token"), "{status:?}");

    let alice = Principal { user_id: "alice".into(), tenant_id: "t1".into(), tier: Tier::Premium, scopes: vec![] };
    let minted = ServiceIdentity::development(ServiceName::Gateway).principal_minter().unwrap().mint(&alice);
    // What a service serving alice's call has in its context: the principal as received.
    let context = RequestContext { principal: Some(alice), principal_token: Some(minted), ..RequestContext::new() };
    let acting_as = |service| {
        let channel = ServiceChannel::connect_lazy("session-store", &server.url, &preset()).unwrap();
        SessionServiceClient::new(channel.acting_as(&ServiceIdentity::development(service)))
    };

    let mut orchestrator = acting_as(ServiceName::AgentOrchestrator);
    let session = context.clone().scope(orchestrator.get_session(get("s1"))).await.unwrap().into_inner();
    let session = session.session.unwrap();
    assert_eq!(session.user_id.as_deref(), Some("alice"), "the callee acts for the forwarded user");
    let actor = match &session.metadata.unwrap().fields["actor"].kind {
        Some(prost_types::value::Kind::StringValue(value)) => value.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(actor, "agent-orchestrator");

    let status = orchestrator.get_session(get("s1")).await.unwrap_err();
    assert!(status.message().contains("principal"), "no user, no call: {status:?}");

    let mut llm_proxy = acting_as(ServiceName::LlmProxy);
    let status = context.scope(llm_proxy.get_session(get("s1"))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("session-store does not serve calls from llm-proxy"), "{status:?}");

    let channel = tonic::transport::Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let health = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
    assert!(health.is_ok(), "health needs no credentials: {health:?}");
}
