//! Loopback benchmark of mcp-broker's `InvokeTool` (`docs/benchmarks.md`): the latency the
//! broker adds over calling the same MCP server directly, its throughput ceiling and its
//! CPU per call, against the real release binary.
//!
//! The MCP server is served by this process with rmcp (streamable HTTP, sessions kept, as
//! MCP servers commonly run; `TCP_NODELAY`, as Node's HTTP server sets it): one tool, `echo`, whose input schema requires a string
//! `message` and which answers `Echo: <message>` at once, with no artificial delay, so every
//! difference between the paths is the broker's own cost (and that of its client stack).
//!
//! 1. **Added latency**, open loop: each path gets `BENCH_RATE` (500) calls/s on a fixed
//!    timetable, and latency counts from each call's *scheduled* send time, so a stalled
//!    driver or broker cannot hide its queue (no coordinated omission). Two paths: direct
//!    (an rmcp client holding one session, as the broker does, calling `tools/call`) and
//!    through mcp-broker (tonic over HTTP/2, `InvokeTool` with the agent-orchestrator's
//!    principal and actor tokens; the broker then calls the tool on its own session with the
//!    server). Each path is measured for `BENCH_SECONDS` (30) after `BENCH_WARMUP_SECONDS`
//!    (3), cut into `BENCH_ROUNDS` (3) slices taken in turn, so both paths see the same
//!    background load.
//! 2. **Ceiling**: `BENCH_CONCURRENCY` (64) closed-loop workers through the broker for
//!    `BENCH_CEILING_SECONDS` (10): calls/s and CPU per call.
//!
//! ```text
//! cargo build --release -p agentmesh-mcp-broker && cargo bench -p agentmesh-e2e --bench mcp_broker
//! ```
//!
//! Other knobs: `BENCH_MAX_IN_FLIGHT` (512: a call falling due while that many are in
//! flight is dropped and counted), `BENCH_GRPC_CHANNELS` (4 HTTP/2 connections to the
//! broker), `BENCH_TIMEOUT_SECONDS` (600: hard overall timeout, after which every started
//! process is killed and the bench exits non-zero), `BENCH_SERVICE_ENV` (extra
//! `NAME=value` settings for the broker), `BENCH_PIN=1` (mcp-broker on CPU 1; this driver
//! and the MCP server on CPU 0), `BENCH_NICE` (a nice value for the broker and this
//! driver, for example -10 as root) and `BENCH_REALTIME=1` (both in the real-time class,
//! as root: other work on a shared machine then preempts neither path).
//!
//! Prints a Markdown summary; exits non-zero when any call failed or was dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_e2e::free_port;
use agentmesh_proto::agentmesh::common::v1::content_part;
use agentmesh_proto::agentmesh::mcp::v1 as pb;
use agentmesh_proto::agentmesh::mcp::v1::mcp_service_client::McpServiceClient;
use agentmesh_proto::json::object_to_struct;
use agentmesh_runtime::ServiceName;
use agentmesh_runtime::auth::Principal;
use agentmesh_testkit::identity;
use axum::serve::ListenerExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation, JsonObject, ListToolsResult, PaginatedRequestParams, ProtocolVersion, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpClientTransport, StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::common::{
    Call, LoadSettings, Samples, Service, Timing, Tokens, all_lags, closed_loop, grpc_channels, load_average,
    machine_summary, measure_paths, per_call_us, percentile_ms, wait_grpc_serving, with_cpu,
};

/// The CPU mcp-broker runs on when pinned.
const BROKER_CPU: usize = 1;
/// The CPU of this driver and the MCP server when pinned.
const DRIVER_CPU: usize = 0;
/// The MCP server's one tool.
const TOOL: &str = "echo";
/// The `message` every call sends: a tool argument of a realistic size.
const MESSAGE: &str = "Look up the three most recent invoices of customer 4711 and summarise their \
    totals, due dates and payment status in one short paragraph.";
/// The MCP protocol version both clients ask for (the broker's, `connection::PROTOCOL_VERSION`).
const PROTOCOL: ProtocolVersion = ProtocolVersion::V_2025_06_18;

// ---------------------------------------------------------------------------------------
// The MCP server

/// An MCP server with one tool, `echo`, that answers at once.
#[derive(Clone)]
struct EchoServer {
    /// The `echo` tool as `tools/list` shows it.
    tool: Tool,
}

