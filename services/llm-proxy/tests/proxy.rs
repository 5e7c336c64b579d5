//! The proxy end to end against local fake providers (OpenAI wire format, wiremock): the
//! fallback chain and breakers, the first-token timeout, a stream broken after its first
//! token, rotated keys, the tokens-per-minute budget (in process and shared by two
//! proxies through the real Redis), and the gRPC service with the mesh's identity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentmesh_events::{EventBus, MemoryBus, MemoryConfig, Subscriber, SubscriptionSpec};
use agentmesh_llm_proxy::catalog::Catalog;
use agentmesh_llm_proxy::keys::Keys;
use agentmesh_llm_proxy::limits::Limits;
use agentmesh_llm_proxy::proxy::{Proxy, ProxyOptions};
use agentmesh_llm_proxy::settings::LlmSettings;
use agentmesh_llm_proxy::usage::UsageRecorder;
use agentmesh_proto::agentmesh::common::v1::{ErrorCode as ProtoErrorCode, MessageRole};
use agentmesh_proto::agentmesh::events::v1::LlmUsage;
use agentmesh_proto::agentmesh::llm::v1::llm_service_client::LlmServiceClient;
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, FinishReason, ListModelsRequest, StreamChatResponse, stream_chat_response,
};
use agentmesh_resilience::BreakerState;
use agentmesh_runtime::auth::{ACTOR_HEADER, PRINCIPAL_HEADER};
use agentmesh_runtime::config::Secret;
use agentmesh_runtime::secrets::{SecretReadError, SecretReader};
use agentmesh_runtime::{ApiError, Config, DependencyHealth, ErrorCode, ServiceName};
use agentmesh_testkit::identity;
use futures::StreamExt;
use prost::Message as _;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn config(pairs: &[(&str, String)]) -> Config {
    let env = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone()));
    Config::load_with(None, env, &[agentmesh_llm_proxy::SETTINGS]).unwrap()
}

/// Settings every test shares: fast retries, keys from the environment only.
fn base(extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let mut pairs: Vec<(&'static str, String)> = vec![
        ("LLM_KEY_SOURCE", "environment".into()),
        ("RETRY_LLM_MAX_ATTEMPTS", "2".into()),
        ("RETRY_LLM_BASE_DELAY", "0.01".into()),
        ("RETRY_LLM_MAX_DELAY", "0.02".into()),
        ("RATE_LIMIT_LLM_REQUESTS_PER_MINUTE", "10000".into()),
        ("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", "1000000".into()),
        ("LLM_SCRIPTED_DELAY", "0".into()),
    ];
    for (key, value) in extra {
        pairs.retain(|(k, _)| k != key);
        let key: &'static str = Box::leak((*key).to_owned().into_boxed_str());
        pairs.push((key, value.clone()));
    }
    pairs
}

async fn proxy(pairs: &[(&str, String)]) -> Proxy {
    let config = config(&base(pairs));
    agentmesh_llm_proxy::build(&config, None, &DependencyHealth::new("llm-proxy", Duration::from_secs(1)))
        .await
        .unwrap()
}

fn user(text: &str) -> ChatMessage {
    ChatMessage { role: MessageRole::User as i32, content: text.to_owned(), ..Default::default() }
}

fn ask(model: &str, text: &str) -> ChatRequest {
    ChatRequest { model: model.to_owned(), messages: vec![user(text)], max_tokens: Some(32), ..Default::default() }
}

/// An OpenAI chat completion answering `text`.
fn completion(text: &str) -> serde_json::Value {
    json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1_765_000_000, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    })
}

fn overloaded() -> ResponseTemplate {
    ResponseTemplate::new(503)
        .set_body_json(json!({"error": {"message": "The server is overloaded", "type": "server_error"}}))
}

/// An SSE answer streaming `words`, ended properly or cut off.
fn sse(words: &[&str], ended: bool) -> String {
    let mut body = String::new();
    for word in words {
        let chunk = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]});
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    if ended {
        let last = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}});
        body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    }
    body
}

fn streamed(body: String) -> ResponseTemplate {
    ResponseTemplate::new(200).insert_header("content-type", "text/event-stream").set_body_string(body)
}

/// Completions asked of `server` (start-up also lists a compatible server's models).
async fn requests_to(server: &MockServer) -> usize {
    let requests = server.received_requests().await.unwrap_or_default();
    requests.iter().filter(|request| request.url.path().ends_with("/chat/completions")).count()
}

