//! The MCP reference server (`@modelcontextprotocol/server-everything`, streamable HTTP)
//! for tests that run agents with real tools: finding and starting it is
//! `agentmesh_testkit::mcp_peers` (re-exported here); registering it with the mesh through
//! the gateway, and waiting for its tools, is this module's.

use std::time::Duration;

pub use agentmesh_testkit::mcp_peers::{HttpPeer, everything};
use reqwest::Method;
use serde_json::json;

use crate::rest::Rest;

/// How many times discovery is checked, 50 ms apart (discovery retries while the server
/// is unreachable, and a loaded machine is slow).
const ATTEMPTS: u32 = 600;

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
