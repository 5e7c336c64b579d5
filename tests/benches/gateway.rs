//! Loopback load driver for the gateway (issue 5, `docs/benchmarks.md`), against the real
//! release binaries:
//!
//! 1. GET one session, through the gateway's REST API (reqwest, HTTP/1.1 keep-alive) and by
//!    gRPC directly to session-store (tonic, signed principal), for the same duration with
//!    the same number of concurrent workers: requests/s, p50/p99/max, errors, the ratio.
//! 2. Resident memory of one gateway holding many idle SSE streams (default 10,000) opened
//!    over a handful of HTTP/2 connections, against a fake orchestrator in this process
//!    whose `StreamRun` sends one event and never ends.
//!
//! ```text
//! cargo build --release --bins && cargo bench -p agentmesh-e2e --bench gateway
//! ```
//!
//! Bounded: `BENCH_WARMUP_SECONDS` (3) + `BENCH_SECONDS` (10) per measurement and a hard
//! overall timeout `BENCH_TIMEOUT_SECONDS` (600) after which every started process is
//! killed and the bench exits non-zero. Also `BENCH_CONCURRENCY` (32 workers),
//! `BENCH_GRPC_CHANNELS` (4 HTTP/2 connections to session-store), `BENCH_ROUNDS` (5
//! alternating slices per path, so both paths see the same background load),
//! `BENCH_STREAMS` (10,000), `BENCH_SSE_CONNECTIONS` (64 HTTP/2 connections to the
//! gateway), `BENCH_SSE_OPEN_CONCURRENCY` (64 streams opening at once) and
//! `BENCH_BREAKDOWN=1` (two reference paths through the gateway: `/api/v1/health` and
//! native gRPC passthrough), `BENCH_SERVICE_ENV` (extra `NAME=value` settings for every
//! binary, for A/B runs) and `BENCH_PIN=1` (the gateway on CPU 1, session-store and the
//! driver on CPU 0). Every process started here is killed when the bench ends, also on
//! panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentmesh_e2e::free_port;
use agentmesh_proto::agentmesh::agent::v1 as agent;
use agentmesh_proto::agentmesh::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
use agentmesh_proto::agentmesh::session::v1::GetSessionRequest;
use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_runtime::ServiceName;
use agentmesh_runtime::auth::{ACTOR_HEADER, PRINCIPAL_HEADER, Principal, Tier};
use agentmesh_testkit::identity;
use futures::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::common::{
    Service, cpu_time, env_number, install_guards, load_average, machine_summary, micros, percentile_ms, pin_self,
    pinned, wait_grpc_serving, wait_http_ok,
};

/// Shared by the gateway and session-store (principal signing); ≥ 32 characters.
const SECRET: &str = "bench-secret-key-0123456789abcdefghijklmnopqrstuvwxyz";
/// The static development key the driver authenticates with (`sk-` + ≥ 32 characters).
const KEY: &str = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz";
/// The user `SECURITY_API_KEYS` maps [`KEY`] to.
const USER: &str = "bench";

// ---------------------------------------------------------------------------------------
// Settings

struct Settings {
    warmup: Duration,
    measure: Duration,
    timeout: Duration,
    concurrency: usize,
    grpc_channels: usize,
    streams: usize,
    sse_connections: usize,
    sse_open_concurrency: usize,
    breakdown: bool,
    rounds: usize,
    /// CPUs of the machine (not of this process, which `BENCH_PIN` narrows).
    machine_cpus: usize,
}

