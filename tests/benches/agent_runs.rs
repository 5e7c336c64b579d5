//! Loopback load driver for agent runs (issue 15, `docs/benchmarks.md`): one-step runs of an
//! agent without tools on the zero-latency scripted model, `POST /api/v1/agents/{id}/execute`
//! through the gateway → agent-orchestrator → llm-proxy + session-store, each a release
//! binary in a process of its own (mcp-broker too, as the orchestrator's peer), so the CPU
//! of every hop can be read from `/proc/<pid>/stat`. Memory stores first, then PostgreSQL
//! (a database created for the bench and dropped after it), then memory stores again with
//! the same services in one `agentmesh up` process (the single-binary deployment; no
//! per-hop split there).
//!
//! After a warm-up of `BENCH_WARMUP_RUNS` per client (and on PostgreSQL an `ANALYZE`, as
//! autovacuum runs in a deployment past its first minute):
//!
//! 1. One client, closed loop, `BENCH_RUNS` runs: p50/p90/p99/max.
//! 2. `BENCH_CLIENTS` clients, closed loop, `BENCH_SECONDS`: runs/s, p50/p99.
//!
//! Both with CPU per run of each process (and of the PostgreSQL backends serving the bench's
//! database). Each client executes on a session of its own: the agent's default `reject`
//! policy answers 409 to a second concurrent execute on one session.
//!
//! ```text
//! cargo build --release -p agentmesh -p agentmesh-gateway -p agentmesh-session-store \
//!   -p agentmesh-agent-orchestrator -p agentmesh-llm-proxy -p agentmesh-mcp-broker --bins
//! cargo bench -p agentmesh-e2e --bench agent_runs
//! ```
//!
//! Bounded: `BENCH_WARMUP_RUNS` (200) per client before measuring, `BENCH_RUNS` (2,000),
//! `BENCH_SECONDS` (10), `BENCH_CLIENTS` (8), `BENCH_STORES` (`memory,postgres,memory-up`;
//! also `postgres-up`, and `-up-loopback` for `agentmesh up --loopback-peers`) and a hard
//! overall timeout `BENCH_TIMEOUT_SECONDS` (600) after which every started process is killed
//! and the bench exits non-zero. `BENCH_SERVICE_ENV` adds settings to every binary (A/B
//! runs); `BENCH_KEEP_LOGS=1` keeps their logs. PostgreSQL is `AGENTMESH_TEST_DATABASE_URL`
//! (default the local `test` database's server).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_e2e::free_port;
use agentmesh_testkit::postgres::PgDatabase;
use serde_json::{Value, json};

use crate::common::{
    Call, Samples, Service, Timing, closed_loop, cpu_time, env_number, install_guards, load_average, own_cpu,
    per_call_us, percentile_ms, timed, wait_grpc_serving, wait_http_ok,
};

/// The static development key the clients authenticate with (`sk-` + ≥ 32 characters).
const KEY: &str = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz";
/// Shared by every binary (principal signing); ≥ 32 characters.
const SECRET: &str = "bench-secret-key-0123456789abcdefghijklmnopqrstuvwxyz";
/// What each run asks; the scripted model answers with it.
const MESSAGE: &str = "hello from the bench";

// ---------------------------------------------------------------------------------------
// Settings

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Memory,
    Postgres,
}

/// How the services run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deployment {
    /// Five processes, each hop's CPU read apart.
    Processes,
    /// One `agentmesh up` process (the single-binary deployment): the same services and
    /// gRPC calls, served within the process.
    Up,
    /// One `agentmesh up --loopback-peers` process: the services call each other over
    /// their loopback ports, as separate processes do.
    UpLoopback,
}

/// What is measured: the stores, and how the services run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Setup {
    store: Store,
    deployment: Deployment,
}

impl Setup {
    fn label(self) -> String {
        let store = format!("{:?}", self.store).to_lowercase();
        match self.deployment {
            Deployment::Processes => store,
            Deployment::Up => format!("{store} (agentmesh up)"),
            Deployment::UpLoopback => format!("{store} (agentmesh up --loopback-peers)"),
        }
    }

