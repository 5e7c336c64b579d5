//! The MCP client layer against real MCP servers, not fakes: the npm reference server
//! (`@modelcontextprotocol/server-everything`) over stdio and streamable HTTP, a FastMCP
//! server written with the official Python SDK (tests/mcp/fastmcp_server.py), and a stdio
//! script that breaks the protocol on purpose (tests/mcp/misbehaving_server.py).
//!
//! The servers are installed by `tests/mcp/install.sh` under ~/.cache/agentmesh-tools. When
//! they are missing each test skips with a one-line reason, unless
//! `AGENTMESH_REQUIRE_SERVICES=1` (CI), which makes it fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use agentmesh_mcp_broker::connection::{
    Connection, ConnectionError, ErrorKind, HttpSpec, ServerSpec, StdioSpec, Timeouts, ToolResult, TransportSpec,
};
use agentmesh_proto::agentmesh::common::v1::content_part::Part;
use agentmesh_proto::agentmesh::common::v1::{embedded_resource, image_part};
use agentmesh_testkit::mcp_peers::{HttpPeer, tools_dir};
use agentmesh_testkit::{REQUIRE_SERVICES_ENV, services_required};
use serde_json::{Map, Value, json};
use tokio::process::{Child, Command};

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Where tests/mcp/install.sh put the servers.
struct Peers {
    everything: PathBuf,
    python: PathBuf,
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mcp")
}

/// The installed servers, or `None` (after a one-line reason) when they are missing.
fn peers() -> Option<Peers> {
    let tools = tools_dir();
    let peers = Peers {
        everything: tools.join("mcp-everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
        python: tools.join("mcp-python-venv/bin/python"),
    };
    if peers.everything.is_file() && peers.python.is_file() {
        return Some(peers);
    }
    let reason = format!("the MCP test servers are not installed under {} (run tests/mcp/install.sh)", tools.display());
    assert!(!services_required(), "{reason} and {REQUIRE_SERVICES_ENV}=1");
    eprintln!("skipped: {reason}");
    None
}

fn timeouts() -> Timeouts {
    Timeouts {
        initialize: Duration::from_secs(20),
        request: Duration::from_secs(10),
        shutdown_grace: Duration::from_millis(500),
    }
}

fn stdio_spec(label: &str, command: &str, args: &[&str]) -> ServerSpec {
    ServerSpec {
        label: label.to_owned(),
        transport: TransportSpec::Stdio(StdioSpec {
            command: command.to_owned(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            env: Vec::new(),
            working_directory: None,
        }),
        timeouts: timeouts(),
    }
}

fn http_spec(label: &str, port: u16) -> ServerSpec {
    ServerSpec {
        label: label.to_owned(),
        transport: TransportSpec::StreamableHttp(HttpSpec {
            url: format!("http://127.0.0.1:{port}/mcp"),
            headers: vec![("X-Test".to_owned(), "agentmesh".to_owned())],
        }),
        timeouts: timeouts(),
    }
}

fn everything_stdio(peers: &Peers) -> ServerSpec {
    stdio_spec("everything", "node", &[peers.everything.to_str().unwrap(), "stdio"])
}

/// A FastMCP server process listening on 127.0.0.1:`port`, killed when dropped.
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    async fn fastmcp(peers: &Peers, port: u16) -> HttpServer {
        let mut command = Command::new(&peers.python);
        command.arg(scripts_dir().join("fastmcp_server.py")).arg("streamable-http").arg(port.to_string());
        HttpServer::start(command, port).await
    }

    async fn start(mut command: Command, port: u16) -> HttpServer {
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).kill_on_drop(true).spawn().unwrap();
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return HttpServer { child, port };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the MCP server did not listen on port {port}");
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a process with this id is running (a zombie or no process at all is not).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start()).and_then(|rest| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Whether the process is gone entirely: not running and not a zombie (reaped).
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}");
}

fn arguments(value: Value) -> Map<String, Value> {
    let Value::Object(object) = value else { panic!("not an object") };
    object
}