fn compatible(primary: &MockServer, backup: &MockServer) -> (&'static str, String) {
    ("LLM_OPENAI_COMPATIBLE", format!("primary={}/v1,backup={}/v1", primary.uri(), backup.uri()))
}

#[tokio::test]
async fn fallback_answers_while_the_primary_breaker_is_open_and_the_primary_returns_after_recovery() {
    let (primary, backup) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(overloaded()).mount(&primary).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("from the backup")))
        .mount(&backup)
        .await;
    let proxy = proxy(&[
        compatible(&primary, &backup),
        ("LLM_FALLBACK_MODELS", "backup/m".into()),
        ("CIRCUIT_LLM_FAILURE_THRESHOLD", "3".into()),
        ("CIRCUIT_LLM_RECOVERY_TIMEOUT", "1".into()),
    ])
    .await;

    for call in 0..5 {
        let answer = proxy.chat(ask("primary/m", "hi")).await.unwrap();
        assert_eq!(answer.message.unwrap().content, "from the backup", "call {call}");
        assert_eq!(answer.model, "backup/m");
        assert_eq!(answer.fallbacks_tried, ["primary/m"]);
    }
    // Three failed calls of two attempts each opened the breaker; later calls skip the primary.
    assert_eq!(requests_to(&primary).await, 6);
    assert_eq!(proxy.policy("primary/m").breaker().state(), BreakerState::Open);

    primary.reset().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("from the primary")))
        .mount(&primary)
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = proxy.chat(ask("primary/m", "hi")).await.unwrap();
    assert_eq!(answer.message.unwrap().content, "from the primary", "tried again after the recovery timeout");
    assert!(answer.fallbacks_tried.is_empty());
    assert_eq!(proxy.policy("primary/m").breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn the_last_error_is_returned_when_every_model_fails_and_caller_errors_do_not_fall_back() {
    let (primary, backup) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(overloaded()).mount(&primary).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "context too long"}})))
        .mount(&backup)
        .await;
    let proxy = proxy(&[compatible(&primary, &backup)]).await;
    let mut request = ask("primary/m", "hi");
    request.fallback_models = vec!["backup/m".into()];
    let error = proxy.chat(request).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Validation, "{error:?}");
    assert!(error.message.contains("context too long"), "{error:?}");

    let error = proxy.chat(ask("backup/m", "hi")).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Validation);
    let mut request = ask("backup/m", "hi");
    request.fallback_models = vec!["primary/m".into()];
    let error = proxy.chat(request).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Validation, "a 400 is the caller's: no fallback");
    assert_eq!(requests_to(&primary).await, 2, "only the first request reached the primary (twice)");
}

#[tokio::test]
async fn a_slow_first_token_times_out_and_the_next_model_answers() {
    let (primary, backup) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(streamed(sse(&["late"], true)).set_delay(Duration::from_millis(600)))
        .mount(&primary)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(streamed(sse(&["quick ", "answer"], true)))
        .mount(&backup)
        .await;
    let proxy = Arc::new(
        proxy(&[
            compatible(&primary, &backup),
            ("LLM_FIRST_TOKEN_TIMEOUT", "0.1".into()),
            ("RETRY_LLM_MAX_ATTEMPTS", "1".into()),
        ])
        .await,
    );
    let mut request = ask("primary/m", "hi");
    request.fallback_models = vec!["backup/m".into()];
    let messages = collect(proxy.stream(request).await.unwrap()).await;
    let finish = finish_of(&messages);
    assert_eq!(finish.message.as_ref().unwrap().content, "quick answer");
    assert_eq!(finish.fallbacks_tried, ["primary/m"]);
    assert!(messages.iter().all(|m| m.model == "backup/m"));

    let error = proxy.stream(ask("primary/m", "hi")).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Timeout, "{error:?}");
}

async fn collect(mut receiver: tokio::sync::mpsc::Receiver<StreamChatResponse>) -> Vec<StreamChatResponse> {
    let mut messages = Vec::new();
    while let Some(message) = receiver.recv().await {
        messages.push(message);
    }
    messages
}