    fn one_process(self) -> bool {
        self.deployment != Deployment::Processes
    }
}

struct Settings {
    warmup_runs: usize,
    runs: usize,
    clients: usize,
    measure: Duration,
    timeout: Duration,
    setups: Vec<Setup>,
    machine_cpus: usize,
}

impl Settings {
    fn from_env() -> Self {
        let stores = std::env::var("BENCH_STORES").unwrap_or_else(|_| "memory,postgres,memory-up".to_owned());
        Self {
            warmup_runs: env_number("BENCH_WARMUP_RUNS", 200) as usize,
            runs: env_number("BENCH_RUNS", 2_000).max(1) as usize,
            clients: env_number("BENCH_CLIENTS", 8).max(1) as usize,
            measure: Duration::from_secs(env_number("BENCH_SECONDS", 10).max(1)),
            timeout: Duration::from_secs(env_number("BENCH_TIMEOUT_SECONDS", 600).max(10)),
            setups: stores
                .split(',')
                .map(|setup| {
                    let setup = setup.trim();
                    let (store, deployment) = if let Some(store) = setup.strip_suffix("-up-loopback") {
                        (store, Deployment::UpLoopback)
                    } else if let Some(store) = setup.strip_suffix("-up") {
                        (store, Deployment::Up)
                    } else {
                        (setup, Deployment::Processes)
                    };
                    let store = match store {
                        "memory" => Store::Memory,
                        "postgres" => Store::Postgres,
                        other => panic!("BENCH_STORES: {other:?} is not memory or postgres (with -up or -up-loopback)"),
                    };
                    Setup { store, deployment }
                })
                .collect(),
            machine_cpus: std::thread::available_parallelism().map_or(0, usize::from),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The mesh: five binaries on loopback

/// The processes whose CPU is charged to runs, in report order.
const HOPS: [&str; 5] = ["gateway", "agent-orchestrator", "session-store", "llm-proxy", "mcp-broker"];

struct Mesh {
    /// In the order of [`HOPS`]; the one `agentmesh up` process in that setup.
    services: Vec<Service>,
    base: String,
    /// The bench's own database (PostgreSQL only), dropped after the services.
    database: Option<PgDatabase>,
}

impl Mesh {
    async fn start(setup: Setup) -> Self {
        let database = match setup.store {
            Store::Memory => None,
            Store::Postgres => {
                Some(PgDatabase::create("bench_agent_runs").await.expect("PostgreSQL for the PostgreSQL half"))
            }
        };
        let ports: Vec<u16> = HOPS.iter().map(|_| free_port().unwrap()).collect();
        let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
        let limit = "1000000".to_owned();
        let mut env: Vec<(&str, String)> = vec![
            ("SECURITY_SECRET_KEY", SECRET.to_owned()),
            ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned()),
            ("PORT", ports[0].to_string()),
            ("AGENT_ORCHESTRATOR_ADDR", format!("127.0.0.1:{}", ports[1])),
            ("AGENT_ORCHESTRATOR_URL", url(1)),
            ("SESSION_STORE_ADDR", format!("127.0.0.1:{}", ports[2])),
            ("SESSION_STORE_URL", url(2)),
            ("LLM_PROXY_ADDR", format!("127.0.0.1:{}", ports[3])),
            ("LLM_PROXY_URL", url(3)),
            ("MCP_BROKER_ADDR", format!("127.0.0.1:{}", ports[4])),
            ("MCP_BROKER_URL", url(4)),
            ("LLM_SCRIPTED_DELAY", "0".to_owned()),
            ("RATE_LIMIT_API_PREMIUM_LIMIT", limit.clone()),
            ("RATE_LIMIT_EXECUTE_AGENT_LIMIT", limit.clone()),
            ("RATE_LIMIT_CREATE_SESSION_LIMIT", limit.clone()),
            ("RATE_LIMIT_LLM_REQUESTS_PER_MINUTE", limit.clone()),
            ("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", "1000000000".to_owned()),
            ("SECURITY_API_KEYS", format!("{KEY}=bench:premium")),
        ];
        if let Some(database) = &database {
            env.push(("USE_DATABASE", "true".to_owned()));
            env.push(("DB_URL", database.url().to_owned()));
        }
        if setup.one_process() {
            let base = format!("http://127.0.0.1:{}", ports[0]);
            let address = format!("127.0.0.1:{}", ports[0]);
            let mut args = vec!["up", "--http", &address];
            if setup.deployment == Deployment::UpLoopback {
                args.push("--loopback-peers");
            }
            let mut up = Service::spawn_with_args("agentmesh", &args, &env, 0);
            wait_http_ok(&mut up, &format!("{base}/api/v1/health")).await;
            return Self { services: vec![up], base, database };
        }
        // Peers first, so that each binary finds the ones it calls serving.
        let mut services: Vec<Option<Service>> = HOPS.iter().map(|_| None).collect();
        for i in [2, 3, 4, 1] {
            let binary = match i {
                1 => "agentmesh-agent-orchestrator",
                2 => "agentmesh-session-store",
                3 => "agentmesh-llm-proxy",
                _ => "agentmesh-mcp-broker",
            };
            let mut service = Service::spawn(binary, &env, 0);
            wait_grpc_serving(&mut service, ports[i]).await;
            services[i] = Some(service);
        }
        let mut gateway = Service::spawn("agentmesh-gateway", &env, 0);
        let base = format!("http://127.0.0.1:{}", ports[0]);
        wait_http_ok(&mut gateway, &format!("{base}/api/v1/health")).await;
        services[0] = Some(gateway);
        Self { services: services.into_iter().map(Option::unwrap).collect(), base, database }
    }

    fn check_alive(&mut self) {
        self.services.iter_mut().for_each(Service::check_alive);
    }

    /// CPU time of each hop, of the PostgreSQL backends serving the bench's database and of
    /// this driver, as one snapshot.
    fn cpu(&self) -> CpuSnapshot {
        CpuSnapshot {
            hops: self.services.iter().map(Service::cpu).collect(),
            backends: self.database.as_ref().map(|database| backend_cpu(database.name())).unwrap_or_default(),
            driver: own_cpu(),
        }
    }
}

/// CPU times at one moment.
struct CpuSnapshot {
    hops: Vec<Duration>,
    /// PostgreSQL backend pid → its CPU time.
    backends: HashMap<u32, Duration>,
    driver: Duration,
}

/// CPU used between two snapshots.
#[derive(Default)]
struct CpuUse {
    hops: Vec<Duration>,
    backends: Duration,
    driver: Duration,
}

impl CpuSnapshot {
    fn since(&self, before: &CpuSnapshot) -> CpuUse {
        CpuUse {
            hops: self.hops.iter().zip(&before.hops).map(|(after, before)| after.saturating_sub(*before)).collect(),
            backends: self
                .backends
                .iter()
                .map(|(pid, after)| after.saturating_sub(before.backends.get(pid).copied().unwrap_or_default()))
                .sum(),
            driver: self.driver.saturating_sub(before.driver),
        }
    }
}

/// Gathers the statistics of the bench's tables, as autovacuum does within a minute of a
/// table's growth in a running deployment. The services' tables were created empty when
/// the bench started; plans made from those statistics read a whole session's messages
/// (a bitmap scan and a sort) to list its last 50, which no deployment past its first
/// minute does. The measured loads start after this.
async fn analyze(database: &PgDatabase) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(database.url()).await.expect("the bench's database");
    sqlx::raw_sql("ANALYZE").execute(&mut conn).await.expect("ANALYZE of the bench's database");
}

/// CPU time of every PostgreSQL backend connected to `database`, by pid: their process
/// title is `postgres: <cluster>: <user> <database> <client> <state>` (the server runs on
/// this machine).
fn backend_cpu(database: &str) -> HashMap<u32, Duration> {
    let Ok(processes) = std::fs::read_dir("/proc") else { return HashMap::new() };
    processes
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|title| {
                let title = String::from_utf8_lossy(&title);
                title.starts_with("postgres: ") && title.split_whitespace().any(|word| word == database)
            })
        })
        .map(|pid| (pid, cpu_time(&format!("/proc/{pid}/stat"))))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The clients

