//! A REST call through the gateway is traced as OpenTelemetry names it: the gateway's span
//! is `METHOD /route` with the route's template under the gateway's `service.name`, and
//! session-store's span, in the same process, is `package.Service/Method` under its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agentmesh_runtime::telemetry;
use agentmesh_runtime::telemetry::services::ServiceRouter;
use agentmesh_testkit::traces::ExportedSpans;
use common::Mesh;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const KEY: &str = "sk-traced-0123456789abcdefghijklmnopqrstuv";

#[tokio::test]
async fn a_rest_call_is_traced_per_route_and_per_service() {
    let exported = ExportedSpans::default();
    let router = ServiceRouter::new("agentmesh", "agentmesh", exported.processor_factory());
    let provider = SdkTracerProvider::builder().with_span_processor(router).build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // The runtime is single-threaded: the gateway and session-store run on this thread.
    let _subscriber = tracing_subscriber::registry().with(telemetry::trace_layer(&provider)).set_default();
    let keys = format!("{KEY}=traced-user:premium");
    let mesh = Mesh::start(&[("SECURITY_API_KEYS", keys.as_str())]).await;

    let created = mesh
        .http
        .post(mesh.url("/api/v1/sessions"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"title": "traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let fetched = mesh.http.get(mesh.url(&format!("/api/v1/sessions/{id}"))).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(fetched.status(), 200);

    let rest = exported.wait_for("agentmesh-gateway", "GET /api/v1/sessions/{session_id}").await;
    let rest = rest.unwrap_or_else(|| panic!("gateway spans: {:?}", exported.spans("agentmesh-gateway")));
    assert_eq!(rest.span_kind, SpanKind::Server);
    let store = exported.wait_for("agentmesh-session-store", "agentmesh.session.v1.SessionService/GetSession").await;
    let store = store.unwrap_or_else(|| panic!("session-store spans: {:?}", exported.spans("agentmesh-session-store")));
    assert_eq!(store.span_context.trace_id(), rest.span_context.trace_id(), "one trace across both hops");
    assert_eq!(store.parent_span_id, rest.span_context.span_id(), "session-store's span is the gateway's child");
    assert!(exported.wait_for("agentmesh-gateway", "POST /api/v1/sessions").await.is_some());
    assert!(exported.spans("agentmesh").is_empty(), "no span went out under the process's name");
}
