//! secrets-broker served in-process on loopback, called as the mesh's services call it
//! (their actor tokens, no principal): the local file, the access policy and its audit
//! trail, rotation and the changes watchers hear, and a provider outage as callers and
//! dependency health see it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_events::{MemoryBus, Subscriber, SubscriptionSpec};
use agentmesh_proto::agentmesh::common::v1::CircuitBreakerState;
use agentmesh_proto::agentmesh::events::v1::{SecretAccessOutcome, SecretAccessed, SecretOperation, SecretRotated};
use agentmesh_proto::agentmesh::health::v1::ListDependenciesRequest;
use agentmesh_proto::agentmesh::health::v1::dependency_health_service_client::DependencyHealthServiceClient;
use agentmesh_proto::agentmesh::secrets::v1::secrets_service_client::SecretsServiceClient;
use agentmesh_proto::agentmesh::secrets::v1::{
    GetSecretRequest, ListSecretsRequest, RotateSecretRequest, SecretChangeKind, SecretProvider, WatchSecretsRequest,
};
use agentmesh_runtime::auth::ACTOR_HEADER;
use agentmesh_runtime::{ApiError, Config, ErrorCode, ServiceName};
use agentmesh_secrets_broker::provider::{
    Provider, ProviderError, ProviderKind, Rotation, SecretValue, SecretVersion, SharedProvider, VersionInfo,
};
use agentmesh_testkit::identity::actor_token;
use async_trait::async_trait;
use futures::StreamExt as _;
use tokio::sync::oneshot;
use tonic::Request;
use tonic::transport::Channel;

const OPENAI_KEY: &str = "sk-test-openai-4f1c9e";
const MCP_TOKEN: &str = "ghp-test-token-77aa";

/// A served broker; it stops when dropped.
struct Broker {
    client: SecretsServiceClient<Channel>,
    health: DependencyHealthServiceClient<Channel>,
    bus: MemoryBus,
    _file: Option<tempfile::TempDir>,
    _stop: oneshot::Sender<()>,
}

impl Broker {
    /// Serves the local provider over a dotenv file holding `file` and configured by `env`.
    async fn local(file: &str, env: &[(&str, &str)]) -> (Self, std::path::PathBuf) {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("secrets.env");
        std::fs::write(&path, file).unwrap();
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        env.push(("SECRET_LOCAL_FILE".to_owned(), path.display().to_string()));
        env.push(("SECRET_LOCAL_WATCH_INTERVAL".to_owned(), "0.05".to_owned()));
        let mut broker = Self::start(env, None).await;
        broker._file = Some(directory);
        (broker, path)
    }

    async fn start(env: Vec<(String, String)>, provider: Option<SharedProvider>) -> Self {
        let config = Arc::new(Config::load_with(None, env, &[agentmesh_secrets_broker::SETTINGS]).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let bus = MemoryBus::default();
        let shutdown = async {
            let _ = stopped.await;
        };
        let shared: Arc<dyn agentmesh_events::EventBus> = Arc::new(bus.clone());
        match provider {
            Some(provider) => {
                tokio::spawn(agentmesh_secrets_broker::serve_provider(config, shared, provider, listener, shutdown));
            }
            None => {
                tokio::spawn(agentmesh_secrets_broker::serve(config, shared, listener, shutdown));
            }
        }
        let channel = Channel::from_shared(url).unwrap().connect_lazy();
        Self {
            client: SecretsServiceClient::new(channel.clone()),
            health: DependencyHealthServiceClient::new(channel),
            bus,
            _file: None,
            _stop: stop,
        }
    }

    async fn get(&self, caller: ServiceName, name: &str) -> Result<(String, String), ApiError> {
        let request = GetSecretRequest { name: name.to_owned(), ..GetSecretRequest::default() };
        self.get_with(caller, request).await
    }

    async fn get_with(&self, caller: ServiceName, request: GetSecretRequest) -> Result<(String, String), ApiError> {
        let answer = self.client.clone().get_secret(as_service(caller, request)).await;
        let secret = answer.map_err(|status| ApiError::from_status(&status))?.into_inner().secret.unwrap();
        Ok((String::from_utf8(secret.value).unwrap(), secret.version))
    }

    async fn breaker(&self) -> CircuitBreakerState {
        let listed = self.health.clone().list_dependencies(ListDependenciesRequest {}).await.unwrap().into_inner();
        let provider = listed.dependencies.iter().find(|d| d.service_name == "secret-provider").unwrap();
        provider.circuit_breaker_state()
    }
}

/// `body` as a call from `caller`, acting on its own (no user).
fn as_service<T>(caller: ServiceName, body: T) -> Request<T> {
    let mut request = Request::new(body);
    let token = actor_token(caller, ServiceName::SecretsBroker);
    request.metadata_mut().insert(ACTOR_HEADER, token.parse().unwrap());
    request
}

/// The next `count` events on `topic`, decoded.
async fn next_events<M: prost::Message + Default>(bus: &MemoryBus, topic: &str, count: usize) -> Vec<(M, Vec<u8>)> {
    let mut stream = bus.subscribe(SubscriptionSpec::ephemeral(vec![topic.to_owned()])).await.unwrap();
    let mut events = Vec::new();
    while events.len() < count {
        let delivery = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
        let data = delivery.event().data().to_vec();
        events.push((M::decode(data.as_slice()).unwrap(), data));
    }
    events
}

#[tokio::test]
async fn services_read_the_local_file_and_every_read_is_audited_without_its_value() {
    let (broker, _path) =
        Broker::local(&format!("OPENAI_API_KEY={OPENAI_KEY}\nmcp-github-token={MCP_TOKEN}\n"), &[]).await;
    assert_eq!(
        broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap(),
        (OPENAI_KEY.to_owned(), "1".to_owned())
    );
    // Second read: from the cache.
    broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap();
    let missing = broker.get(ServiceName::McpBroker, "no-such-secret").await.unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);
    let version = GetSecretRequest { name: "openai-api-key".into(), version: Some("7".into()), bypass_cache: false };
    assert_eq!(broker.get_with(ServiceName::LlmProxy, version).await.unwrap_err().code, ErrorCode::NotFound);

