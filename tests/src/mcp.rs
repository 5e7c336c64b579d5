//! The MCP reference server (`@modelcontextprotocol/server-everything`, streamable HTTP)
//! for tests that run agents with real tools: where `tests/mcp/install.sh` put it, a
//! process of it on a free port, and its registration with the mesh through the gateway.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use agentmesh_testkit::{REQUIRE_SERVICES_ENV, services_required};
use reqwest::Method;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::free_port;
use crate::rest::Rest;

/// How many times registration or start-up is checked, 50 ms apart.
const ATTEMPTS: u32 = 200;

/// The reference server's entry point, or `None` (after a one-line reason) when it is not
/// installed.
///
/// # Panics
/// When it is missing and `AGENTMESH_REQUIRE_SERVICES=1`.
pub fn everything() -> Option<PathBuf> {
    let tools = std::env::var_os("AGENTMESH_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/agentmesh-tools"));
    let path = tools.join("mcp-everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if path.is_file() {
        return Some(path);
    }
    let reason = format!("the MCP test servers are not installed under {} (run tests/mcp/install.sh)", tools.display());
    assert!(!services_required(), "{reason} and {REQUIRE_SERVICES_ENV}=1");
    eprintln!("skipped: {reason}");
    None
}

/// The reference server at `entry` over streamable HTTP on a free port, killed on drop.
///
/// # Panics
/// When it cannot be started or does not listen.
pub async fn start_everything(entry: &Path) -> (Child, u16) {
    let port = free_port().unwrap_or_else(|error| panic!("a free port: {error}"));
    let mut command = Command::new("node");
    command.arg(entry).arg("streamableHttp").env("PORT", port.to_string());
    command.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|error| panic!("starting node {}: {error}", entry.display()));
    for _ in 0..ATTEMPTS {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (child, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the MCP server did not listen on port {port}");
}

/// Registers the reference server on `port` as `everything` with `key`, and waits until
/// discovery has found its tool `tool` (named `everything_<tool>` in the mesh).
///
/// # Panics
/// When registration fails or the tool is not discovered.
pub async fn register_everything(api: &Rest, key: &str, port: u16, tool: &str) {
    let server = json!({
        "name": "everything",
        "endpoint": format!("http://127.0.0.1:{port}/mcp"),
        "transport": "streamable_http",
    });
    let (status, body) = api.json(key, Method::POST, "/api/v1/mcp-servers", Some(server)).await;
    assert_eq!(status, 201, "{body}");
    let name = format!("everything_{tool}");
    for _ in 0..ATTEMPTS {
        let (status, tools) = api.json(key, Method::GET, &format!("/api/v1/tools?search={tool}"), None).await;
        assert_eq!(status, 200, "{tools}");
        if tools[0]["name"] == name.as_str() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the reference server's tool {name} was not discovered");
}