/// The driver's HTTP/1.1 client, one keep-alive connection per client.
fn http_client(clients: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap()
}

async fn create(http: &reqwest::Client, url: String, body: Value) -> String {
    let response = http.post(url).bearer_auth(KEY).json(&body).send().await.unwrap();
    let status = response.status();
    let created: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("an id").to_owned()
}

/// One run on the session of client `n`: 200 and the model's answer, or the error.
fn execute_call(http: &reqwest::Client, base: &str, agent: &str, sessions: &[String]) -> Call {
    let url = format!("{base}/api/v1/agents/{agent}/execute");
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        sessions
            .iter()
            .map(|session| serde_json::to_vec(&json!({"session_id": session, "message": MESSAGE})).unwrap())
            .collect(),
    );
    let http = http.clone();
    Arc::new(move |client| {
        let (http, url, body) = (http.clone(), url.clone(), bodies[client % bodies.len()].clone());
        Box::pin(async move {
            let started = Instant::now();
            let response = http
                .post(&url)
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let answer: Value = response.json().await.map_err(|e| e.to_string())?;
            let content = answer["content"].as_str().unwrap_or_default();
            if status != 200 || content.is_empty() || answer["run_id"].as_str().is_none() {
                return Err(format!("{status}: {answer}"));
            }
            Ok(Timing::unary(started.elapsed()))
        })
    })
}