    let audited = next_events::<SecretAccessed>(&broker.bus, "secret.accessed", 4).await;
    let summary: Vec<_> = audited
        .iter()
        .map(|(event, _)| {
            (event.caller.as_str(), event.name.as_str(), event.version.as_str(), event.outcome(), event.cached)
        })
        .collect();
    assert!(
        summary.contains(&("llm-proxy", "openai-api-key", "1", SecretAccessOutcome::Allowed, false)),
        "{summary:?}"
    );
    assert!(summary.contains(&("llm-proxy", "openai-api-key", "1", SecretAccessOutcome::Allowed, true)), "{summary:?}");
    assert!(
        summary.contains(&("mcp-broker", "no-such-secret", "", SecretAccessOutcome::NotFound, false)),
        "{summary:?}"
    );
    for (event, bytes) in &audited {
        assert_eq!((event.operation(), event.source()), (SecretOperation::Read, SecretProvider::Local));
        assert!(!String::from_utf8_lossy(bytes).contains(OPENAI_KEY));
    }

    let listed = broker
        .client
        .clone()
        .list_secrets(as_service(ServiceName::McpBroker, ListSecretsRequest { prefix: "mcp-".into() }))
        .await
        .unwrap();
    let names: Vec<_> = listed.into_inner().secrets.into_iter().map(|s| (s.name, s.version)).collect();
    assert_eq!(names, [("mcp-github-token".to_owned(), "1".to_owned())]);
}