impl Settings {
    fn from_env() -> Self {
        let settings = Self {
            warmup: Duration::from_secs(env_number("BENCH_WARMUP_SECONDS", 3)),
            measure: Duration::from_secs(env_number("BENCH_SECONDS", 10).max(1)),
            timeout: Duration::from_secs(env_number("BENCH_TIMEOUT_SECONDS", 600).max(10)),
            concurrency: env_number("BENCH_CONCURRENCY", 32).max(1) as usize,
            grpc_channels: env_number("BENCH_GRPC_CHANNELS", 4).max(1) as usize,
            streams: env_number("BENCH_STREAMS", 10_000).max(1) as usize,
            sse_connections: env_number("BENCH_SSE_CONNECTIONS", 64).max(1) as usize,
            // Paces the ramp like a client library would; the gateway itself queues bursts
            // of opens for up to 1 s at its bulkhead (`BULKHEAD_INTERNAL_*`).
            sse_open_concurrency: env_number("BENCH_SSE_OPEN_CONCURRENCY", 64).max(1) as usize,
            breakdown: env_number("BENCH_BREAKDOWN", 0) != 0,
            rounds: env_number("BENCH_ROUNDS", 5).max(1) as usize,
            // Read before `BENCH_PIN` narrows this process to one CPU.
            machine_cpus: std::thread::available_parallelism().map_or(0, usize::from),
        };
        // The gateway's HTTP/2 server allows 200 concurrent streams per connection (hyper's
        // default); more would queue in the client instead of opening.
        assert!(
            settings.streams.div_ceil(settings.sse_connections) <= 200,
            "BENCH_STREAMS / BENCH_SSE_CONNECTIONS must be ≤ 200 (the gateway's streams per HTTP/2 connection)"
        );
        settings
    }
}

/// Environment every binary gets: quiet logs, the shared secret.
fn base_env() -> Vec<(&'static str, String)> {
    vec![("SECURITY_SECRET_KEY", SECRET.to_owned()), ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned())]
}

/// The CPU the gateway runs on when pinned.
const GATEWAY_CPU: usize = 1;
/// The CPU of session-store and of this driver when pinned.
const BACKEND_CPU: usize = 0;

/// A gateway on `port` with the bench key, rate limiting off, and `extra` variables.
fn spawn_gateway(port: u16, extra: &[(&'static str, String)]) -> Service {
    let mut env = base_env();
    env.push(("PORT", port.to_string()));
    env.push(("SECURITY_API_KEYS", format!("{KEY}={USER}:premium")));
    // The premium tier's 5,000/min would otherwise cap both measurements.
    env.push(("FEATURE_ENABLE_RATE_LIMITING", "false".to_owned()));
    env.extend(extra.iter().cloned());
    Service::spawn("agentmesh-gateway", &env, GATEWAY_CPU)
}

// ---------------------------------------------------------------------------------------
// Closed-loop load

type CallFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Call = Arc<dyn Fn(usize) -> CallFuture + Send + Sync>;

/// What a fixed-duration run measured.
struct Load {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    /// Latencies of successful calls, sorted, in microseconds.
    latencies: Vec<u32>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        percentile_ms(&self.latencies, q)
    }

    fn max_ms(&self) -> f64 {
        self.latencies.last().map_or(f64::NAN, |&us| f64::from(us) / 1000.0)
    }
}

/// `workers` concurrent loops calling `call` back to back for `duration`.
async fn drive(workers: usize, duration: Duration, call: &Call) -> Load {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(64 * 1024);
                let (mut errors, mut first_error) = (0usize, None);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match call(worker).await {
                        Ok(()) => latencies.push(micros(sent.elapsed())),
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert(error);
                        }
                    }
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    let mut load = Load { ok: 0, errors: 0, first_error: None, elapsed: Duration::ZERO, latencies: Vec::new() };
    for task in tasks {
        let (latencies, errors, first_error) = task.await.expect("a load worker panicked");
        load.latencies.extend(latencies);
        load.errors += errors;
        if load.first_error.is_none() {
            load.first_error = first_error;
        }
    }
    load.elapsed = started.elapsed();
    load.ok = load.latencies.len();
    load.latencies.sort_unstable();
    load
}

/// CPU seconds used by each process during a run.
struct CpuUse {
    gateway: Duration,
    store: Duration,
    driver: Duration,
}

