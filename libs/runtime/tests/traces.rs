//! Spans follow OpenTelemetry's conventions: a gRPC server span is named
//! `package.Service/Method`, and two services in one process report their own
//! `service.name`, with the callee's span a child of the caller's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_proto::agentmesh::session::v1::session_service_server::{SessionService, SessionServiceServer};
use agentmesh_proto::agentmesh::session::v1::{GetSessionRequest, GetSessionResponse};
use agentmesh_resilience::Preset;
use agentmesh_runtime::client::ServiceChannel;
use agentmesh_runtime::telemetry::services::ServiceRouter;
use agentmesh_runtime::{Config, GrpcServer, ServiceName, telemetry};
use agentmesh_testkit::traces::ExportedSpans;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Session-store's stand-in: answers every call.
struct Store;

#[tonic::async_trait]
impl SessionService for Store {
    async fn get_session(&self, _request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        Ok(Response::new(GetSessionResponse::default()))
    }
}

/// The orchestrator's stand-in: serves the same RPC by asking session-store.
struct Forwarder {
    store: SessionServiceClient<ServiceChannel>,
}

#[tonic::async_trait]
impl SessionService for Forwarder {
    async fn get_session(&self, request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        self.store.clone().get_session(request.into_inner()).await
    }
}

/// The production router, exporting in memory instead of over OTLP.
fn provider(exported: &ExportedSpans) -> SdkTracerProvider {
    let router = ServiceRouter::new("agentmesh", "agentmesh", exported.processor_factory());
    SdkTracerProvider::builder().with_span_processor(router).build()
}

async fn serve(name: ServiceName, service: impl SessionService) -> String {
    let config = Config::load(None, []).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Spans are under test, not identity (tests/mesh.rs covers that): no tokens needed.
    let server =
        GrpcServer::new(name, &config).without_authentication().add_service(SessionServiceServer::new(service));
    tokio::spawn(server.serve(listener, std::future::pending()));
    url
}

#[tokio::test]
async fn two_services_in_one_process_report_their_own_names_and_spans_named_after_the_rpc() {
    let exported = ExportedSpans::default();
    let provider = provider(&exported);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // This test's thread (the runtime is single-threaded) uses the production trace layer.
    let _subscriber = tracing_subscriber::registry().with(telemetry::trace_layer(&provider)).set_default();

    let store_url = serve(ServiceName::SessionStore, Store).await;
    let store = SessionServiceClient::new(
        ServiceChannel::connect_lazy("session-store", &store_url, &Preset::internal()).unwrap(),
    );
    let orchestrator_url = serve(ServiceName::AgentOrchestrator, Forwarder { store }).await;
    let mut orchestrator = SessionServiceClient::new(
        ServiceChannel::connect_lazy("agent-orchestrator", &orchestrator_url, &Preset::internal()).unwrap(),
    );
    orchestrator.get_session(GetSessionRequest { session_id: "s1".to_owned() }).await.unwrap();

    let name = "agentmesh.session.v1.SessionService/GetSession";
    let store_span = exported.wait_for("agentmesh-session-store", name).await.expect("session-store's span");
    let orchestrator_span =
        exported.wait_for("agentmesh-agent-orchestrator", name).await.expect("the orchestrator's span");
    for span in [&store_span, &orchestrator_span] {
        assert_eq!(span.span_kind, SpanKind::Server);
        assert!(span.attributes.iter().all(|kv| !kv.key.as_str().starts_with("agentmesh.")), "{:?}", span.attributes);
    }
    assert_eq!(store_span.span_context.trace_id(), orchestrator_span.span_context.trace_id(), "one trace");
    assert_eq!(
        store_span.parent_span_id,
        orchestrator_span.span_context.span_id(),
        "the callee's span is the caller's child"
    );
    assert!(exported.spans("agentmesh").is_empty(), "no span went out under the process's name");
}