fn finish_of(messages: &[StreamChatResponse]) -> &agentmesh_proto::agentmesh::llm::v1::StreamFinish {
    match messages.last().and_then(|m| m.event.as_ref()) {
        Some(stream_chat_response::Event::Finish(finish)) => finish,
        other => panic!("the last message is the finish, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_broken_after_its_first_token_ends_with_an_error_event_and_keeps_the_partial_answer() {
    let (primary, backup) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(streamed(sse(&["partial ", "answer"], false)))
        .mount(&primary)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(streamed(sse(&["backup"], true)))
        .mount(&backup)
        .await;
    let proxy = Arc::new(proxy(&[compatible(&primary, &backup)]).await);
    let mut request = ask("primary/m", "hi");
    request.fallback_models = vec!["backup/m".into()];
    let messages = collect(proxy.stream(request).await.unwrap()).await;
    let texts: Vec<&str> = messages
        .iter()
        .filter_map(|m| match &m.event {
            Some(stream_chat_response::Event::Content(delta)) => Some(delta.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["partial ", "answer"]);
    let finish = finish_of(&messages);
    assert_eq!(finish.finish_reason, FinishReason::Error as i32);
    assert_eq!(finish.message.as_ref().unwrap().content, "partial answer", "the partial answer stays as sent");
    let error = finish.error.as_ref().unwrap();
    assert_eq!(error.code, ProtoErrorCode::ExternalServiceError as i32);
    assert_eq!(requests_to(&primary).await, 1, "no retry after the first token");
    assert_eq!(requests_to(&backup).await, 0, "no fallback after the first token");
}

/// secrets-broker as a test controls it: the key it holds can be rotated.
#[derive(Debug, Default)]
struct RotatingSecrets {
    key: std::sync::Mutex<String>,
    reads: AtomicUsize,
}

#[async_trait::async_trait]
impl SecretReader for RotatingSecrets {
    async fn read(&self, name: &str) -> Result<Option<Secret>, SecretReadError> {
        assert_eq!(name, "vault-api-key");
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(Some(Secret::new(self.key.lock().unwrap().clone())))
    }
}

#[tokio::test]
async fn a_rotated_key_is_used_without_a_restart_and_never_appears_in_errors() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-rotated-key-2222"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("with the new key")))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"message": "Incorrect API key provided: sk-original-key-1111", "type": "invalid_request_error"}}),
        ))
        .mount(&server)
        .await;
    let config = config(&base(&[
        ("LLM_OPENAI_COMPATIBLE", format!("vault={}/v1", server.uri())),
        ("LLM_KEY_SOURCE", "secrets-broker".into()),
        ("LLM_KEY_REFRESH_INTERVAL", "3600".into()),
    ]));
    let settings = config.settings::<LlmSettings>().unwrap();
    let secrets = Arc::new(RotatingSecrets::default());
    *secrets.key.lock().unwrap() = "sk-original-key-1111".into();
    let options = ProxyOptions {
        default_max_tokens: 64,
        first_token_timeout: Duration::from_secs(5),
        stream_timeout: Duration::from_secs(5),
        preset: config.resilience.llm.clone(),
    };
    let proxy = Proxy::new(
        Catalog::from_settings(&settings, &config.features),
        Keys::new(&settings, Some(secrets.clone())),
        Limits::new(None, 0, 0),
        UsageRecorder::new(None, Default::default()),
        options,
    );
    let error = proxy.chat(ask("vault/m", "hi")).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::ExternalService);
    assert!(!format!("{error:?}").contains("sk-original"), "the key never appears in errors: {error:?}");

    *secrets.key.lock().unwrap() = "sk-rotated-key-2222".into();
    let answer = proxy.chat(ask("vault/m", "hi")).await.unwrap();
    assert_eq!(answer.message.unwrap().content, "with the new key", "read again after the 401, no restart");
    let reads = secrets.reads.load(Ordering::SeqCst);
    proxy.chat(ask("vault/m", "hi")).await.unwrap();
    assert_eq!(secrets.reads.load(Ordering::SeqCst), reads, "a working key is cached");
}

/// Sends `text` until the limit refuses; returns the tokens the admitted calls used and
/// the refusal.
async fn fill(proxy: &Proxy, text: &str) -> (i64, ApiError) {
    let mut used = 0;
    for _ in 0..10_000 {
        match proxy.chat(ask("scripted/echo", text)).await {
            Ok(answer) => used += answer.usage.unwrap().total_tokens,
            Err(error) => return (used, error),
        }
    }
    panic!("the budget was never exhausted");
}

#[tokio::test]
async fn past_the_tokens_per_minute_budget_the_caller_gets_a_rate_limit_error_with_a_retry_time() {
    let proxy = proxy(&[("LLM_SCRIPTED", "on".into()), ("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", "600".into())]).await;
    let (used, error) = fill(&proxy, "how many tokens are left in this minute").await;
    assert_eq!(error.code, ErrorCode::RateLimit, "{error:?}");
    assert!(error.retry_after.is_some_and(|after| after > Duration::ZERO), "{error:?}");
    assert!((540..=600).contains(&used), "admitted usage {used} is within one request of the budget");
}