fn texts(result: &ToolResult) -> Vec<&str> {
    result
        .content
        .iter()
        .filter_map(|part| match &part.part {
            Some(Part::Text(text)) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// What the reference server must show whatever the transport.
async fn exercise_everything(connection: &Connection) {
    let details = connection.details();
    assert_eq!(details.name, "mcp-servers/everything");
    assert_eq!(details.protocol_version, "2025-06-18");
    assert!(details.capabilities.iter().any(|capability| capability == "tools"), "{details:?}");
    assert!(details.tools_list_changed);

    let tools = connection.list_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|tool| tool.remote_name.as_str()).collect();
    for expected in ["echo", "get-sum", "get-tiny-image", "get-structured-content", "get-resource-links"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let echo = tools.iter().find(|tool| tool.remote_name == "echo").unwrap();
    assert_eq!(echo.title.as_deref(), Some("Echo Tool"));
    assert_eq!(echo.input_schema["type"], "object");
    assert_eq!(echo.input_schema["required"], json!(["message"]));
    assert_eq!(echo.annotations.read_only, Some(true));
    let structured = tools.iter().find(|tool| tool.remote_name == "get-structured-content").unwrap();
    assert!(structured.output_schema.is_some());

    let echoed = connection.call_tool("echo", arguments(json!({"message": "hi"})), CALL_TIMEOUT).await.unwrap();
    assert_eq!(texts(&echoed), ["Echo: hi"]);
    assert!(!echoed.is_error);

    let sum = connection.call_tool("get-sum", arguments(json!({"a": 2, "b": 3})), CALL_TIMEOUT).await.unwrap();
    assert_eq!(texts(&sum), ["The sum of 2 and 3 is 5."]);

    let image = connection.call_tool("get-tiny-image", Map::new(), CALL_TIMEOUT).await.unwrap();
    let png = image
        .content
        .iter()
        .find_map(|part| match &part.part {
            Some(Part::Image(image)) => Some(image),
            _ => None,
        })
        .expect("an image part");
    assert_eq!(png.mime_type, "image/png");
    let Some(image_part::Source::Data(bytes)) = &png.source else { panic!("no image bytes") };
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    let weather = connection
        .call_tool("get-structured-content", arguments(json!({"location": "Chicago"})), CALL_TIMEOUT)
        .await
        .unwrap();
    let structured = weather.structured_content.clone().expect("structured content");
    let as_text: Value = serde_json::from_str(texts(&weather)[0]).unwrap();
    assert_eq!(Value::Object(structured.clone()), as_text);
    for field in ["temperature", "conditions", "humidity"] {
        assert!(structured.contains_key(field), "{field} missing from {structured:?}");
    }

    let links = connection.call_tool("get-resource-links", arguments(json!({"count": 2})), CALL_TIMEOUT).await.unwrap();
    let links: Vec<_> = links
        .content
        .iter()
        .filter_map(|part| match &part.part {
            Some(Part::ResourceLink(link)) => Some(link.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(links.len(), 2);
    assert!(links.iter().all(|link| link.uri.starts_with("demo://resource/") && !link.name.is_empty()));

    let reference = connection
        .call_tool("get-resource-reference", arguments(json!({"resourceType": "Text", "resourceId": 1})), CALL_TIMEOUT)
        .await
        .unwrap();
    let embedded = reference
        .content
        .iter()
        .find_map(|part| match &part.part {
            Some(Part::Resource(resource)) => Some(resource),
            _ => None,
        })
        .expect("an embedded resource");
    assert_eq!(embedded.uri, "demo://resource/dynamic/text/1");
    assert!(matches!(&embedded.contents, Some(embedded_resource::Contents::Text(text)) if text.contains("Resource 1")));

    let missing = connection.call_tool("no-such-tool", Map::new(), CALL_TIMEOUT).await.unwrap_err();
    assert_eq!(missing, ConnectionError::ToolNotFound { tool: "no-such-tool".into() });

    let invalid = connection.call_tool("get-sum", arguments(json!({"a": "two"})), CALL_TIMEOUT).await.unwrap_err();
    assert_eq!(invalid.kind(), ErrorKind::InvalidParams, "{invalid}");

    connection.ping().await.unwrap();
}

#[tokio::test]
async fn reference_server_over_stdio() {
    let Some(peers) = peers() else { return };
    let mut spec = everything_stdio(&peers);
    let TransportSpec::Stdio(stdio) = &mut spec.transport else { unreachable!() };
    stdio.env.push(("AGENTMESH_MCP_TEST".into(), "from-the-spec".into()));
    let connection = Connection::open(&spec).await.unwrap();
    let pid = connection.pid().expect("a child");
    assert!(running(pid));
    exercise_everything(&connection).await;

    // The child sees its own variables and the minimal ones, none of the broker's others.
    let env = connection.call_tool("get-env", Map::new(), CALL_TIMEOUT).await.unwrap();
    let env: Map<String, Value> = serde_json::from_str(texts(&env)[0]).unwrap();
    assert_eq!(env["AGENTMESH_MCP_TEST"], "from-the-spec");
    assert!(env.contains_key("PATH"));
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some() && !env.contains_key("CARGO_MANIFEST_DIR"), "{env:?}");
    connection.close().await;
    assert!(reaped(pid), "the stdio server {pid} outlived its connection");
}

#[tokio::test]
async fn reference_server_over_streamable_http() {
    let Some(peers) = peers() else { return };
    let mut server = HttpPeer::everything(&peers.everything).await;
    let connection = Connection::open(&http_spec("everything-http", server.port())).await.unwrap();
    assert_eq!(connection.pid(), None);
    exercise_everything(&connection).await;
    connection.close().await;
    server.stop().await;
}

/// What the FastMCP server must show whatever the transport.
async fn exercise_fastmcp(connection: &Connection) {
    assert_eq!(connection.details().name, "agentmesh-test-fastmcp");
    let tools = connection.list_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|tool| tool.remote_name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["add", "fail", "register_tool", "slow"]);
    let add = tools.iter().find(|tool| tool.remote_name == "add").unwrap();
    assert_eq!(add.title.as_deref(), Some("Add two integers"));
    assert_eq!(add.description.as_deref(), Some("Adds two integers."));
    assert_eq!(add.input_schema["properties"]["a"]["type"], "integer");
    assert_eq!(add.output_schema.as_ref().unwrap()["properties"]["result"]["type"], "integer");

    let sum = connection.call_tool("add", arguments(json!({"a": 2, "b": 3})), CALL_TIMEOUT).await.unwrap();
    assert_eq!(sum.structured_content, Some(arguments(json!({"result": 5}))));
    assert_eq!(texts(&sum), ["5"]);

    let failed = connection.call_tool("fail", arguments(json!({"message": "boom"})), CALL_TIMEOUT).await.unwrap();
    assert!(failed.is_error);
    assert_eq!(texts(&failed), ["Error executing tool fail: boom"]);

    let missing = connection.call_tool("nope", Map::new(), CALL_TIMEOUT).await.unwrap_err();
    assert_eq!(missing, ConnectionError::ToolNotFound { tool: "nope".into() });

    // A call that outlasts its limit times out, is cancelled, and the session goes on.
    let started = std::time::Instant::now();
    let slow = connection.call_tool("slow", arguments(json!({"seconds": 30})), Duration::from_millis(300)).await;
    assert_eq!(slow, Err(ConnectionError::Timeout { operation: "tools/call", after: Duration::from_millis(300) }));
    assert!(started.elapsed() < Duration::from_secs(5));
    let again = connection.call_tool("add", arguments(json!({"a": 1, "b": 1})), CALL_TIMEOUT).await.unwrap();
    assert_eq!(texts(&again), ["2"]);
    assert!(!connection.is_closed());

    // A tool added at run time: the server says so, and the next listing has it.
    let mut changes = connection.tools_changed();
    let before = *changes.borrow_and_update();
    connection.call_tool("register_tool", arguments(json!({"name": "late"})), CALL_TIMEOUT).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), changes.changed()).await.expect("no tools/list_changed").unwrap();
    assert_eq!(*changes.borrow(), before + 1);
    let tools = connection.list_tools().await.unwrap();
    assert!(tools.iter().any(|tool| tool.remote_name == "late"));
}

#[tokio::test]
async fn fastmcp_server_over_streamable_http() {
    let Some(peers) = peers() else { return };
    let server = HttpServer::fastmcp(&peers, agentmesh_testkit::ports::reserve().unwrap()).await;
    let connection = Connection::open(&http_spec("fastmcp-http", server.port)).await.unwrap();
    exercise_fastmcp(&connection).await;
    connection.close().await;
    server.stop().await;
}

#[tokio::test]
async fn fastmcp_server_over_stdio() {
    let Some(peers) = peers() else { return };
    let script = scripts_dir().join("fastmcp_server.py");
    let spec = stdio_spec("fastmcp-stdio", peers.python.to_str().unwrap(), &[script.to_str().unwrap(), "stdio"]);
    let connection = Connection::open(&spec).await.unwrap();
    let pid = connection.pid().unwrap();
    exercise_fastmcp(&connection).await;
    connection.close().await;
    assert!(reaped(pid));
}

#[tokio::test]
async fn a_stdio_server_killed_mid_call_is_a_transport_error_and_a_new_connection_works() {
    let Some(peers) = peers() else { return };
    let connection = Connection::open(&everything_stdio(&peers)).await.unwrap();
    let pid = connection.pid().unwrap();
    let call = connection.call_tool(
        "trigger-long-running-operation",
        arguments(json!({"duration": 20, "steps": 2})),
        Duration::from_secs(60),
    );
    let kill = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = Command::new("kill").arg("-KILL").arg(pid.to_string()).status().await.unwrap();
        assert!(status.success());
    };
    let (result, ()) = tokio::join!(call, kill);
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transport, "{error}");
    assert!(error.closes_connection() && error.is_transient());
    tokio::time::timeout(Duration::from_secs(5), connection.closed()).await.expect("the end went unnoticed");
    assert!(connection.is_closed());
    assert_eq!(connection.ping().await.unwrap_err().kind(), ErrorKind::Transport);
    connection.close().await;
    assert!(reaped(pid), "the killed server {pid} was not reaped");

    let reopened = Connection::open(&everything_stdio(&peers)).await.unwrap();
    let echoed = reopened.call_tool("echo", arguments(json!({"message": "again"})), CALL_TIMEOUT).await.unwrap();
    assert_eq!(texts(&echoed), ["Echo: again"]);
    reopened.close().await;
}

