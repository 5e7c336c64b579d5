//! Loopback benchmark of llm-proxy (`docs/benchmarks.md`): the latency the proxy adds over
//! calling the same fake provider directly, its throughput ceiling and its CPU per call,
//! against the real release binary.
//!
//! The fake provider is served by this process (axum, HTTP/1.1 keep-alive), speaking the
//! OpenAI chat-completions wire format: `POST /v1/chat/completions` answers a fixed
//! `chat.completion`, or, when the body asks for `"stream": true`, a server-sent stream of a
//! role chunk, 5 content chunks, a finish chunk, a usage chunk and `[DONE]`. It answers at
//! once, with no artificial delay, so every difference between the paths is the proxy's
//! own cost (and that of its client stack). `GET /v1/models` lists its one model. llm-proxy
//! reaches it as the OpenAI-compatible provider `fake` (`LLM_OPENAI_COMPATIBLE`).
//!
//! 1. **Added latency**, open loop: each path gets `BENCH_RATE` (1,000) calls/s on a fixed
//!    timetable, and latency counts from each call's *scheduled* send time, so a stalled
//!    driver or proxy cannot hide its queue (no coordinated omission). Four paths: unary
//!    and streamed, each direct (reqwest, the OpenAI JSON, pooled HTTP/1.1) and through
//!    llm-proxy (tonic over HTTP/2, `Chat` / `StreamChat` with the agent-orchestrator's
//!    principal and actor tokens). Each path is measured for `BENCH_SECONDS` (30) after
//!    `BENCH_WARMUP_SECONDS` (3), cut into `BENCH_ROUNDS` (3) slices taken in turn, so all
//!    paths see the same background load. Streams report the time to the first content
//!    delta and to the end of the stream.
//! 2. **Ceiling**: `BENCH_CONCURRENCY` (64) closed-loop workers through the proxy for
//!    `BENCH_CEILING_SECONDS` (10), unary then streamed: calls/s and CPU per call.
//!
//! ```text
//! cargo build --release -p agentmesh-llm-proxy && cargo bench -p agentmesh-e2e --bench llm_proxy
//! ```
//!
//! Other knobs: `BENCH_MAX_IN_FLIGHT` (512: a call falling due while that many are in
//! flight is dropped and counted), `BENCH_GRPC_CHANNELS` (4 HTTP/2 connections to the
//! proxy), `BENCH_TIMEOUT_SECONDS` (600: hard overall timeout, after which every started
//! process is killed and the bench exits non-zero), `BENCH_SERVICE_ENV` (extra
//! `NAME=value` settings for the proxy), `BENCH_PIN=1` (llm-proxy on CPU 1; this driver
//! and the fake provider on CPU 0), `BENCH_NICE` (a nice value for the proxy and this
//! driver, for example -10 as root) and `BENCH_REALTIME=1` (both in the real-time class,
//! as root: other work on a shared machine then preempts neither path).
//!
//! Prints a Markdown summary; exits non-zero when any call failed or was dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_e2e::{free_port, serve_fake_provider};
use agentmesh_proto::agentmesh::common::v1::MessageRole;
use agentmesh_proto::agentmesh::llm::v1::llm_service_client::LlmServiceClient;
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, FinishReason, StreamChatRequest, stream_chat_response,
};
use agentmesh_runtime::ServiceName;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::common::{
    Call, LoadSettings, Samples, Service, Timing, Tokens, all_lags, closed_loop, grpc_channels, load_average,
    machine_summary, measure_paths, per_call_us, percentile_ms, wait_grpc_serving, with_cpu,
};

/// The CPU llm-proxy runs on when pinned.
const PROXY_CPU: usize = 1;
/// The CPU of this driver and the fake provider when pinned.
const DRIVER_CPU: usize = 0;
/// The fake provider's model, as llm-proxy names it.
const MODEL: &str = "fake/m";

