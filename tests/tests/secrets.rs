//! Secrets end to end, through the real `agentmesh-secrets-broker` and `agentmesh-llm-proxy`
//! binaries on the real NATS (a stream of the test's own): llm-proxy takes the OpenAI key
//! from secrets-broker's `local` provider (a dotenv file the test edits), and calls a fake
//! OpenAI server served here that records the key of every call.
//!
//! - **Rotation without a restart**: a key changed in the file is what llm-proxy sends
//!   once the change is announced (`WatchSecrets`), and the old key is never sent after
//!   that. llm-proxy's own refresh interval is an hour here, so only the watch can explain
//!   the switch.
//! - **The gateway's signing key**: with `GATEWAY_JWT_KEY_SOURCE=secrets-broker` the
//!   gateway signs access tokens with `jwt-secret-key`; after a rotation, new tokens use the
//!   new key and tokens signed before keep working for the overlap, then stop.
//! - **No leaks**: after reads, refusals, rotations, a key the provider refuses and a
//!   broken file, every log line both processes wrote (every crate at debug level), every event on the
//!   stream and every error a caller got is searched for the secret values: none appears.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_e2e::{Process, TestStream, free_port, wait_serving};
use agentmesh_events::{NatsBus, Subscriber, SubscriptionSpec};
use agentmesh_proto::agentmesh::common::v1::MessageRole;
use agentmesh_proto::agentmesh::llm::v1::llm_service_client::LlmServiceClient;
use agentmesh_proto::agentmesh::llm::v1::{ChatMessage, ChatRequest};
use agentmesh_proto::agentmesh::secrets::v1::secrets_service_client::SecretsServiceClient;
use agentmesh_proto::agentmesh::secrets::v1::{GetSecretRequest, RotateSecretRequest};
use agentmesh_runtime::ServiceName;
use agentmesh_runtime::auth::{ACTOR_HEADER, PRINCIPAL_HEADER};
use agentmesh_testkit::identity::{actor_token, principal_token, user};
use agentmesh_testkit::{Service, require};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::json;
use tonic::transport::Channel;

const FIRST: &str = "sk-e2e-first-3b9f0c7d21aa";
const SECOND: &str = "sk-e2e-second-8e4a1f66b0bb";
const REVOKED: &str = "sk-e2e-revoked-77c1d05e9fcc";
const ROTATED: &str = "sk-e2e-rotated-5d2c7a9e41dd";
const MCP_TOKEN: &str = "tok-e2e-mcp-c0ffee1234ee";

/// The keys the fake OpenAI server was called with, in order.
type SeenKeys = Arc<Mutex<Vec<String>>>;

/// `POST /v1/chat/completions`: records the bearer key; refuses [`REVOKED`] as OpenAI does.
async fn completions(State(seen): State<SeenKeys>, headers: HeaderMap) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    seen.lock().unwrap().push(key.clone());
    if key == REVOKED {
        let error = json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}});
        return (StatusCode::UNAUTHORIZED, axum::Json(error)).into_response();
    }
    axum::Json(json!({
        "id": "chatcmpl-secrets", "object": "chat.completion", "created": 1_765_000_000, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }))
    .into_response()
}

/// secrets-broker and llm-proxy as processes, the fake provider, and the secrets file.
struct Mesh {
    broker: Option<Process>,
    proxy: Option<Process>,
    secrets: SecretsServiceClient<Channel>,
    llm: LlmServiceClient<Channel>,
    seen: SeenKeys,
    file: PathBuf,
    stream: TestStream,
    _directory: tempfile::TempDir,
}