#[tokio::test]
async fn a_service_not_allowed_a_secret_is_refused_and_the_refusal_is_audited() {
    let policy = "llm-proxy=openai-api-key,anthropic-*;mcp-broker=mcp-*";
    let (broker, _path) = Broker::local(
        &format!("OPENAI_API_KEY={OPENAI_KEY}\nmcp-github-token={MCP_TOKEN}\n"),
        &[("SECRET_READ_POLICY", policy), ("SECRET_ROTATE_POLICY", "agent-orchestrator=mcp-*")],
    )
    .await;
    assert_eq!(broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap().0, OPENAI_KEY);
    let refused = broker.get(ServiceName::McpBroker, "openai-api-key").await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::Authorization);
    assert_eq!(refused.message, "mcp-broker may not read secret openai-api-key");
    assert_eq!(broker.get(ServiceName::McpBroker, "mcp-github-token").await.unwrap().0, MCP_TOKEN);

    // Listings show only what the caller may read.
    let listed = broker
        .client
        .clone()
        .list_secrets(as_service(ServiceName::LlmProxy, ListSecretsRequest::default()))
        .await
        .unwrap();
    let names: Vec<_> = listed.into_inner().secrets.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["openai-api-key"]);
    // Watchers hear only of what they may read: mcp-broker's watch skips the OpenAI key.
    let mut watch = broker
        .client
        .clone()
        .watch_secrets(as_service(ServiceName::McpBroker, WatchSecretsRequest::default()))
        .await
        .unwrap()
        .into_inner();

    let rotate = |name: &str| RotateSecretRequest { name: name.to_owned(), value: Some(b"new".to_vec()) };
    let refused = broker
        .client
        .clone()
        .rotate_secret(as_service(ServiceName::LlmProxy, rotate("openai-api-key")))
        .await
        .unwrap_err();
    assert_eq!(ApiError::from_status(&refused).code, ErrorCode::Authorization);
    // The refused rotation changed nothing.
    assert_eq!(
        broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap(),
        (OPENAI_KEY.to_owned(), "1".to_owned())
    );
    broker
        .client
        .clone()
        .rotate_secret(as_service(ServiceName::AgentOrchestrator, rotate("mcp-github-token")))
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(heard.change.unwrap().name, "mcp-github-token");

    let audited = next_events::<SecretAccessed>(&broker.bus, "secret.accessed", 6).await;
    let denied: Vec<_> = audited
        .iter()
        .filter(|(event, _)| event.outcome() == SecretAccessOutcome::Denied)
        .map(|(event, _)| (event.caller.as_str(), event.name.as_str(), event.operation()))
        .collect();
    assert_eq!(
        denied,
        [
            ("mcp-broker", "openai-api-key", SecretOperation::Read),
            ("llm-proxy", "openai-api-key", SecretOperation::Rotate)
        ]
    );
}

#[tokio::test]
async fn rotation_keeps_the_previous_version_readable_and_tells_watchers_and_replicas() {
    let (broker, path) = Broker::local(&format!("OPENAI_API_KEY={OPENAI_KEY}\n"), &[]).await;
    let mut watch = broker
        .client
        .clone()
        .watch_secrets(as_service(ServiceName::LlmProxy, WatchSecretsRequest { prefix: "openai".into() }))
        .await
        .unwrap()
        .into_inner();
    broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap();

    let request = RotateSecretRequest { name: "openai-api-key".into(), value: Some(b"sk-rotated".to_vec()) };
    let rotated = broker
        .client
        .clone()
        .rotate_secret(as_service(ServiceName::AgentOrchestrator, request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rotated.secret.unwrap().version, rotated.previous.unwrap().version), ("2".to_owned(), "1".to_owned()));
    let change =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap().change.unwrap();
    assert_eq!(
        (change.name.as_str(), change.version.as_str(), change.previous_version.as_deref(), change.kind()),
        ("openai-api-key", "2", Some("1"), SecretChangeKind::Rotated)
    );
    // The cache was dropped: the new value at once; the previous one by its version.
    assert_eq!(
        broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap(),
        ("sk-rotated".to_owned(), "2".to_owned())
    );
    let previous = GetSecretRequest { name: "openai-api-key".into(), version: Some("1".into()), bypass_cache: false };
    assert_eq!(broker.get_with(ServiceName::LlmProxy, previous).await.unwrap().0, OPENAI_KEY);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "OPENAI_API_KEY=\"sk-rotated\"\n");
    let announced = next_events::<SecretRotated>(&broker.bus, "secret.rotated", 1).await;
    assert_eq!((announced[0].0.version.as_str(), announced[0].0.previous_version.as_deref()), ("2", Some("1")));
    assert!(!String::from_utf8_lossy(&announced[0].1).contains("sk-rotated"));

    // Edited by hand: watchers hear of it within the watch interval, once.
    std::fs::write(&path, "OPENAI_API_KEY=sk-by-hand\n").unwrap();
    let change =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap().change.unwrap();
    assert_eq!((change.version.as_str(), change.kind()), ("3", SecretChangeKind::Rotated));
    assert_eq!(broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap().0, "sk-by-hand");

    // Another replica's rotation, announced on the bus, reaches this replica's watchers.
    let elsewhere = SecretRotated {
        name: "openai-api-key".into(),
        version: "9".into(),
        previous_version: Some("3".into()),
        ..SecretRotated::default()
    };
    let event = agentmesh_secrets_broker::audit::EVENTS.event(
        "secret.rotated",
        "openai-api-key".into(),
        None,
        "SecretRotated",
        &elsewhere,
    );
    agentmesh_events::Publisher::publish(&broker.bus, event).await.unwrap();
    let change =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap().change.unwrap();
    assert_eq!(change.version, "9");
}