#[tokio::test]
async fn an_http_server_that_goes_down_is_a_transport_error_and_works_again_when_back() {
    let Some(peers) = peers() else { return };
    let port = agentmesh_testkit::ports::reserve().unwrap();
    let server = HttpServer::fastmcp(&peers, port).await;
    let spec = http_spec("fastmcp-down", port);
    let connection = Connection::open(&spec).await.unwrap();
    connection.call_tool("add", arguments(json!({"a": 1, "b": 2})), CALL_TIMEOUT).await.unwrap();
    server.stop().await;

    let error = connection.call_tool("add", arguments(json!({"a": 1, "b": 2})), CALL_TIMEOUT).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transport, "{error}");
    assert!(!error.to_string().contains("127.0.0.1"), "the endpoint leaked into {error}");
    let refused = Connection::open(&spec).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Transport, "{refused}");
    connection.close().await;

    let server = HttpServer::fastmcp(&peers, port).await;
    let reopened = Connection::open(&spec).await.unwrap();
    let sum = reopened.call_tool("add", arguments(json!({"a": 1, "b": 2})), CALL_TIMEOUT).await.unwrap();
    assert_eq!(texts(&sum), ["3"]);
    reopened.close().await;
    server.stop().await;
}

fn misbehaving(mode: &str, pidfile: &Path) -> ServerSpec {
    let script = scripts_dir().join("misbehaving_server.py");
    let mut spec = stdio_spec(
        &format!("misbehaving-{mode}"),
        "python3",
        &[script.to_str().unwrap(), mode, pidfile.to_str().unwrap()],
    );
    spec.timeouts.initialize = Duration::from_secs(3);
    spec.timeouts.shutdown_grace = Duration::from_millis(200);
    spec
}