// ---------------------------------------------------------------------------------------
// Measurements

/// One load and the CPU it used.
struct Phase {
    samples: Samples,
    cpu: CpuUse,
    load_average: String,
}

struct StoreResults {
    setup: Setup,
    single: Phase,
    concurrent: Phase,
}

async fn measure(settings: &Settings, setup: Setup) -> StoreResults {
    let store = setup.label();
    eprintln!("bench: {store}: starting the mesh ...");
    let mut mesh = Mesh::start(setup).await;
    let http = http_client(settings.clients);
    let agent = create(
        &http,
        format!("{}/api/v1/agents", mesh.base),
        json!({"name": "bench", "description": "one step, no tools", "system_prompt": "Answer."}),
    )
    .await;
    let mut sessions = Vec::with_capacity(settings.clients);
    for n in 0..settings.clients {
        sessions.push(
            create(&http, format!("{}/api/v1/sessions", mesh.base), json!({"title": format!("bench {n}")})).await,
        );
    }
    let call = execute_call(&http, &mesh.base, &agent, &sessions);
    timed(&call, 0).await.unwrap_or_else(|error| panic!("the first run failed: {error}"));

    eprintln!("bench: {store}: warm-up, {} runs on each of {} clients ...", settings.warmup_runs, settings.clients);
    let warm = futures::future::join_all((0..settings.clients).map(|client| {
        let call = call.clone();
        async move {
            let mut samples = Samples::default();
            for _ in 0..settings.warmup_runs {
                samples.record(timed(&call, client).await, Duration::ZERO);
            }
            samples
        }
    }))
    .await;
    for samples in warm {
        assert_eq!(samples.errors, 0, "errors during warm-up: {:?}", samples.first_error);
    }
    mesh.check_alive();
    if let Some(database) = &mesh.database {
        analyze(database).await;
    }

    eprintln!("bench: {store}: one client, {} runs ...", settings.runs);
    let before = mesh.cpu();
    let started = Instant::now();
    let mut samples = Samples::default();
    for _ in 0..settings.runs {
        samples.record(timed(&call, 0).await, Duration::ZERO);
    }
    samples.elapsed = started.elapsed();
    let single = Phase { cpu: mesh.cpu().since(&before), samples, load_average: load_average() };
    mesh.check_alive();

    eprintln!("bench: {store}: {} clients for {:?} ...", settings.clients, settings.measure);
    let before = mesh.cpu();
    let samples = closed_loop(settings.clients, settings.measure, &call).await;
    let concurrent = Phase { cpu: mesh.cpu().since(&before), samples, load_average: load_average() };
    mesh.check_alive();

    let mut results = StoreResults { setup, single, concurrent };
    results.single.samples.sort();
    results.concurrent.samples.sort();
    results
}