impl Mesh {
    async fn start() -> Option<Mesh> {
        let nats = require(Service::Nats).await?;
        let stream = TestStream::new(&nats, "secrets_e2e");
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("secrets.env");
        std::fs::write(&file, format!("# provider keys\nOPENAI_API_KEY={FIRST}\nmcp-token={MCP_TOKEN}\n")).unwrap();

        let seen = SeenKeys::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = format!("http://{}/v1", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .with_state(seen.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let (broker_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
        let common = [
            ("NATS_URL", nats.clone()),
            ("NATS_STREAM", stream.config().stream_name.clone()),
            ("NATS_SUBJECT_ROOT", stream.config().subject_root.clone()),
            // Every crate at debug: the HTTP, gRPC and NATS clients' logs are searched too.
            ("RUST_LOG", "debug".to_owned()),
            ("SECRETS_BROKER_URL", format!("http://127.0.0.1:{broker_port}")),
        ];
        let mut broker_env = common.to_vec();
        broker_env.extend([
            ("SECRETS_BROKER_ADDR", format!("127.0.0.1:{broker_port}")),
            ("SECRET_LOCAL_FILE", file.display().to_string()),
            ("SECRET_LOCAL_WATCH_INTERVAL", "0.1".to_owned()),
            ("SECRET_READ_POLICY", "llm-proxy=openai-api-key;mcp-broker=mcp-*".to_owned()),
        ]);
        let mut proxy_env = common.to_vec();
        proxy_env.extend([
            ("LLM_PROXY_ADDR", format!("127.0.0.1:{proxy_port}")),
            ("LLM_PROVIDERS", "openai".to_owned()),
            ("LLM_KEY_SOURCE", "secrets-broker".to_owned()),
            ("LLM_KEY_REFRESH_INTERVAL", "3600".to_owned()),
            ("LLM_OPENAI_BASE_URL", fake),
            ("LLM_OPENAI_MODELS", "gpt-4o-mini".to_owned()),
            ("RETRY_LLM_MAX_ATTEMPTS", "1".to_owned()),
        ]);
        let mut broker = Process::spawn("agentmesh-secrets-broker", &[], &broker_env).unwrap();
        let broker_channel = wait_serving(&mut broker, broker_port).await.unwrap();
        let mut proxy = Process::spawn("agentmesh-llm-proxy", &[], &proxy_env).unwrap();
        let proxy_channel = wait_serving(&mut proxy, proxy_port).await.unwrap();
        Some(Mesh {
            broker: Some(broker),
            proxy: Some(proxy),
            secrets: SecretsServiceClient::new(broker_channel),
            llm: LlmServiceClient::new(proxy_channel),
            seen,
            file,
            stream,
            _directory: directory,
        })
    }

    /// One chat through llm-proxy, as the orchestrator makes it; the error's text if refused.
    async fn chat(&self) -> Result<(), String> {
        let request = ChatRequest {
            model: "openai/gpt-4o-mini".to_owned(),
            messages: vec![ChatMessage {
                role: MessageRole::User.into(),
                content: "hi".to_owned(),
                ..ChatMessage::default()
            }],
            ..ChatRequest::default()
        };
        let mut call = tonic::Request::new(request);
        let principal = principal_token(&user("alice", "acme"));
        let actor = actor_token(ServiceName::AgentOrchestrator, ServiceName::LlmProxy);
        call.metadata_mut().insert(PRINCIPAL_HEADER, principal.parse().unwrap());
        call.metadata_mut().insert(ACTOR_HEADER, actor.parse().unwrap());
        self.llm.clone().chat(call).await.map(drop).map_err(|status| format!("{status:?}"))
    }

    /// The key of the fake provider's last call.
    fn last_key(&self) -> String {
        self.seen.lock().unwrap().last().cloned().unwrap_or_default()
    }

    /// Chats until the provider sees `key` (the watch interval is 0.1 s; 10 s is plenty).
    async fn chat_until_sent(&self, key: &str) {
        for _ in 0..200 {
            let _ = self.chat().await;
            if self.last_key() == key {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("llm-proxy never sent the new key; it sent {:?}", self.seen.lock().unwrap());
    }

    /// A call to secrets-broker as `caller`, acting on its own.
    fn as_service<T>(caller: ServiceName, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request.metadata_mut().insert(ACTOR_HEADER, actor_token(caller, ServiceName::SecretsBroker).parse().unwrap());
        request
    }

    /// Stops both processes (SIGTERM, as Kubernetes does) and returns what they logged.
    async fn stop(&mut self) -> String {
        let mut logs = String::new();
        for process in [self.proxy.take(), self.broker.take()].into_iter().flatten() {
            process.terminate().await.unwrap();
            let (_, stderr) = process.wait().await.unwrap();
            logs.push_str(&stderr);
        }
        logs
    }

    /// Every event stored on the test's stream, as raw bytes (attributes and payload).
    async fn events(&self) -> Vec<String> {
        let bus = NatsBus::connect(self.stream.config().clone()).await.unwrap();
        let mut deliveries = bus.subscribe(SubscriptionSpec::ephemeral(Vec::new())).await.unwrap();
        let mut events = Vec::new();
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_secs(1), deliveries.next()).await {
            let event = delivery.event();
            events.push(format!("{event:?} {}", String::from_utf8_lossy(event.data())));
        }
        events
    }
}

#[tokio::test]
async fn a_key_changed_in_the_local_file_is_used_without_a_restart_and_the_old_one_never_again() {
    let Some(mesh) = Mesh::start().await else { return };
    mesh.chat().await.unwrap();
    assert_eq!(mesh.last_key(), FIRST);

    std::fs::write(&mesh.file, format!("# provider keys\nOPENAI_API_KEY={SECOND}\nmcp-token={MCP_TOKEN}\n")).unwrap();
    mesh.chat_until_sent(SECOND).await;
    for _ in 0..10 {
        mesh.chat().await.unwrap();
    }
    let seen = mesh.seen.lock().unwrap().clone();
    let switched = seen.iter().position(|key| key == SECOND).unwrap();
    assert!(seen[..switched].iter().all(|key| key == FIRST), "{seen:?}");
    assert!(seen[switched..].iter().all(|key| key == SECOND), "the old key was sent after the new one: {seen:?}");
}

#[tokio::test]
async fn no_secret_value_appears_in_any_log_line_event_or_error() {
    let Some(mut mesh) = Mesh::start().await else { return };
    let mut errors = Vec::new();
    mesh.chat().await.unwrap();

    // A service reading what it may not, what it may, and what does not exist.
    let read = |name: &str, version: Option<&str>| GetSecretRequest {
        name: name.to_owned(),
        version: version.map(str::to_owned),
        bypass_cache: false,
    };
    let refused =
        mesh.secrets.clone().get_secret(Mesh::as_service(ServiceName::McpBroker, read("openai-api-key", None))).await;
    errors.push(format!("{:?}", refused.unwrap_err()));
    let token =
        mesh.secrets.clone().get_secret(Mesh::as_service(ServiceName::McpBroker, read("mcp-token", None))).await;
    assert_eq!(token.unwrap().into_inner().secret.unwrap().value, MCP_TOKEN.as_bytes());
    let missing = mesh
        .secrets
        .clone()
        .get_secret(Mesh::as_service(ServiceName::LlmProxy, read("openai-api-key", Some("99"))))
        .await;
    errors.push(format!("{:?}", missing.unwrap_err()));

    // Rotated to a key the provider refuses: the caller's error names no key.
    let rotate =
        |value: &str| RotateSecretRequest { name: "openai-api-key".to_owned(), value: Some(value.as_bytes().to_vec()) };
    mesh.secrets
        .clone()
        .rotate_secret(Mesh::as_service(ServiceName::AgentOrchestrator, rotate(REVOKED)))
        .await
        .unwrap();
    mesh.chat_until_sent(REVOKED).await;
    errors.push(mesh.chat().await.unwrap_err());
    mesh.secrets
        .clone()
        .rotate_secret(Mesh::as_service(ServiceName::AgentOrchestrator, rotate(ROTATED)))
        .await
        .unwrap();
    mesh.chat_until_sent(ROTATED).await;

    // A broken edit of the file is reported (and the values last read kept).
    std::fs::write(&mesh.file, format!("OPENAI_API_KEY {SECOND}\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.chat().await.unwrap();
    assert_eq!(mesh.last_key(), ROTATED);

    let events = mesh.events().await;
    let logs = mesh.stop().await;
    assert!(logs.contains("secret access"), "the audit log lines are there to be searched");
    assert!(logs.contains("secrets file not read"), "the broken file was reported");
    assert!(events.iter().any(|event| event.contains("secret.accessed")), "audit events are there: {events:?}");
    assert!(events.iter().any(|event| event.contains("secret.rotated")), "rotation events are there");
    assert_eq!(errors.len(), 3);
    for value in [FIRST, SECOND, REVOKED, ROTATED, MCP_TOKEN] {
        for (index, line) in logs.lines().enumerate() {
            assert!(!line.contains(value), "log line {index} shows a secret: {line}");
        }
        for event in &events {
            assert!(!event.contains(value), "an event shows a secret: {event}");
        }
        for error in &errors {
            assert!(!error.contains(value), "an error shows a secret: {error}");
        }
    }
}

const JWT_SECRET: &str = "jwt-e2e-0123456789abcdefghijklmnopqrstuv";
const GATEWAY_KEY: &str = "sk-e2e-gateway-0123456789abcdefghijklmnopq";

/// The HS256 signature the gateway puts on `signing_input` when its secret is `secret`
/// (the key is derived from the secret, `agentmesh jwt hs256 v1`).
fn gateway_signature(secret: &str, signing_input: &str) -> String {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let mac = |key: &[u8], data: &[u8]| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    };
    let key = mac(secret.as_bytes(), b"agentmesh jwt hs256 v1");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(&key, signing_input.as_bytes()))
}

/// A new access token for [`GATEWAY_KEY`].
async fn access_token(api: &agentmesh_e2e::Rest) -> String {
    let body = json!({"api_key": GATEWAY_KEY});
    let answer = reqwest::Client::new().post(format!("{}/api/v1/auth/token", api.base())).json(&body).send().await;
    let issued: serde_json::Value = answer.unwrap().json().await.unwrap();
    issued["access_token"].as_str().unwrap_or_else(|| panic!("no token: {issued}")).to_owned()
}

/// The status of an authenticated call made with `token`.
async fn accepted(api: &agentmesh_e2e::Rest, token: &str) -> u16 {
    let answer =
        reqwest::Client::new().get(format!("{}/api/v1/auth/api-keys", api.base())).bearer_auth(token).send().await;
    answer.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_gateway_signs_with_the_brokers_key_and_honours_the_previous_one_during_the_overlap() {
    let Some(nats) = require(Service::Nats).await else { return };
    let stream = TestStream::new(&nats, "secrets_jwt");
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("secrets.json");
    std::fs::write(&file, format!(r#"{{"jwt-secret-key": "{JWT_SECRET}"}}"#)).unwrap();
    let (broker_port, gateway_port) = (free_port().unwrap(), free_port().unwrap());
    let common = [
        ("NATS_URL", nats.clone()),
        ("NATS_STREAM", stream.config().stream_name.clone()),
        ("NATS_SUBJECT_ROOT", stream.config().subject_root.clone()),
        ("SECRETS_BROKER_URL", format!("http://127.0.0.1:{broker_port}")),
    ];
    let mut broker_env = common.to_vec();
    broker_env.extend([
        ("SECRETS_BROKER_ADDR", format!("127.0.0.1:{broker_port}")),
        ("SECRET_LOCAL_FILE", file.display().to_string()),
        ("SECRET_READ_POLICY", "gateway=jwt-secret-key".to_owned()),
    ]);
    let mut gateway_env = common.to_vec();
    gateway_env.extend([
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", gateway_port.to_string()),
        ("SECURITY_API_KEYS", format!("{GATEWAY_KEY}=alice:premium")),
        ("GATEWAY_JWT_KEY_SOURCE", "secrets-broker".to_owned()),
        ("GATEWAY_JWT_KEY_OVERLAP", "2".to_owned()),
    ]);
    // The gateway starts first: it waits for secrets-broker's key before serving.
    let mut gateway = Process::spawn("agentmesh-gateway", &[], &gateway_env).unwrap();
    let mut broker = Process::spawn("agentmesh-secrets-broker", &[], &broker_env).unwrap();
    let secrets = SecretsServiceClient::new(wait_serving(&mut broker, broker_port).await.unwrap());
    let base = format!("http://127.0.0.1:{gateway_port}");
    agentmesh_e2e::wait_http(&mut gateway, &format!("{base}/openapi.json")).await.unwrap();
    let api = agentmesh_e2e::Rest::new(base);

    let signed_with = |token: &str, secret: &str| {
        let (input, signature) = token.rsplit_once('.').unwrap();
        gateway_signature(secret, input) == signature
    };

    let before = access_token(&api).await;
    assert!(signed_with(&before, JWT_SECRET), "signed with secrets-broker's jwt-secret-key");
    assert_eq!(accepted(&api, &before).await, 200);

    let generate = RotateSecretRequest { name: "jwt-secret-key".to_owned(), value: None };
    let rotated =
        secrets.clone().rotate_secret(Mesh::as_service(ServiceName::AgentOrchestrator, generate)).await.unwrap();
    assert_eq!(rotated.into_inner().previous.unwrap().version, "1");
    let mut after = access_token(&api).await;
    for _ in 0..100 {
        if !signed_with(&after, JWT_SECRET) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = access_token(&api).await;
    }
    assert!(!signed_with(&after, JWT_SECRET), "new tokens are signed with the rotated key");
    // During the overlap both verify.
    assert_eq!(accepted(&api, &before).await, 200);
    assert_eq!(accepted(&api, &after).await, 200);
    // After it, only the new key does.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(accepted(&api, &before).await, 401);
    assert_eq!(accepted(&api, &after).await, 200);
}