impl EchoServer {
    fn new() -> Self {
        let schema = json!({
            "type": "object",
            "properties": {"message": {"type": "string", "maxLength": 4096}},
            "required": ["message"],
            "additionalProperties": false
        });
        let Value::Object(schema) = schema else { unreachable!() };
        Self { tool: Tool::new(TOOL, "Answers `Echo: <message>`.", Arc::new(schema)) }
    }
}

impl ServerHandler for EchoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agentmesh-bench-echo", "1.0.0"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![self.tool.clone()]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != TOOL {
            return Err(ErrorData::invalid_params(format!("no tool {:?}", request.name), None));
        }
        let message = request.arguments.as_ref().and_then(|arguments| arguments.get("message")).and_then(Value::as_str);
        let Some(message) = message else {
            return Err(ErrorData::invalid_params("`message` (a string) is required", None));
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("Echo: {message}"))]).into())
    }
}

/// Serves the MCP server on a free loopback port; returns its endpoint (`…/mcp`).
async fn serve_mcp() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/mcp", listener.local_addr().unwrap());
    let server = EchoServer::new();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    // rmcp answers a `POST` with a short SSE stream written in pieces; with Nagle's algorithm
    // each piece after the first waits for the client's delayed ACK (40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    endpoint
}

// ---------------------------------------------------------------------------------------
// The two paths

/// The measured paths, in the order of [`Path::ALL`] (their index in the results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Broker,
}

impl Path {
    const ALL: [Path; 2] = [Path::Direct, Path::Broker];
}

/// The tool's arguments, as both paths send them.
fn arguments() -> JsonObject {
    let Value::Object(arguments) = json!({"message": MESSAGE}) else { unreachable!() };
    arguments
}

fn check_answer(text: &str) -> Result<(), String> {
    if text.strip_prefix("Echo: ") == Some(MESSAGE) { Ok(()) } else { Err(format!("unexpected answer {text:?}")) }
}

/// A direct MCP session with the server: the rmcp client over streamable HTTP, as the
/// broker opens it (same protocol version, no client capabilities).
async fn direct_session(endpoint: &str) -> Arc<RunningService<RoleClient, ClientConfig>> {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let transport =
        StreamableHttpClientTransport::with_client(http, StreamableHttpClientTransportConfig::with_uri(endpoint));
    let client = ClientConfig::new(ClientCapabilities::default(), Implementation::new("agentmesh-bench", "1.0.0"))
        .with_protocol_version(PROTOCOL);
    Arc::new(client.serve(transport).await.unwrap())
}

fn direct(session: &Arc<RunningService<RoleClient, ClientConfig>>) -> Call {
    let (session, arguments) = (session.clone(), arguments());
    Arc::new(move |_| {
        let (session, arguments) = (session.clone(), arguments.clone());
        Box::pin(async move {
            let started = Instant::now();
            let params = CallToolRequestParams::new(TOOL).with_arguments(arguments);
            let result = session.peer().call_tool(params).await.map_err(|e| e.to_string())?;
            let total = started.elapsed();
            let text = result.content.iter().find_map(|block| match block {
                ContentBlock::Text(text) => Some(text.text.as_str()),
                _ => None,
            });
            if result.is_error == Some(true) {
                return Err(format!("the tool reported an error: {text:?}"));
            }
            check_answer(text.unwrap_or_default())?;
            Ok(Timing::unary(total))
        })
    })
}

fn broker(channels: &Arc<Vec<Channel>>, tool_name: &str) -> Call {
    let (channels, tokens) = (channels.clone(), Tokens::mint(ServiceName::McpBroker));
    let request = pb::InvokeToolRequest {
        tool: Some(pb::invoke_tool_request::Tool::ToolName(tool_name.to_owned())),
        arguments: Some(object_to_struct(&arguments())),
        ..Default::default()
    };
    Arc::new(move |n| {
        let channel = channels[n % channels.len()].clone();
        let (tokens, request) = (tokens.clone(), request.clone());
        Box::pin(async move {
            let started = Instant::now();
            let mut call = tonic::Request::new(request);
            tokens.insert(call.metadata_mut());
            let answer =
                McpServiceClient::new(channel).invoke_tool(call).await.map_err(|s| s.to_string())?.into_inner();
            let total = started.elapsed();
            let text = answer.content.iter().find_map(|part| match &part.part {
                Some(content_part::Part::Text(text)) => Some(text.as_str()),
                _ => None,
            });
            if answer.is_error {
                return Err(format!("the tool reported an error: {text:?}"));
            }
            check_answer(text.unwrap_or_default())?;
            Ok(Timing::unary(total))
        })
    })
}

// ---------------------------------------------------------------------------------------
// The run