// ---------------------------------------------------------------------------------------
// Report

fn latency_row(label: &str, phase: &Phase) -> String {
    let samples = &phase.samples;
    let ms = |q: f64| percentile_ms(&samples.total, q);
    let max = samples.total.last().map_or(f64::NAN, |&us| f64::from(us) / 1000.0);
    format!(
        "| {label} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
        samples.calls(),
        samples.errors,
        samples.rate(),
        ms(0.50),
        ms(0.90),
        ms(0.99),
        max,
        phase.load_average,
    )
}

fn cpu_rows(out: &mut String, label: &str, phase: &Phase, setup: Setup) {
    let runs = phase.samples.calls();
    let us = |cpu: Duration| per_call_us(cpu, runs);
    let mut total = Duration::ZERO;
    let _ = write!(out, "| {label} |");
    if setup.one_process() {
        // One process: no per-hop split.
        total = phase.cpu.hops.iter().sum();
        out.push_str(&" – |".repeat(HOPS.len()));
    } else {
        for cpu in &phase.cpu.hops {
            total += *cpu;
            let _ = write!(out, " {:.0} |", us(*cpu));
        }
    }
    if setup.store == Store::Postgres {
        total += phase.cpu.backends;
        let _ = write!(out, " {:.0} |", us(phase.cpu.backends));
    } else {
        out.push_str(" – |");
    }
    let _ = writeln!(out, " **{:.0}** | {:.0} |", us(total), us(phase.cpu.driver));
}

fn report(settings: &Settings, results: &[StoreResults], load_before: &str) -> String {
    let mut out = format!(
        "{} CPUs; 1-minute load average {load_before} before, {} after. Every process shares every CPU.\n\
         Warm-up {} runs per client; one client {} runs; {} clients for {:?}.\n\n",
        settings.machine_cpus,
        load_average(),
        settings.warmup_runs,
        settings.runs,
        settings.clients,
        settings.measure,
    );
    out.push_str("| stores, clients | runs | errors | runs/s | p50 ms | p90 ms | p99 ms | max ms | load avg after |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for result in results {
        let store = result.setup.label();
        out.push_str(&latency_row(&format!("{store}, 1"), &result.single));
        out.push_str(&latency_row(&format!("{store}, {}", settings.clients), &result.concurrent));
    }
    out.push_str("\nCPU per run, µs:\n\n| stores, clients |");
    for hop in HOPS {
        let _ = write!(out, " {hop} |");
    }
    out.push_str(" PostgreSQL backends | total | driver |\n|---|");
    out.push_str(&"---|".repeat(HOPS.len() + 3));
    out.push('\n');
    for result in results {
        let store = result.setup.label();
        cpu_rows(&mut out, &format!("{store}, 1"), &result.single, result.setup);
        cpu_rows(&mut out, &format!("{store}, {}", settings.clients), &result.concurrent, result.setup);
    }
    for result in results {
        for phase in [&result.single, &result.concurrent] {
            if let Some(error) = &phase.samples.first_error {
                let _ = writeln!(out, "\nFirst error ({}): {error}", result.setup.label());
            }
        }
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter this bench ignores.
    let settings = Settings::from_env();
    let load_before = load_average();
    install_guards(settings.timeout);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let results: Vec<StoreResults> =
        settings.setups.iter().map(|&setup| runtime.block_on(measure(&settings, setup))).collect();
    println!("{}", report(&settings, &results, &load_before));
    let failed = results.iter().map(|r| r.single.samples.errors + r.concurrent.samples.errors).sum::<usize>() > 0;
    runtime.shutdown_timeout(Duration::from_secs(1));
    if failed {
        eprintln!("bench: errors were recorded (see above)");
        std::process::exit(1);
    }
}