#[tokio::test]
async fn internal_secrets_are_generated_and_others_need_a_value() {
    let (broker, _path) = Broker::local("", &[]).await;
    let generate = |name: &str| RotateSecretRequest { name: name.to_owned(), value: None };
    let generated = broker
        .client
        .clone()
        .rotate_secret(as_service(ServiceName::AgentOrchestrator, generate("jwt-secret-key")))
        .await
        .unwrap()
        .into_inner();
    assert!(generated.previous.is_none());
    let (first, _) = broker.get(ServiceName::LlmProxy, "jwt-secret-key").await.unwrap();
    assert_eq!(first.len(), 43, "32 random bytes, base64url");
    broker
        .client
        .clone()
        .rotate_secret(as_service(ServiceName::AgentOrchestrator, generate("jwt-secret-key")))
        .await
        .unwrap();
    let (second, version) = broker.get(ServiceName::LlmProxy, "jwt-secret-key").await.unwrap();
    assert_ne!(first, second);
    assert_eq!(version, "2");

    let refused = broker
        .client
        .clone()
        .rotate_secret(as_service(ServiceName::AgentOrchestrator, generate("openai-api-key")))
        .await
        .unwrap_err();
    let refused = ApiError::from_status(&refused);
    assert_eq!(refused.code, ErrorCode::Validation);
    assert_eq!(refused.field_violations[0].field, "value");
    let bad_name = GetSecretRequest { name: "no/slashes".into(), ..GetSecretRequest::default() };
    assert_eq!(broker.get_with(ServiceName::LlmProxy, bad_name).await.unwrap_err().code, ErrorCode::Validation);
    assert!(
        matches!(broker.get(ServiceName::LlmProxy, "openai-api-key").await, Err(e) if e.code == ErrorCode::NotFound)
    );
}

/// A provider that can be switched off, like a cloud provider during an outage.
#[derive(Debug, Default)]
struct Flaky {
    down: AtomicBool,
    reads: Mutex<u32>,
}

#[async_trait]
impl Provider for Flaky {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Aws
    }

    async fn get(&self, name: &str, _version: Option<&str>) -> Result<SecretVersion, ProviderError> {
        *self.reads.lock().unwrap() += 1;
        if self.down.load(Ordering::SeqCst) {
            return Err(ProviderError::Unavailable { reason: "connection refused".into() });
        }
        let info = VersionInfo { name: name.to_owned(), version: "v1".into(), created_at: None, expires_at: None };
        Ok(SecretVersion { info, value: SecretValue::from(OPENAI_KEY.to_owned()) })
    }

    async fn list(&self, _prefix: &str) -> Result<Vec<VersionInfo>, ProviderError> {
        Ok(Vec::new())
    }

    async fn put(&self, _name: &str, _value: SecretValue) -> Result<Rotation, ProviderError> {
        Err(ProviderError::Unavailable { reason: "connection refused".into() })
    }
}

#[tokio::test]
async fn with_the_provider_down_cached_values_are_served_the_breaker_opens_and_then_recovers() {
    let provider = Arc::new(Flaky::default());
    let env = [
        ("SECRET_CACHE_TTL", "0.2"),
        ("SECRET_AUTO_REFRESH", "false"),
        ("RETRY_SECRET_MAX_ATTEMPTS", "1"),
        ("CIRCUIT_SECRET_FAILURE_THRESHOLD", "2"),
        ("CIRCUIT_SECRET_RECOVERY_TIMEOUT", "0.5"),
    ];
    let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let broker = Broker::start(env, Some(provider.clone())).await;
    assert_eq!(broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap().0, OPENAI_KEY);
    assert_eq!(broker.breaker().await, CircuitBreakerState::Closed);

    provider.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    for _ in 0..3 {
        assert_eq!(broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap().0, OPENAI_KEY);
    }
    assert_eq!(broker.breaker().await, CircuitBreakerState::Open);
    let reads = *provider.reads.lock().unwrap();
    assert_eq!(broker.get(ServiceName::LlmProxy, "openai-api-key").await.unwrap().0, OPENAI_KEY);
    assert_eq!(*provider.reads.lock().unwrap(), reads, "an open breaker spares the provider");
    // A secret never cached has nothing to stand in: the caller is told to come back.
    let refused = broker.get(ServiceName::LlmProxy, "anthropic-api-key").await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::CircuitBreakerOpen);
    assert!(!refused.message.contains(OPENAI_KEY));

    provider.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(broker.get(ServiceName::LlmProxy, "anthropic-api-key").await.unwrap().0, OPENAI_KEY);
    assert_eq!(broker.breaker().await, CircuitBreakerState::Closed);
}