/// A started mcp-broker: memory registry, in-process event bus, development identity.
fn spawn_broker(port: u16, settings: &LoadSettings) -> Service {
    // Every protection stays on, with a bulkhead wide enough for the in-flight cap and the
    // workers (the MCP default of 16 refuses the ceiling's 64).
    let bulkhead = settings.max_in_flight.max(settings.concurrency) * 2;
    let env = [
        ("MCP_BROKER_ADDR", format!("127.0.0.1:{port}")),
        ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned()),
        ("BULKHEAD_MCP_MAX_CONCURRENCY", bulkhead.to_string()),
    ];
    Service::spawn("agentmesh-mcp-broker", &env, BROKER_CPU)
}

/// The administrator who registers the server (through the gateway, as a person would).
fn admin() -> Principal {
    Principal { scopes: vec!["mcp_servers:write".into(), "tools:read".into()], ..identity::user("bench", "bench") }
}

fn admin_call<T>(body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    for (name, value) in identity::gateway_call(&admin(), ServiceName::McpBroker) {
        request.metadata_mut().insert(name, value.parse().unwrap());
    }
    request
}

/// Registers the MCP server at `endpoint` and discovers its tools; returns the name the
/// broker gives `echo`.
async fn register(channel: Channel, endpoint: &str) -> String {
    let mut client = McpServiceClient::new(channel);
    let name = format!("bench{}", std::process::id());
    let create = pb::CreateMcpServerRequest { name, endpoint: endpoint.to_owned(), ..Default::default() };
    let server = client.create_mcp_server(admin_call(create)).await.unwrap().into_inner().mcp_server.unwrap();
    let refresh = pb::RefreshMcpServerRequest { mcp_server_id: server.id.clone() };
    let tools = client.refresh_mcp_server(admin_call(refresh)).await.unwrap().into_inner().tools;
    let tool = tools.iter().find(|tool| tool.remote_name.as_deref() == Some(TOOL)).expect("echo discovered");
    tool.name.clone()
}

struct Results {
    /// Open loop, by [`Path::ALL`].
    paths: Vec<Samples>,
    ceiling: Samples,
    broker_rss_kib: u64,
}

async fn run(settings: &LoadSettings) -> Results {
    let endpoint = serve_mcp().await;
    let port = free_port().unwrap();
    let mut broker_process = spawn_broker(port, settings);
    wait_grpc_serving(&mut broker_process, port).await;
    settings.schedule(broker_process.pid);

    let channels = grpc_channels(port, settings.grpc_channels).await;
    let tool_name = register(channels[0].clone(), &endpoint).await;
    let session = direct_session(&endpoint).await;
    // Built per slice: the broker's calls get fresh tokens.
    let call_of = |path: Path| match path {
        Path::Direct => direct(&session),
        Path::Broker => broker(&channels, &tool_name),
    };

    let paths = measure_paths(settings, &mut broker_process, &Path::ALL, call_of).await;

    eprintln!("bench: ceiling, {} workers through the broker ...", settings.concurrency);
    let mut ceiling =
        with_cpu(&broker_process, closed_loop(settings.concurrency, settings.ceiling, &call_of(Path::Broker))).await;
    ceiling.sort();
    broker_process.check_alive();
    let broker_rss_kib = broker_process.rss_kib();
    Results { paths, ceiling, broker_rss_kib }
}

// ---------------------------------------------------------------------------------------
// Report

const QUANTILES: [f64; 4] = [0.50, 0.90, 0.99, 0.999];

/// p50, p90, p99, p99.9 and max of `values`, in milliseconds.
fn spread(values: &[u32]) -> [f64; 5] {
    let max = values.last().map_or(f64::NAN, |&us| f64::from(us) / 1000.0);
    let [p50, p90, p99, p999] = QUANTILES.map(|q| percentile_ms(values, q));
    [p50, p90, p99, p999, max]
}