/// The system prompt of every request: an agent's instructions, a realistic size.
const SYSTEM: &str = "You are a careful research assistant working inside an agent run. Answer in plain \
    English, cite the tool results you were given, say when you are unsure, and keep answers under \
    150 words unless the user asks for more detail.";
/// The user's question.
const QUESTION: &str = "Summarise the three main trade-offs between running our inference behind a \
    central proxy and calling each provider directly from every service, in terms of latency, \
    failure handling and cost accounting.";
/// The fake provider's answer, streamed in these 5 pieces.
const ANSWER_PIECES: [&str; 5] = [
    "A central proxy adds one local hop, ",
    "usually well under a millisecond, to every call. ",
    "In exchange, retries, fallbacks and circuit breakers live in one place ",
    "instead of in every service, and every call is metered and priced the same way, ",
    "so budgets and rate limits hold across the whole fleet.",
];

// ---------------------------------------------------------------------------------------
// The fake provider

/// The fake provider's fixed answers, encoded once.
struct Fake {
    /// The `chat.completion` body.
    completion: Bytes,
    /// The `text/event-stream` body, one frame per event.
    events: Vec<Bytes>,
}

impl Fake {
    fn new() -> Self {
        let answer: String = ANSWER_PIECES.concat();
        let usage = json!({
            "prompt_tokens": 84, "completion_tokens": 52, "total_tokens": 136,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}
        });
        let completion = json!({
            "id": "chatcmpl-bench0001", "object": "chat.completion", "created": 1_765_000_000, "model": "m",
            "system_fingerprint": "fp_bench",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": usage
        });
        let chunk = |choices: Value, usage: Value| {
            let chunk = json!({
                "id": "chatcmpl-bench0001", "object": "chat.completion.chunk", "created": 1_765_000_000,
                "model": "m", "system_fingerprint": "fp_bench", "choices": choices, "usage": usage
            });
            Bytes::from(format!("data: {chunk}\n\n"))
        };
        let delta = |delta: Value, finish: Value| {
            json!([{
                "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish
            }])
        };
        let mut events = vec![chunk(delta(json!({"role": "assistant", "content": ""}), Value::Null), Value::Null)];
        events.extend(
            ANSWER_PIECES.iter().map(|piece| chunk(delta(json!({"content": piece}), Value::Null), Value::Null)),
        );
        events.push(chunk(delta(json!({}), json!("stop")), Value::Null));
        events.push(chunk(json!([]), usage));
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        Self { completion: Bytes::from(completion.to_string()), events }
    }
}

/// `POST /v1/chat/completions`: the fixed completion, or its stream when asked for one.
async fn chat_completions(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    // Both clients write compact JSON (serde_json), so a byte search is enough.
    let streamed = body.windows(13).any(|w| w == b"\"stream\":true");
    let (content_type, body) = if streamed {
        let frames = fake.events.clone().into_iter().map(Ok::<_, Infallible>);
        ("text/event-stream", Body::from_stream(futures::stream::iter(frames)))
    } else {
        ("application/json", Body::from(fake.completion.clone()))
    };
    Response::builder().header(CONTENT_TYPE, content_type).body(body).unwrap()
}

// ---------------------------------------------------------------------------------------
// The four paths

/// The four measured paths, in the order of [`Path::ALL`] (their index in the results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    DirectUnary,
    ProxyUnary,
    DirectStream,
    ProxyStream,
}

impl Path {
    const ALL: [Path; 4] = [Path::DirectUnary, Path::ProxyUnary, Path::DirectStream, Path::ProxyStream];

    fn proxied(self) -> bool {
        matches!(self, Path::ProxyUnary | Path::ProxyStream)
    }
}