fn pidfile(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.pids", agentmesh_testkit::unique_name(name)))
}

fn read_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path).unwrap().lines().map(|line| line.parse().unwrap()).collect()
}

#[tokio::test]
async fn a_server_answering_garbage_is_a_protocol_error_and_leaves_no_process() {
    if peers().is_none() {
        return;
    }
    let pids = pidfile("garbage");
    let error = Connection::open(&misbehaving("garbage", &pids)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Protocol, "{error}");
    assert!(error.to_string().contains("not a JSON-RPC message"), "{error}");
    let [pid] = read_pids(&pids)[..] else { panic!("one pid expected") };
    assert!(reaped(pid));
    std::fs::remove_file(pids).unwrap();
}

#[tokio::test]
async fn garbage_after_initialize_is_a_protocol_error() {
    if peers().is_none() {
        return;
    }
    let pids = pidfile("bad_after_init");
    let connection = Connection::open(&misbehaving("bad-after-init", &pids)).await.unwrap();
    assert_eq!(connection.details().server_info(), "misbehaving 0");
    let error = connection.list_tools().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Protocol, "{error}");
    assert!(error.is_server_failure() && error.closes_connection());
    let pid = connection.pid().unwrap();
    connection.close().await;
    assert!(reaped(pid));
    std::fs::remove_file(pids).unwrap();
}