fn report(settings: &LoadSettings, results: &Results, load_before: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## mcp-broker benchmark\n");
    let _ = writeln!(
        out,
        "{}",
        machine_summary(settings.machine_cpus, load_before, || format!(
            "Pinned: mcp-broker on CPU {BROKER_CPU}; the load driver and the MCP server on CPU {DRIVER_CPU}."
        ))
    );
    if let Some(nice) = settings.nice {
        let _ = writeln!(out, "mcp-broker and the load driver (with the MCP server) run at nice {nice}.\n");
    }
    if settings.realtime {
        let _ = writeln!(
            out,
            "mcp-broker and the load driver (with the MCP server) run in the real-time class (`SCHED_FIFO` 1).\n"
        );
    }
    let _ = writeln!(
        out,
        "Open loop, {} calls/s per path on a fixed timetable, latency from the scheduled send time; \
         {} s warm-up + {} s measured per path in {} alternating slices; rmcp MCP server over streamable \
         HTTP (sessions kept) whose `echo` tool answers at once.\n",
        settings.rate,
        settings.warmup.as_secs(),
        settings.measure.as_secs(),
        settings.rounds
    );
    let _ = writeln!(
        out,
        "| path | calls | errors · dropped | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | broker CPU µs/call | \
         broker wait for CPU µs/call | driver + server CPU µs/call |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, path) in
        [("direct (rmcp client, `tools/call`)", Path::Direct), ("via mcp-broker (gRPC `InvokeTool`)", Path::Broker)]
    {
        let samples = &results.paths[path as usize];
        let [p50, p90, p99, p999, max] = spread(&samples.total);
        // The broker idles while the direct path runs.
        let [broker_cpu, broker_wait] = [samples.service_cpu, samples.service_wait].map(|total| {
            if path == Path::Broker { format!("{:.0}", per_call_us(total, samples.calls())) } else { "—".into() }
        });
        let _ = writeln!(
            out,
            "| {name} | {} | {} · {} | {p50:.3} | {p90:.3} | {p99:.3} | {p999:.3} | {max:.2} | {broker_cpu} | \
             {broker_wait} | {:.0} |",
            samples.calls(),
            samples.errors,
            samples.dropped,
            per_call_us(samples.driver_cpu, samples.calls()),
        );
    }
    let (direct, via_broker) =
        (spread(&results.paths[Path::Direct as usize].total), spread(&results.paths[Path::Broker as usize].total));
    let added: Vec<f64> = via_broker.iter().zip(&direct).map(|(b, d)| b - d).collect();
    let _ = writeln!(
        out,
        "| **added by the broker** | | | **{:+.3}** | {:+.3} | **{:+.3}** | {:+.3} | {:+.2} | | | |",
        added[0], added[1], added[2], added[3], added[4]
    );

    let lag = all_lags(&results.paths);
    let _ = writeln!(
        out,
        "\nDriver delay (scheduled send → call started, included above in both paths): p50 {:.3} ms, p99 {:.3} ms.",
        percentile_ms(&lag, 0.50),
        percentile_ms(&lag, 0.99)
    );
    let _ = writeln!(
        out,
        "\nGoal p99 added < 1 ms: {:+.3} ms: **{}**.\n",
        added[2],
        if added[2] < 1.0 { "met" } else { "NOT met" }
    );

    let ceiling = &results.ceiling;
    let _ = writeln!(
        out,
        "Ceiling: {} closed-loop workers through mcp-broker over {} HTTP/2 connections, {} s:\n",
        settings.concurrency,
        settings.grpc_channels,
        settings.ceiling.as_secs()
    );
    let _ = writeln!(
        out,
        "| calls/s | p50 ms | p99 ms | errors | broker CPU µs/call | broker CPU, cores busy | \
         broker wait for CPU µs/call | driver + server CPU µs/call |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.0} | {:.0} |",
        ceiling.rate(),
        percentile_ms(&ceiling.total, 0.50),
        percentile_ms(&ceiling.total, 0.99),
        ceiling.errors,
        per_call_us(ceiling.service_cpu, ceiling.calls()),
        ceiling.service_cpu.as_secs_f64() / ceiling.elapsed.as_secs_f64(),
        per_call_us(ceiling.service_wait, ceiling.calls()),
        per_call_us(ceiling.driver_cpu, ceiling.calls()),
    );
    let _ = writeln!(out, "\nmcp-broker RSS at the end: {:.1} MiB.", results.broker_rss_kib as f64 / 1024.0);
    for (name, samples) in ["direct", "via mcp-broker", "ceiling"].iter().zip(results.paths.iter().chain([ceiling])) {
        if let Some(error) = &samples.first_error {
            let _ = writeln!(out, "\nfirst {name} error: {error}");
        }
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter this bench ignores.
    let settings = LoadSettings::from_env(500, 30);
    let load_before = load_average();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    settings.prepare_driver(DRIVER_CPU);
    let results = runtime.block_on(run(&settings));
    println!("{}", report(&settings, &results, &load_before));
    let failed = results.paths.iter().chain([&results.ceiling]).map(|s| s.errors + s.dropped).sum::<usize>() > 0;
    // Ends the driver's own tasks (the MCP session and server) without waiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if failed {
        eprintln!("bench: errors or dropped calls were recorded (see above)");
        std::process::exit(1);
    }
}