/// The OpenAI request body both direct paths send, as llm-proxy would send it for
/// [`chat_request`] to an OpenAI-compatible server.
fn openai_body(streamed: bool) -> Value {
    let mut body = json!({
        "model": "m",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "max_tokens": 256
    });
    if streamed {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The request both proxied paths send.
fn chat_request() -> ChatRequest {
    let message = |role: MessageRole, content: &str| ChatMessage {
        role: role as i32,
        content: content.to_owned(),
        ..Default::default()
    };
    ChatRequest {
        model: MODEL.to_owned(),
        messages: vec![message(MessageRole::System, SYSTEM), message(MessageRole::User, QUESTION)],
        max_tokens: Some(256),
        ..Default::default()
    }
}

fn direct_unary(http: &reqwest::Client, url: &str) -> Call {
    let (http, url, body) = (http.clone(), url.to_owned(), Arc::new(openai_body(false)));
    Arc::new(move |_| {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        Box::pin(async move {
            let started = Instant::now();
            let response = http.post(&url).json(&*body).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            let answer: Value = response.json().await.map_err(|e| e.to_string())?;
            let total = started.elapsed();
            check_answer(answer["choices"][0]["message"]["content"].as_str().unwrap_or_default())?;
            Ok(Timing::unary(total))
        })
    })
}

fn direct_stream(http: &reqwest::Client, url: &str) -> Call {
    let (http, url, body) = (http.clone(), url.to_owned(), Arc::new(openai_body(true)));
    Arc::new(move |_| {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        Box::pin(async move {
            let started = Instant::now();
            let response = http.post(&url).json(&*body).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            let mut frames = response.bytes_stream();
            let (mut pending, mut text, mut first, mut done) = (Vec::new(), String::new(), None, false);
            while let Some(frame) = frames.next().await {
                pending.extend_from_slice(&frame.map_err(|e| e.to_string())?);
                // One server-sent event per blank-line-terminated block; only `data:` lines here.
                while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = pending.drain(..end + 2).collect();
                    let data = event.strip_prefix(b"data: ").ok_or("an event without data")?.trim_ascii();
                    if data == b"[DONE]" {
                        done = true;
                        continue;
                    }
                    let chunk: Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
                    if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str().filter(|d| !d.is_empty()) {
                        first.get_or_insert_with(|| started.elapsed());
                        text.push_str(delta);
                    }
                }
            }
            let total = started.elapsed();
            if !done {
                return Err("the stream ended without [DONE]".to_owned());
            }
            check_answer(&text)?;
            Ok(Timing { first: first.ok_or("no content delta")?, total })
        })
    })
}

fn proxy_unary(channels: &Arc<Vec<Channel>>) -> Call {
    let (channels, tokens, request) = (channels.clone(), Tokens::mint(ServiceName::LlmProxy), chat_request());
    Arc::new(move |n| {
        let channel = channels[n % channels.len()].clone();
        let (tokens, request) = (tokens.clone(), request.clone());
        Box::pin(async move {
            let started = Instant::now();
            let mut call = tonic::Request::new(request);
            tokens.insert(call.metadata_mut());
            let answer = LlmServiceClient::new(channel).chat(call).await.map_err(|s| s.to_string())?.into_inner();
            let total = started.elapsed();
            check_answer(&answer.message.map(|m| m.content).unwrap_or_default())?;
            Ok(Timing::unary(total))
        })
    })
}

fn proxy_stream(channels: &Arc<Vec<Channel>>) -> Call {
    let (channels, tokens, request) = (channels.clone(), Tokens::mint(ServiceName::LlmProxy), chat_request());
    Arc::new(move |n| {
        let channel = channels[n % channels.len()].clone();
        let (tokens, request) = (tokens.clone(), request.clone());
        Box::pin(async move {
            let started = Instant::now();
            let mut call = tonic::Request::new(StreamChatRequest { request: Some(request) });
            tokens.insert(call.metadata_mut());
            let mut stream =
                LlmServiceClient::new(channel).stream_chat(call).await.map_err(|s| s.to_string())?.into_inner();
            let (mut first, mut finish) = (None, None);
            while let Some(message) = stream.message().await.map_err(|s| s.to_string())? {
                match message.event {
                    Some(stream_chat_response::Event::Content(_)) => {
                        first.get_or_insert_with(|| started.elapsed());
                    }
                    Some(stream_chat_response::Event::Finish(end)) => finish = Some(end),
                    _ => {}
                }
            }
            let total = started.elapsed();
            let finish = finish.ok_or("the stream ended without finish")?;
            if finish.finish_reason != FinishReason::Stop as i32 {
                return Err(format!("finished with {finish:?}"));
            }
            check_answer(&finish.message.map(|m| m.content).unwrap_or_default())?;
            Ok(Timing { first: first.ok_or("no content delta")?, total })
        })
    })
}

fn check_answer(text: &str) -> Result<(), String> {
    if ANSWER_PIECES.concat() == text { Ok(()) } else { Err(format!("unexpected answer {text:?}")) }
}

// ---------------------------------------------------------------------------------------
// The run

/// A started llm-proxy whose only provider is the fake at `fake_base`.
fn spawn_proxy(port: u16, fake_base: &str, settings: &LoadSettings) -> Service {
    // Every protection stays on: limits with budgets the load never reaches, so their cost
    // is measured; a bulkhead wide enough for the in-flight cap and the workers.
    let bulkhead = settings.max_in_flight.max(settings.concurrency) * 2;
    let env = [
        ("LLM_PROXY_ADDR", format!("127.0.0.1:{port}")),
        ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned()),
        ("LLM_OPENAI_COMPATIBLE", format!("fake={fake_base}")),
        ("LLM_DEFAULT_MODEL", MODEL.to_owned()),
        ("LLM_SCRIPTED", "off".to_owned()),
        ("LLM_KEY_SOURCE", "environment".to_owned()),
        ("RATE_LIMIT_LLM_REQUESTS_PER_MINUTE", "100000000".to_owned()),
        ("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", "2000000000".to_owned()),
        ("BULKHEAD_LLM_MAX_CONCURRENCY", bulkhead.to_string()),
    ];
    Service::spawn("agentmesh-llm-proxy", &env, PROXY_CPU)
}