/// Warm-up of each path (discarded, but its errors count), then the measured runs with CPU
/// accounting. The measured time of each path is cut into `settings.rounds` slices taken in
/// turn (A B A B ...), so every path sees the same background load on a shared machine.
async fn measure(settings: &Settings, calls: &[&Call], gateway: &Service, store: &Service) -> Vec<(Load, CpuUse)> {
    for call in calls {
        let warm = drive(settings.concurrency, settings.warmup, call).await;
        assert_eq!(warm.errors, 0, "errors during warm-up: {:?}", warm.first_error);
    }
    let mut results: Vec<(Load, CpuUse)> = calls
        .iter()
        .map(|_| {
            let load = Load { ok: 0, errors: 0, first_error: None, elapsed: Duration::ZERO, latencies: Vec::new() };
            (load, CpuUse { gateway: Duration::ZERO, store: Duration::ZERO, driver: Duration::ZERO })
        })
        .collect();
    let slice = settings.measure / u32::try_from(settings.rounds).unwrap_or(1);
    for _ in 0..settings.rounds {
        for (call, (total, cpu)) in calls.iter().zip(&mut results) {
            let before = (gateway.cpu(), store.cpu(), cpu_time("/proc/self/stat"));
            let load = drive(settings.concurrency, slice, call).await;
            let after = (gateway.cpu(), store.cpu(), cpu_time("/proc/self/stat"));
            cpu.gateway += after.0.saturating_sub(before.0);
            cpu.store += after.1.saturating_sub(before.1);
            cpu.driver += after.2.saturating_sub(before.2);
            total.ok += load.ok;
            total.errors += load.errors;
            total.elapsed += load.elapsed;
            total.latencies.extend(load.latencies);
            if total.first_error.is_none() {
                total.first_error = load.first_error;
            }
        }
    }
    for (total, _) in &mut results {
        total.latencies.sort_unstable();
    }
    results
}

// ---------------------------------------------------------------------------------------
// 1. GET one session: gateway REST vs direct gRPC