#[tokio::test]
async fn two_proxies_sharing_redis_hold_one_tokens_per_minute_budget_within_five_percent() {
    let Some(redis_url) = agentmesh_testkit::require(agentmesh_testkit::Service::Redis).await else { return };
    let prefix = agentmesh_testkit::unique_name("llm-budget");
    let _cleanup = agentmesh_testkit::redis::RedisPrefix::new(redis_url.clone(), prefix.clone());
    let shared = [
        ("LLM_SCRIPTED", "on".to_owned()),
        ("USE_REDIS", "true".to_owned()),
        ("REDIS_URL", redis_url),
        ("RATE_LIMIT_REDIS_PREFIX", prefix),
        ("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", "5000".to_owned()),
    ];
    let proxies = [Arc::new(proxy(&shared).await), Arc::new(proxy(&shared).await)];
    let mut tasks = Vec::new();
    for proxy in &proxies {
        for _ in 0..3 {
            let proxy = proxy.clone();
            tasks.push(tokio::spawn(async move { fill(&proxy, "a short question about the budget").await }));
        }
    }
    let mut used = 0;
    for task in tasks {
        let (tokens, error) = task.await.unwrap();
        assert_eq!(error.code, ErrorCode::RateLimit);
        used += tokens;
    }
    assert!((4750..=5250).contains(&used), "two proxies together used {used} of 5000 tokens");
}

#[tokio::test]
async fn the_grpc_service_serves_only_the_orchestrator_and_attributes_usage_to_its_principal_and_run() {
    let bus = Arc::new(MemoryBus::new(MemoryConfig::default()));
    let mut usage_events = bus.subscribe(SubscriptionSpec::ephemeral(vec!["llm.usage".to_owned()])).await.unwrap();
    let config = Arc::new(config(&base(&[("LLM_SCRIPTED", "auto".into())])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(agentmesh_llm_proxy::serve(config, bus.clone() as Arc<dyn EventBus>, listener, async {
        let _ = stopped.await;
    }));
    let mut client = loop {
        match LlmServiceClient::connect(format!("http://{address}")).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let alice = identity::user("alice", "acme");
    let mut claims = identity::principal_claims(ServiceName::AgentOrchestrator, &alice, 300);
    claims.run = Some("run-42".to_owned());
    let principal = identity::principal_signed_by(ServiceName::AgentOrchestrator, &claims);
    let call = |actor: ServiceName, request: ChatRequest| {
        let mut request = tonic::Request::new(request);
        request.metadata_mut().insert(PRINCIPAL_HEADER, principal.parse().unwrap());
        request
            .metadata_mut()
            .insert(ACTOR_HEADER, identity::actor_token(actor, ServiceName::LlmProxy).parse().unwrap());
        request
    };

    let answer = client.chat(call(ServiceName::AgentOrchestrator, ask("", "hello mesh"))).await.unwrap().into_inner();
    assert_eq!(answer.model, "scripted/echo", "no key configured: the scripted provider answers");
    assert_eq!(answer.message.unwrap().content, "You said: hello mesh");

    let refused = client.chat(call(ServiceName::Gateway, ask("", "hi"))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("does not serve calls from gateway"), "{refused:?}");

    let delivery = tokio::time::timeout(Duration::from_secs(5), usage_events.next()).await.unwrap().unwrap().unwrap();
    let usage = LlmUsage::decode(delivery.event().data().clone()).unwrap();
    assert_eq!((usage.user_id.as_str(), usage.tenant_id.as_str()), ("alice", "acme"));
    assert_eq!(usage.run_id.as_deref(), Some("run-42"));
    assert_eq!(
        (usage.provider.as_str(), usage.model.as_str(), usage.outcome.as_str()),
        ("scripted", "scripted/echo", "ok")
    );
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    assert!(usage.completion_tokens > 0);

    let mut list = tonic::Request::new(ListModelsRequest { provider: None });
    list.metadata_mut().insert(PRINCIPAL_HEADER, principal.parse().unwrap());
    list.metadata_mut().insert(
        ACTOR_HEADER,
        identity::actor_token(ServiceName::AgentOrchestrator, ServiceName::LlmProxy).parse().unwrap(),
    );
    let models = client.list_models(list).await.unwrap().into_inner();
    assert!(models.notice.contains("scripted"), "{models:?}");
    assert!(models.models.iter().any(|m| m.id == "scripted/echo" && m.scripted));

    let invalid = client
        .chat(call(ServiceName::AgentOrchestrator, ChatRequest { temperature: Some(3.0), ..ask("", "hi") }))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let unknown = client.chat(call(ServiceName::AgentOrchestrator, ask("nobody/m", "hi"))).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(unknown.message().contains("not configured"), "{unknown:?}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Answers 429 with `Retry-After: 1` first, then the completion; remembers when each
/// request came.
struct RateLimitedOnce {
    arrivals: Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

impl wiremock::Respond for RateLimitedOnce {
    fn respond(&self, _request: &wiremock::Request) -> ResponseTemplate {
        let mut arrivals = self.arrivals.lock().unwrap();
        arrivals.push(std::time::Instant::now());
        if arrivals.len() == 1 {
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"error": {"message": "Rate limit reached", "type": "requests"}}))
        } else {
            ResponseTemplate::new(200).set_body_json(completion("after waiting"))
        }
    }
}

#[tokio::test]
async fn a_429_is_retried_after_the_providers_retry_after_and_a_longer_hint_is_the_callers_to_wait() {
    let (primary, backup) = (MockServer::start().await, MockServer::start().await);
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let responder = RateLimitedOnce { arrivals: arrivals.clone() };
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(responder).mount(&primary).await;
    let proxy = proxy(&[compatible(&primary, &backup), ("RETRY_LLM_MAX_DELAY", "2".into())]).await;
    let answer = proxy.chat(ask("primary/m", "hi")).await.unwrap();
    assert_eq!(answer.message.unwrap().content, "after waiting");
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2);
    assert!(arrivals[1] - arrivals[0] >= Duration::from_millis(990), "the retry waited for Retry-After");

    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_json(json!({"error": {"message": "Rate limit reached", "type": "tokens"}})),
        )
        .mount(&backup)
        .await;
    let error = proxy.chat(ask("backup/m", "hi")).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::RateLimit, "{error:?}");
    assert_eq!(error.retry_after, Some(Duration::from_secs(30)), "the provider's hint reaches the caller");
    assert_eq!(requests_to(&backup).await, 1, "a hint beyond RETRY_LLM_MAX_DELAY is not waited for here");
}