struct Results {
    /// Open loop, by [`Path::ALL`].
    paths: Vec<Samples>,
    ceiling_unary: Samples,
    ceiling_stream: Samples,
    proxy_rss_kib: u64,
}

async fn run(settings: &LoadSettings) -> Results {
    let chat = axum::routing::post(chat_completions).with_state(Arc::new(Fake::new()));
    let fake_base = serve_fake_provider(chat, &["m"]).await.unwrap();
    let port = free_port().unwrap();
    let mut proxy = spawn_proxy(port, &fake_base, settings);
    wait_grpc_serving(&mut proxy, port).await;
    settings.schedule(proxy.pid);

    let http = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(settings.max_in_flight.max(settings.concurrency))
        .build()
        .unwrap();
    let url = format!("{fake_base}/chat/completions");
    let channels = grpc_channels(port, settings.grpc_channels).await;
    // Built per slice: the proxied calls get fresh tokens.
    let call_of = |path: Path| match path {
        Path::DirectUnary => direct_unary(&http, &url),
        Path::ProxyUnary => proxy_unary(&channels),
        Path::DirectStream => direct_stream(&http, &url),
        Path::ProxyStream => proxy_stream(&channels),
    };

    let paths = measure_paths(settings, &mut proxy, &Path::ALL, call_of).await;

    eprintln!("bench: ceiling, {} workers through the proxy ...", settings.concurrency);
    let mut ceiling_unary =
        with_cpu(&proxy, closed_loop(settings.concurrency, settings.ceiling, &call_of(Path::ProxyUnary))).await;
    let mut ceiling_stream =
        with_cpu(&proxy, closed_loop(settings.concurrency, settings.ceiling, &call_of(Path::ProxyStream))).await;
    ceiling_unary.sort();
    ceiling_stream.sort();
    proxy.check_alive();
    let proxy_rss_kib = proxy.rss_kib();
    Results { paths, ceiling_unary, ceiling_stream, proxy_rss_kib }
}

