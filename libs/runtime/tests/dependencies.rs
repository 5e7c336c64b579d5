//! Dependency health and breaker events on a served `GrpcServer`: the registry answers
//! `DependencyHealthService/ListDependencies` without credentials, with each
//! dependency's probe verdict and breaker state, and a breaker forced open by failures is
//! published as `agentmesh.breaker.state_changed` on real NATS JetStream (a stream and
//! subject root of the test's own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::{EventBus, NatsBus, NatsConfig, Publisher, SubscriptionSpec};
use agentmesh_proto::agentmesh::common::v1::{CircuitBreakerState, ExternalServiceType, ServiceHealth};
use agentmesh_proto::agentmesh::events::v1::CircuitBreakerStateChanged;
use agentmesh_proto::agentmesh::health::v1::ListDependenciesRequest;
use agentmesh_proto::agentmesh::health::v1::dependency_health_service_client::DependencyHealthServiceClient;
use agentmesh_resilience::{BreakerConfig, GrpcStatusClassifier, Preset, Resilience, RetryPolicy};
use agentmesh_runtime::auth::{Authenticate, Principal};
use agentmesh_runtime::dependencies::{BREAKER_STATE_CHANGED_TOPIC, BREAKER_STATE_CHANGED_TYPE};
use agentmesh_runtime::{ApiError, Config, Dependency, ErrorCode, GrpcServer, ServiceName};
use agentmesh_testkit::{Service, require, unique_name};
use futures::StreamExt;
use prost::Message;
use tokio::sync::oneshot;

/// Refuses every caller: dependency health must not need one.
struct NobodyAllowed;

#[tonic::async_trait]
impl Authenticate for NobodyAllowed {
    async fn authenticate(&self, _headers: &http::HeaderMap) -> Result<Option<Principal>, ApiError> {
        Err(ApiError::new(ErrorCode::Authentication, "Authentication failed"))
    }
}

/// A stream and subject root of the test's own, deleted when dropped.
struct TestStream {
    bus: NatsBus,
}

impl TestStream {
    async fn create() -> Option<Self> {
        let url = require(Service::Nats).await?;
        let config = NatsConfig {
            url,
            stream_name: unique_name("dh"),
            subject_root: unique_name("dh"),
            ..NatsConfig::default()
        };
        Some(Self { bus: NatsBus::connect(config).await.unwrap() })
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let config = self.bus.config().clone();
        // The test's runtime may be unwinding: delete from a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok(bus) = NatsBus::connect(config).await {
                    let _ = bus.delete_stream().await;
                }
            });
        })
        .join();
    }
}

/// A policy whose breaker opens on the first failed call and stays open.
fn fragile(name: &str) -> Resilience {
    let preset = Preset {
        retry: RetryPolicy { max_attempts: 1, ..Preset::internal().retry },
        breaker: BreakerConfig {
            failure_threshold: 1,
            recovery_timeout: Duration::from_secs(600),
            ..Preset::internal().breaker
        },
        ..Preset::internal()
    };
    Resilience::new(name, &preset)
}

fn by_name<'a>(entries: &'a [ServiceHealth], name: &str) -> &'a ServiceHealth {
    entries.iter().find(|e| e.service_name == name).unwrap_or_else(|| panic!("no {name} in {entries:?}"))
}

fn message_of(entry: &ServiceHealth) -> String {
    match &entry.metadata.as_ref().unwrap().fields["message"].kind {
        Some(prost_types::value::Kind::StringValue(text)) => text.clone(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn dependencies_are_served_without_credentials_and_breaker_changes_reach_jetstream() {
    let Some(stream) = TestStream::create().await else { return };
    let bus: Arc<dyn EventBus> = Arc::new(stream.bus.clone());
    let mut events =
        bus.subscribe(SubscriptionSpec::ephemeral(vec![BREAKER_STATE_CHANGED_TOPIC.to_owned()])).await.unwrap();

    let config = Config::load(None, []).unwrap();
    let server = GrpcServer::new(ServiceName::LlmProxy, &config).with_authenticator(Arc::new(NobodyAllowed));
    let dependencies = server.dependencies();
    let provider = fragile(&unique_name("openai"));
    dependencies.register(Dependency::new("openai", ExternalServiceType::LlmProvider).with_resilience(&provider));
    dependencies.register(
        Dependency::new("vault", ExternalServiceType::SecretManager)
            .with_probe(|| async { Err::<(), _>("connection refused") }),
    );
    dependencies.register(agentmesh_runtime::bus::dependency(&bus));
    let publisher: Arc<dyn Publisher> = bus.clone();
    dependencies.publish_breaker_changes(publisher);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let mut client = DependencyHealthServiceClient::connect(url).await.unwrap();

    let before = client.list_dependencies(ListDependenciesRequest {}).await.unwrap().into_inner();
    assert_eq!(before.service, "llm-proxy");
    let names: Vec<&str> = before.dependencies.iter().map(|d| d.service_name.as_str()).collect();
    assert_eq!(names, ["openai", "vault", "event-bus"]);
    let openai = by_name(&before.dependencies, "openai");
    assert_eq!((openai.status.as_str(), openai.circuit_breaker_state), ("healthy", CircuitBreakerState::Closed as i32));
    assert_eq!(openai.service_type, ExternalServiceType::LlmProvider as i32);
    let vault = by_name(&before.dependencies, "vault");
    assert_eq!(vault.status, "unhealthy");
    assert_eq!(message_of(vault), "connection refused");
    let nats = by_name(&before.dependencies, "event-bus");
    assert_eq!((nats.status.as_str(), message_of(nats).as_str()), ("healthy", "ok"));

    // One failed call opens the provider's breaker.
    let failed =
        provider.call(&GrpcStatusClassifier, || async { Err::<(), _>(tonic::Status::unavailable("down")) }).await;
    assert!(failed.is_err());

    let after = client.list_dependencies(ListDependenciesRequest {}).await.unwrap().into_inner();
    let openai = by_name(&after.dependencies, "openai");
    assert_eq!(openai.status, "unhealthy");
    assert_eq!(openai.circuit_breaker_state, CircuitBreakerState::Open as i32);
    assert_eq!((openai.error_count, openai.success_count), (1, 0));

    let delivery = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
    let event = delivery.event();
    assert_eq!(event.event_type(), BREAKER_STATE_CHANGED_TYPE);
    assert_eq!(event.source(), "agentmesh/llm-proxy");
    assert_eq!(event.subject(), Some(provider.name()));
    let change = CircuitBreakerStateChanged::decode(event.data().clone()).unwrap();
    assert_eq!(change.breaker, provider.name());
    assert_eq!(change.service, "llm-proxy");
    assert_eq!(change.service_type, ExternalServiceType::LlmProvider as i32);
    assert_eq!(change.previous_state, CircuitBreakerState::Closed as i32);
    assert_eq!(change.current_state, CircuitBreakerState::Open as i32);
    assert_eq!(change.consecutive_failures, 1);
    assert!(change.time.is_some());
}