#[tokio::test]
async fn feature_flags_switch_fallback_and_extra_providers_off() {
    let (primary, backup) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(overloaded()).mount(&primary).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("from the backup")))
        .mount(&backup)
        .await;
    let chain = [
        compatible(&primary, &backup),
        ("LLM_DEFAULT_MODEL", "primary/m".into()),
        ("LLM_FALLBACK_MODELS", "backup/m".into()),
    ];

    let mut settings = chain.to_vec();
    settings.push(("FEATURE_ENABLE_PROVIDER_FALLBACK", "false".into()));
    let error = proxy(&settings).await.chat(ask("", "hi")).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::ExternalService, "no fallback: the primary's error");
    assert_eq!(requests_to(&backup).await, 0);

    let mut settings = chain.to_vec();
    settings.push(("FEATURE_ENABLE_MULTIPLE_LLM_PROVIDERS", "false".into()));
    let proxy = proxy(&settings).await;
    assert_eq!(proxy.catalog().unserved_models(), ["backup/m"], "reported at start-up");
    let error = proxy.chat(ask("backup/m", "hi")).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Validation, "only the default model's provider is on");
    let error = proxy.chat(ask("", "hi")).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::ExternalService, "the unserved configured fallback is skipped");
}

#[tokio::test]
async fn a_compatible_servers_models_are_listed_and_its_first_model_is_the_default() {
    let (server, silent) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "object": "list",
            "data": [{"id": "smollm2-135m-instruct", "object": "model", "owned_by": "llamacpp"}]
        })))
        .mount(&server)
        .await;
    let listed = proxy(&[
        ("LLM_OPENAI_COMPATIBLE", format!("llama={}/v1,quiet={}/v1", server.uri(), silent.uri())),
        ("LLM_SCRIPTED", "off".into()),
    ])
    .await;
    let models = listed.catalog().list(None).unwrap();
    let ids: Vec<&str> = models.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["llama/smollm2-135m-instruct"], "a server that lists nothing lists nothing");
    assert_eq!(models.default_model, "llama/smollm2-135m-instruct");

    let nothing =
        proxy(&[("LLM_OPENAI_COMPATIBLE", format!("quiet={}/v1", silent.uri())), ("LLM_SCRIPTED", "off".into())]).await;
    let error = nothing.chat(ask("", "hi")).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Validation);
    assert!(error.message.contains("LLM_DEFAULT_MODEL"), "{error:?}");
}