// ---------------------------------------------------------------------------------------
// Report

const QUANTILES: [f64; 3] = [0.50, 0.90, 0.99];

/// p50, p90, p99 and max of `values`, in milliseconds.
fn spread(values: &[u32]) -> [f64; 4] {
    let max = values.last().map_or(f64::NAN, |&us| f64::from(us) / 1000.0);
    [percentile_ms(values, QUANTILES[0]), percentile_ms(values, QUANTILES[1]), percentile_ms(values, QUANTILES[2]), max]
}

fn report(settings: &LoadSettings, results: &Results, load_before: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## llm-proxy benchmark\n");
    let _ = writeln!(
        out,
        "{}",
        machine_summary(settings.machine_cpus, load_before, || format!(
            "Pinned: llm-proxy on CPU {PROXY_CPU}; the load driver and the fake provider on CPU {DRIVER_CPU}."
        ))
    );
    if let Some(nice) = settings.nice {
        let _ = writeln!(out, "llm-proxy and the load driver (with the fake provider) run at nice {nice}.\n");
    }
    if settings.realtime {
        let _ = writeln!(
            out,
            "llm-proxy and the load driver (with the fake provider) run in the real-time class (`SCHED_FIFO` 1).\n"
        );
    }
    let _ = writeln!(
        out,
        "Open loop, {} calls/s per path on a fixed timetable, latency from the scheduled send time; \
         {} s warm-up + {} s measured per path in {} alternating slices; fake OpenAI-compatible provider \
         answering at once (unary JSON, or 5 content chunks + finish + usage + `[DONE]`).\n",
        settings.rate,
        settings.warmup.as_secs(),
        settings.measure.as_secs(),
        settings.rounds
    );
    let _ = writeln!(
        out,
        "| path | calls | errors · dropped | p50 ms | p90 ms | p99 ms | max ms | proxy CPU µs/call | \
         proxy wait for CPU µs/call | driver + fake CPU µs/call |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let [direct_unary, proxy_unary, direct_stream, proxy_stream] = &results.paths[..] else { unreachable!() };
    let row = |out: &mut String, name: &str, path: Path, values: &[u32]| {
        let samples = &results.paths[path as usize];
        let [p50, p90, p99, max] = spread(values);
        // The proxy idles while the direct paths run.
        let [proxy_cpu, proxy_wait] = [samples.service_cpu, samples.service_wait].map(|total| {
            if path.proxied() { format!("{:.0}", per_call_us(total, samples.calls())) } else { "—".into() }
        });
        let _ = writeln!(
            out,
            "| {name} | {} | {} · {} | {p50:.3} | {p90:.3} | {p99:.3} | {max:.2} | {proxy_cpu} | {proxy_wait} | \
             {:.0} |",
            samples.calls(),
            samples.errors,
            samples.dropped,
            per_call_us(samples.driver_cpu, samples.calls()),
        );
    };
    let added = |out: &mut String, name: &str, direct: &[u32], proxied: &[u32]| {
        let (d, p) = (spread(direct), spread(proxied));
        let _ = writeln!(
            out,
            "| **{name}** | | | **{:+.3}** | {:+.3} | **{:+.3}** | {:+.2} | | | |",
            p[0] - d[0],
            p[1] - d[1],
            p[2] - d[2],
            p[3] - d[3]
        );
    };
    row(&mut out, "unary, direct (HTTP/1.1 JSON)", Path::DirectUnary, &direct_unary.total);
    row(&mut out, "unary, via llm-proxy (gRPC `Chat`)", Path::ProxyUnary, &proxy_unary.total);
    added(&mut out, "added by the proxy, unary", &direct_unary.total, &proxy_unary.total);
    row(&mut out, "stream first token, direct (SSE)", Path::DirectStream, &direct_stream.first);
    row(&mut out, "stream first token, via llm-proxy (`StreamChat`)", Path::ProxyStream, &proxy_stream.first);
    added(&mut out, "added by the proxy, first token", &direct_stream.first, &proxy_stream.first);
    row(&mut out, "whole stream, direct", Path::DirectStream, &direct_stream.total);
    row(&mut out, "whole stream, via llm-proxy", Path::ProxyStream, &proxy_stream.total);
    added(&mut out, "added by the proxy, whole stream", &direct_stream.total, &proxy_stream.total);

    let lag = all_lags(&results.paths);
    let _ = writeln!(
        out,
        "\nDriver delay (scheduled send → call started, included above in both paths): p50 {:.3} ms, p99 {:.3} ms.",
        percentile_ms(&lag, 0.50),
        percentile_ms(&lag, 0.99)
    );
    let unary_p99 = spread(&proxy_unary.total)[2] - spread(&direct_unary.total)[2];
    let ttft_p99 = spread(&proxy_stream.first)[2] - spread(&direct_stream.first)[2];
    let met = unary_p99 < 0.5 && ttft_p99 < 0.5;
    let _ = writeln!(
        out,
        "\nGoal p99 added < 0.5 ms: unary {unary_p99:+.3} ms, first token {ttft_p99:+.3} ms: **{}**.\n",
        if met { "met" } else { "NOT met" }
    );

    let _ = writeln!(
        out,
        "Ceiling: {} closed-loop workers through llm-proxy over {} HTTP/2 connections, {} s each:\n",
        settings.concurrency,
        settings.grpc_channels,
        settings.ceiling.as_secs()
    );
    let _ = writeln!(
        out,
        "| call | calls/s | p50 ms | p99 ms | errors | proxy CPU µs/call | proxy CPU, cores busy | \
         proxy wait for CPU µs/call | driver + fake CPU µs/call |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, samples) in
        [("unary `Chat`", &results.ceiling_unary), ("`StreamChat` (whole stream)", &results.ceiling_stream)]
    {
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.0} | {:.0} |",
            samples.rate(),
            percentile_ms(&samples.total, 0.50),
            percentile_ms(&samples.total, 0.99),
            samples.errors,
            per_call_us(samples.service_cpu, samples.calls()),
            samples.service_cpu.as_secs_f64() / samples.elapsed.as_secs_f64(),
            per_call_us(samples.service_wait, samples.calls()),
            per_call_us(samples.driver_cpu, samples.calls()),
        );
    }
    let _ = writeln!(out, "\nllm-proxy RSS at the end: {:.1} MiB.", results.proxy_rss_kib as f64 / 1024.0);
    let names = ["direct unary", "proxied unary", "direct stream", "proxied stream", "ceiling unary", "ceiling stream"];
    let all = results.paths.iter().chain([&results.ceiling_unary, &results.ceiling_stream]);
    for (name, samples) in names.iter().zip(all) {
        if let Some(error) = &samples.first_error {
            let _ = writeln!(out, "\nfirst {name} error: {error}");
        }
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter this bench ignores.
    let settings = LoadSettings::from_env(1000, 30);
    let load_before = load_average();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    settings.prepare_driver(DRIVER_CPU);
    let results = runtime.block_on(run(&settings));
    println!("{}", report(&settings, &results, &load_before));
    let all = results.paths.iter().chain([&results.ceiling_unary, &results.ceiling_stream]);
    let failed = all.map(|s| s.errors + s.dropped).sum::<usize>() > 0;
    // Ends the driver's own tasks (idle connections, the fake provider) without waiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if failed {
        eprintln!("bench: errors or dropped calls were recorded (see above)");
        std::process::exit(1);
    }
}