#[tokio::test]
async fn tools_are_listed_across_pages() {
    if peers().is_none() {
        return;
    }
    let pids = pidfile("paged");
    let connection = Connection::open(&misbehaving("paged", &pids)).await.unwrap();
    let tools = connection.list_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|tool| tool.remote_name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    connection.close().await;
    std::fs::remove_file(pids).unwrap();
}

#[tokio::test]
async fn a_hung_initialize_is_cut_and_the_whole_process_group_killed() {
    if peers().is_none() {
        return;
    }
    let pids = pidfile("hang");
    let started = std::time::Instant::now();
    let error = Connection::open(&misbehaving("hang", &pids)).await.unwrap_err();
    assert_eq!(error, ConnectionError::Timeout { operation: "initialize", after: Duration::from_secs(3) });
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    let [server, grandchild] = read_pids(&pids)[..] else { panic!("two pids expected") };
    // The server ignores SIGTERM and stdin closing: only the group SIGKILL ends it.
    assert!(reaped(server), "the hung server {server} survived");
    // Its child, reparented away from the broker, is killed with the group (a zombie at
    // most until its new parent reaps it).
    eventually("the hung server's child survived", || !running(grandchild)).await;
    std::fs::remove_file(pids).unwrap();
}

#[tokio::test]
async fn a_dropped_connection_kills_its_server() {
    let Some(peers) = peers() else { return };
    let connection = Connection::open(&everything_stdio(&peers)).await.unwrap();
    let pid = connection.pid().unwrap();
    drop(connection);
    eventually("a dropped connection's server survived", || reaped(pid)).await;
}

#[tokio::test]
async fn a_missing_program_and_a_bad_url_are_typed_errors() {
    let spec = stdio_spec("missing", "/nonexistent/agentmesh-mcp-server", &[]);
    assert_eq!(Connection::open(&spec).await.unwrap_err().kind(), ErrorKind::Spawn);
    let mut spec = http_spec("bad-url", 1);
    spec.transport = TransportSpec::StreamableHttp(HttpSpec { url: "not a url".into(), headers: Vec::new() });
    assert_eq!(Connection::open(&spec).await.unwrap_err().kind(), ErrorKind::InvalidSpec);
}