struct Unary {
    gateway: Load,
    gateway_cpu: CpuUse,
    direct: Load,
    direct_cpu: CpuUse,
    /// `BENCH_BREAKDOWN=1`: reference paths through the same gateway.
    breakdown: Vec<(&'static str, Load, CpuUse)>,
}

async fn get_one_session(settings: &Settings) -> Unary {
    let (store_port, gateway_port) = (free_port().unwrap(), free_port().unwrap());
    let mut env = base_env();
    env.push(("SESSION_STORE_ADDR", format!("127.0.0.1:{store_port}")));
    let mut store = Service::spawn("agentmesh-session-store", &env, BACKEND_CPU);
    wait_grpc_serving(&mut store, store_port).await;
    let store_url = format!("http://127.0.0.1:{store_port}");
    let mut gateway = spawn_gateway(gateway_port, &[("SESSION_STORE_URL", store_url.clone())]);
    let base = format!("http://127.0.0.1:{gateway_port}");
    wait_http_ok(&mut gateway, &format!("{base}/api/v1/health")).await;

    // HTTP/1.1 with keep-alive: one pooled connection per concurrent worker.
    let http = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(settings.concurrency)
        .build()
        .unwrap();
    let created = http
        .post(format!("{base}/api/v1/sessions"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"title": "bench", "metadata": {"purpose": "load test"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "create session through the gateway");
    let session: serde_json::Value = created.json().await.unwrap();
    let id = session["id"].as_str().expect("a session id").to_owned();

    let url = format!("{base}/api/v1/sessions/{id}");
    let gateway_call: Call = {
        let (http, url, id) = (http.clone(), url.clone(), id.clone());
        Arc::new(move |_worker| {
            let (http, url, id) = (http.clone(), url.clone(), id.clone());
            Box::pin(async move {
                let response = http.get(&url).bearer_auth(KEY).send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                // A cheap check that this is the session and not an error body.
                if status != 200 || !body.windows(id.len()).any(|w| w == id.as_bytes()) {
                    return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
                }
                Ok(())
            })
        })
    };

    // A principal exactly as the gateway forwards it for KEY (static keys: no tenant, `*`).
    let principal =
        Principal { user_id: USER.into(), tenant_id: String::new(), tier: Tier::Premium, scopes: vec!["*".into()] };
    // Signed with the gateway's development key, as the benchmarked gateway signs it, and
    // long-lived enough for the run (the verifier caches it after the first call).
    let claims = identity::principal_claims(ServiceName::Gateway, &principal, 300);
    let signed: MetadataValue<_> = identity::principal_signed_by(ServiceName::Gateway, &claims).parse().unwrap();
    let actor: MetadataValue<_> =
        identity::actor_token(ServiceName::Gateway, ServiceName::SessionStore).parse().unwrap();
    let mut channels = Vec::new();
    for _ in 0..settings.grpc_channels {
        // Separate endpoints connect separately: one HTTP/2 connection each.
        channels.push(Endpoint::from_shared(store_url.clone()).unwrap().tcp_nodelay(true).connect().await.unwrap());
    }
    let direct_call: Call = {
        let (channels, id) = (Arc::new(channels), id.clone());
        Arc::new(move |worker| {
            let channel: Channel = channels[worker % channels.len()].clone();
            let (signed, actor, id) = (signed.clone(), actor.clone(), id.clone());
            Box::pin(async move {
                let mut request = tonic::Request::new(GetSessionRequest { session_id: id.clone() });
                request.metadata_mut().insert(PRINCIPAL_HEADER, signed);
                request.metadata_mut().insert(ACTOR_HEADER, actor);
                let response =
                    SessionServiceClient::new(channel).get_session(request).await.map_err(|s| s.to_string())?;
                match response.into_inner().session {
                    Some(session) if session.id == id => Ok(()),
                    other => Err(format!("unexpected response {other:?}")),
                }
            })
        })
    };

    // Both paths must work before anything is measured.
    gateway_call(0).await.expect("GET through the gateway");
    direct_call(0).await.expect("GetSession directly");

    let references = if settings.breakdown { reference_calls(settings, &http, &base, &id).await } else { Vec::new() };
    for (name, call) in &references {
        call(0).await.unwrap_or_else(|error| panic!("{name}: {error}"));
    }
    let mut calls = vec![&gateway_call, &direct_call];
    calls.extend(references.iter().map(|(_, call)| call));
    let mut results = measure(settings, &calls, &gateway, &store).await.into_iter();
    let (gateway_load, gateway_cpu) = results.next().unwrap();
    let (direct_load, direct_cpu) = results.next().unwrap();
    let breakdown = references.iter().map(|(name, _)| *name).zip(results).map(|(n, (l, c))| (n, l, c)).collect();
    gateway.check_alive();
    store.check_alive();
    Unary { gateway: gateway_load, gateway_cpu, direct: direct_load, direct_cpu, breakdown }
}

/// Where the gateway's time goes, by elimination: its REST stack answering from an
/// in-process service (no hop), and native gRPC through it to session-store
/// (authentication and the hop, no JSON transcoding).
async fn reference_calls(
    settings: &Settings,
    http: &reqwest::Client,
    base: &str,
    id: &str,
) -> Vec<(&'static str, Call)> {
    let live: Call = {
        let (http, url) = (http.clone(), format!("{base}/api/v1/health"));
        Arc::new(move |_worker| {
            let (http, url) = (http.clone(), url.clone());
            Box::pin(async move {
                let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                response.bytes().await.map_err(|e| e.to_string())?;
                if status == 200 { Ok(()) } else { Err(status.to_string()) }
            })
        })
    };
    let mut channels = Vec::new();
    for _ in 0..settings.grpc_channels {
        channels.push(Endpoint::from_shared(base.to_owned()).unwrap().tcp_nodelay(true).connect().await.unwrap());
    }
    let bearer: MetadataValue<_> = format!("Bearer {KEY}").parse().unwrap();
    let passthrough: Call = {
        let (channels, id) = (Arc::new(channels), id.to_owned());
        Arc::new(move |worker| {
            let channel: Channel = channels[worker % channels.len()].clone();
            let (bearer, id) = (bearer.clone(), id.clone());
            Box::pin(async move {
                let mut request = tonic::Request::new(GetSessionRequest { session_id: id.clone() });
                request.metadata_mut().insert("authorization", bearer);
                let response =
                    SessionServiceClient::new(channel).get_session(request).await.map_err(|s| s.to_string())?;
                match response.into_inner().session {
                    Some(session) if session.id == id => Ok(()),
                    other => Err(format!("unexpected response {other:?}")),
                }
            })
        })
    };
    vec![
        ("gateway REST `GET /api/v1/health` (in-process, no auth, no hop)", live),
        ("gateway gRPC passthrough `GetSession` (API key, hop, no JSON)", passthrough),
    ]
}

// ---------------------------------------------------------------------------------------
// 2. Idle SSE streams: a fake orchestrator whose runs never end

/// Sends one `run_started` event per `StreamRun`, then keeps the stream open forever;
/// counts the streams still open (dropped when the gateway cancels them).
struct EndlessRuns {
    open: Arc<AtomicUsize>,
}

/// Decrements the open-stream count when the stream it lives in is dropped.
struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type RunStream = Pin<Box<dyn Stream<Item = Result<agent::StreamRunResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for EndlessRuns {
    async fn stream_run(
        &self,
        request: tonic::Request<agent::StreamRunRequest>,
    ) -> Result<tonic::Response<RunStream>, tonic::Status> {
        let run_id = request.into_inner().run_id;
        self.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenStream(self.open.clone());
        let started = agent::RunStarted { agent_id: "bench".into(), session_id: "bench".into(), ..Default::default() };
        let event = agent::RunEvent {
            run_id,
            sequence: 1,
            time: None,
            kind: Some(agent::run_event::Kind::RunStarted(started)),
        };
        let first = agent::StreamRunResponse { event: Some(event) };
        let stream = futures::stream::iter([Ok(first)]).chain(futures::stream::pending()).map(move |item| {
            let _alive = &guard;
            item
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

struct Streams {
    count: usize,
    connections: usize,
    baseline_kib: u64,
    loaded_kib: u64,
    after_close_kib: u64,
    open_seconds: f64,
    gateway_fds: usize,
    upstream_open: usize,
    upstream_after_close: usize,
    failures: usize,
    first_failure: Option<String>,
    ended_early: usize,
    healthy_after: bool,
}

/// Opens one SSE stream, waits for its first event, reports, then holds it until `close`.
async fn hold_stream(
    client: reqwest::Client,
    url: String,
    opening: Arc<tokio::sync::Semaphore>,
    opened: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    mut close: tokio::sync::watch::Receiver<bool>,
) -> bool {
    // Held while opening only: paces the ramp, not the number of open streams.
    let permit = opening.acquire_owned().await.expect("the semaphore stays open");
    let response = match client.get(&url).bearer_auth(KEY).send().await {
        Ok(response) if response.status() == 200 => response,
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let _ = opened.send(Err(format!("{status}: {body}")));
            return false;
        }
        Err(error) => {
            let _ = opened.send(Err(error.to_string()));
            return false;
        }
    };
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                seen.extend_from_slice(&chunk);
                let text = String::from_utf8_lossy(&seen);
                if text.contains("event: run_started") && text.contains("\n\n") {
                    break;
                }
            }
            other => {
                let _ = opened.send(Err(format!("stream ended before its first event: {other:?}")));
                return false;
            }
        }
    }
    drop(permit);
    let _ = opened.send(Ok(()));
    // Idle until told to close; heartbeat comments are read and ignored.
    loop {
        tokio::select! {
            _ = close.changed() => return true,
            chunk = body.next() => match chunk {
                Some(Ok(_)) => {}
                _ => return false,
            },
        }
    }
}

async fn idle_streams(settings: &Settings) -> Streams {
    let open = Arc::new(AtomicUsize::new(0));
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let orchestrator_url = format!("http://{}", incoming.local_addr().unwrap());
    let limit = u32::try_from(settings.streams * 2).unwrap_or(u32::MAX);
    let server = tonic::transport::Server::builder()
        // All of the gateway's streams arrive on one HTTP/2 connection.
        .max_concurrent_streams(limit)
        .add_service(AgentServiceServer::new(EndlessRuns { open: open.clone() }))
        .serve_with_incoming(incoming);
    let server = tokio::spawn(server);

    let port = free_port().unwrap();
    let mut gateway = spawn_gateway(port, &[("AGENT_ORCHESTRATOR_URL", orchestrator_url)]);
    let base = format!("http://127.0.0.1:{port}");
    wait_http_ok(&mut gateway, &format!("{base}/api/v1/health")).await;

    let clients: Vec<reqwest::Client> = (0..settings.sse_connections)
        .map(|_| reqwest::Client::builder().http2_prior_knowledge().no_proxy().tcp_nodelay(true).build().unwrap())
        .collect();
    let url = |i: usize| format!("{base}/api/v1/runs/0193a3f0-0000-7000-8000-{i:012x}/stream");

    // One stream opened and closed first, so the baseline includes the upstream connection
    // and everything initialised on first use.
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (close, close_rx) = tokio::sync::watch::channel(false);
        let opening = Arc::new(tokio::sync::Semaphore::new(1));
        let task = tokio::spawn(hold_stream(clients[0].clone(), url(usize::MAX >> 16), opening, tx, close_rx));
        rx.recv().await.unwrap().expect("one SSE stream through the gateway");
        close.send(true).unwrap();
        task.await.unwrap();
        wait_until(Duration::from_secs(10), || open.load(Ordering::SeqCst) == 0).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline_kib = gateway.rss_kib();

    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel();
    let (close, close_rx) = tokio::sync::watch::channel(false);
    let opening = Arc::new(tokio::sync::Semaphore::new(settings.sse_open_concurrency));
    let started = Instant::now();
    let tasks: Vec<_> = (0..settings.streams)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            tokio::spawn(hold_stream(client, url(i), opening.clone(), opened_tx.clone(), close_rx.clone()))
        })
        .collect();
    drop(opened_tx);
    let (mut ok, mut failures, mut first_failure) = (0usize, 0usize, None);
    let open_deadline = Instant::now() + Duration::from_secs(180);
    while ok + failures < settings.streams {
        match tokio::time::timeout_at(open_deadline.into(), opened_rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(error))) => {
                failures += 1;
                first_failure.get_or_insert(error);
            }
            Ok(None) => break,
            Err(_) => {
                failures += settings.streams - ok - failures;
                first_failure.get_or_insert_with(|| "timed out waiting for first events".to_owned());
                break;
            }
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    // Let allocator and buffers settle, then take the largest of a few samples.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut loaded_kib = 0;
    for _ in 0..3 {
        gateway.check_alive();
        loaded_kib = loaded_kib.max(gateway.rss_kib());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let gateway_fds = gateway.open_fds();
    let upstream_open = open.load(Ordering::SeqCst);

    close.send(true).unwrap();
    let mut ended_early = 0usize;
    for task in tasks {
        if !task.await.unwrap() {
            ended_early += 1;
        }
    }
    // Streams that failed to open did not end early; they failed.
    let ended_early = ended_early.saturating_sub(failures);
    drop(clients);
    wait_until(Duration::from_secs(30), || open.load(Ordering::SeqCst) == 0).await;
    let upstream_after_close = open.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    gateway.check_alive();
    let after_close_kib = gateway.rss_kib();
    let health = reqwest::Client::builder().no_proxy().build().unwrap();
    let healthy_after = health.get(format!("{base}/api/v1/health")).send().await.is_ok_and(|r| r.status() == 200);
    server.abort();
    Streams {
        count: ok,
        connections: settings.sse_connections,
        baseline_kib,
        loaded_kib,
        after_close_kib,
        open_seconds,
        gateway_fds,
        upstream_open,
        upstream_after_close,
        failures,
        first_failure,
        ended_early,
        healthy_after,
    }
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Report

fn cpu_per_request_us(cpu: Duration, load: &Load) -> f64 {
    cpu.as_secs_f64() * 1e6 / load.ok.max(1) as f64
}

fn report(settings: &Settings, unary: &Unary, streams: &Streams, load_before: &str) -> String {
    let mut out = String::new();
    let ratio = unary.gateway.rps() / unary.direct.rps();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let _ = writeln!(out, "\n## Gateway benchmark\n");
    let _ = writeln!(
        out,
        "{}",
        machine_summary(settings.machine_cpus, load_before, || format!(
            "Pinned: gateway on CPU {GATEWAY_CPU}; session-store and the load driver on CPU {BACKEND_CPU}."
        ))
    );
    let _ = writeln!(
        out,
        "GET one session, {} concurrent workers, {} s warm-up + {} s measured per path in {} alternating slices; \
         gateway→REST over HTTP/1.1 keep-alive, direct→gRPC over {} HTTP/2 connections; rate limiting off.\n",
        settings.concurrency,
        settings.warmup.as_secs(),
        settings.measure.as_secs(),
        settings.rounds,
        settings.grpc_channels
    );
    let _ = writeln!(
        out,
        "| path | requests | req/s | p50 ms | p99 ms | max ms | errors | CPU µs/req gateway · store · driver |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    let rows = [
        ("gateway REST `GET /api/v1/sessions/{id}`", &unary.gateway, &unary.gateway_cpu),
        ("direct gRPC `SessionService/GetSession`", &unary.direct, &unary.direct_cpu),
    ];
    let extra = unary.breakdown.iter().map(|(name, load, cpu)| (*name, load, cpu));
    for (name, load, cpu) in rows.into_iter().chain(extra) {
        let _ = writeln!(
            out,
            "| {name} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.0} · {:.0} · {:.0} |",
            load.ok,
            load.rps(),
            load.percentile_ms(0.50),
            load.percentile_ms(0.99),
            load.max_ms(),
            load.errors,
            cpu_per_request_us(cpu.gateway, load),
            cpu_per_request_us(cpu.store, load),
            cpu_per_request_us(cpu.driver, load),
        );
    }
    let _ = writeln!(out, "\nThroughput ratio gateway / direct: **{ratio:.2}×** (goal ≥ 0.5×).\n");
    let per_stream = (streams.loaded_kib.saturating_sub(streams.baseline_kib)) as f64 / streams.count.max(1) as f64;
    let _ = writeln!(
        out,
        "Idle SSE streams ({} requested over {} HTTP/2 connections, at most {} opening at once):\n",
        settings.streams, streams.connections, settings.sse_open_concurrency
    );
    let _ = writeln!(out, "| measure | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| streams open (first event received) | {} |", streams.count);
    let _ = writeln!(out, "| failed to open | {} |", streams.failures);
    let _ = writeln!(out, "| time to open all | {:.1} s |", streams.open_seconds);
    let _ = writeln!(out, "| gateway RSS idle (baseline) | {:.1} MiB |", mib(streams.baseline_kib));
    let _ = writeln!(out, "| gateway RSS with the streams | {:.1} MiB |", mib(streams.loaded_kib));
    let _ = writeln!(out, "| per stream | {per_stream:.1} KiB |");
    let _ = writeln!(out, "| gateway RSS after closing them | {:.1} MiB |", mib(streams.after_close_kib));
    let _ = writeln!(out, "| gateway open fds while holding them | {} |", streams.gateway_fds);
    let _ = writeln!(out, "| upstream streams open at the fake orchestrator | {} |", streams.upstream_open);
    let _ = writeln!(out, "| upstream streams left open after closing | {} |", streams.upstream_after_close);
    let _ = writeln!(out, "| streams ended early by the gateway | {} |", streams.ended_early);
    let _ = writeln!(out, "| gateway healthy afterwards | {} |", if streams.healthy_after { "yes" } else { "NO" });
    let _ = writeln!(
        out,
        "\nGoal ≤ 1 GiB with {} streams: **{}**.",
        settings.streams,
        if streams.loaded_kib <= 1024 * 1024 && streams.count == settings.streams { "met" } else { "NOT met" }
    );
    for (what, error) in [
        ("gateway GET", &unary.gateway.first_error),
        ("direct GetSession", &unary.direct.first_error),
        ("SSE open", &streams.first_failure),
    ] {
        if let Some(error) = error {
            let _ = writeln!(out, "\nfirst {what} error: {error}");
        }
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter this bench ignores.
    let settings = Settings::from_env();
    install_guards(settings.timeout);
    let load_before = load_average();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if pinned() {
        pin_self(BACKEND_CPU);
    }
    let (unary, streams) = runtime.block_on(async {
        eprintln!("bench: GET one session, gateway vs direct ...");
        let unary = get_one_session(&settings).await;
        eprintln!("bench: {} idle SSE streams ...", settings.streams);
        let streams = idle_streams(&settings).await;
        (unary, streams)
    });
    println!("{}", report(&settings, &unary, &streams, &load_before));
    let breakdown_errors: usize = unary.breakdown.iter().map(|(_, load, _)| load.errors).sum();
    let failed = unary.gateway.errors + unary.direct.errors + breakdown_errors + streams.failures + streams.ended_early
        > 0
        || !streams.healthy_after
        || streams.upstream_after_close > 0;
    // Ends the driver's own tasks (idle connections) without waiting on them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if failed {
        eprintln!("bench: errors were recorded (see above)");
        std::process::exit(1);
    }
}
