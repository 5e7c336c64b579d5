//! Spans follow OpenTelemetry's conventions: a gRPC server span is named
//! `package.Service/Method`, and two services in one process report their own
//! `service.name`, with the callee's span a child of the caller's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_proto::agentmesh::session::v1::session_service_server::{SessionService, SessionServiceServer};
use agentmesh_proto::agentmesh::session::v1::{GetSessionRequest, GetSessionResponse};
use agentmesh_resilience::Preset;
use agentmesh_runtime::client::ServiceChannel;
use agentmesh_runtime::telemetry::services::ServiceRouter;
use agentmesh_runtime::{Config, GrpcServer, ServiceName, telemetry};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor, SpanData};
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

/// Spans as exported, by the `service.name` of the exporter that received them.
#[derive(Clone, Default)]
struct Exported {
    by_service: Arc<Mutex<HashMap<String, InMemorySpanExporter>>>,
}

impl Exported {
    fn spans(&self, service: &str) -> Vec<SpanData> {
        self.by_service.lock().unwrap().get(service).map(|e| e.get_finished_spans().unwrap()).unwrap_or_default()
    }
}

/// The production router, with an in-memory exporter per service instead of OTLP.
fn provider(exported: &Exported) -> SdkTracerProvider {
    let by_service = exported.by_service.clone();
    let router = ServiceRouter::new(
        "agentmesh",
        "agentmesh",
        Box::new(move |resource| {
            let name = resource.get(&opentelemetry::Key::new("service.name")).unwrap().as_str().into_owned();
            let exporter = InMemorySpanExporter::default();
            by_service.lock().unwrap().insert(name, exporter.clone());
            Box::new(SimpleSpanProcessor::new(exporter))
        }),
    );
    SdkTracerProvider::builder().with_span_processor(router).build()
}

async fn serve(name: ServiceName, service: impl SessionService) -> String {
    let config = Config::load(None, []).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = GrpcServer::new(name, &config).add_service(SessionServiceServer::new(service));
    tokio::spawn(server.serve(listener, std::future::pending()));
    url
}

/// Spans end when the response body has been sent, just after the client has it.
async fn wait_for_spans(exported: &Exported, service: &str) -> Vec<SpanData> {
    for _ in 0..500 {
        let spans = exported.spans(service);
        if !spans.is_empty() {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no span reached {service}'s exporter");
}

#[tokio::test]
async fn two_services_in_one_process_report_their_own_names_and_spans_named_after_the_rpc() {
    let exported = Exported::default();
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

    let store_spans = wait_for_spans(&exported, "agentmesh-session-store").await;
    let orchestrator_spans = wait_for_spans(&exported, "agentmesh-agent-orchestrator").await;
    let [store_span] = store_spans.as_slice() else { panic!("one span for session-store: {store_spans:?}") };
    let [orchestrator_span] = orchestrator_spans.as_slice() else {
        panic!("one span for the orchestrator: {orchestrator_spans:?}")
    };
    for span in [store_span, orchestrator_span] {
        assert_eq!(span.name, "agentmesh.session.v1.SessionService/GetSession");
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
