//! 100 register/delete cycles of a stdio MCP server through the gRPC service leave the
//! broker with the child processes and file descriptors it started with.
//!
//! Alone in its own test binary, so that no other test's children or descriptors are
//! counted. Uses the standard-library-only server in tests/mcp (no install needed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agentmesh_proto::agentmesh::mcp::v1 as pb;
use agentmesh_runtime::auth::Principal;
use agentmesh_testkit::{identity, unique_name};
use common::{Mesh, call, children, eventually, scripts_dir};

const CYCLES: usize = 100;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn admin() -> Principal {
    Principal { scopes: vec!["mcp_servers:admin".into(), "mcp_servers:write".into()], ..identity::user("root", "acme") }
}

/// Registers a stdio server, waits for its discovery, and deletes it.
async fn cycle(mesh: &mut Mesh, pidfile: &str) {
    let script = scripts_dir().join("misbehaving_server.py").display().to_string();
    let create = pb::CreateMcpServerRequest {
        name: unique_name("cycle"),
        stdio: Some(pb::StdioCommand {
            command: "python3".into(),
            args: vec![script, "paged".into(), pidfile.to_owned()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let server = mesh.client.create_mcp_server(call(&admin(), create)).await.unwrap().into_inner().mcp_server.unwrap();
    let refresh = pb::RefreshMcpServerRequest { mcp_server_id: server.id.clone() };
    let tools = mesh.client.refresh_mcp_server(call(&admin(), refresh)).await.unwrap().into_inner().tools;
    assert_eq!(tools.len(), 2, "{tools:?}");
    let delete = pb::DeleteMcpServerRequest { mcp_server_id: server.id };
    mesh.client.delete_mcp_server(call(&admin(), delete)).await.unwrap();
}

#[tokio::test]
async fn register_delete_cycles_leak_no_process_and_no_descriptor() {
    let mut mesh = common::start(&[("MCP_SHUTDOWN_GRACE", "0.5"), ("MCP_HEALTH_CHECK_INTERVAL", "3600")], None).await;
    let pidfile = std::env::temp_dir().join(format!("{}.pids", unique_name("service-cycles")));
    let pidfile = pidfile.to_str().unwrap().to_owned();
    // One cycle first, so that lazily created resources are counted in the baseline; a
    // session still held by background discovery is killed and reaped a moment later.
    cycle(&mut mesh, &pidfile).await;
    eventually("the warm-up cycle's child was not reaped", || async { children().is_empty() }).await;
    let descriptors = open_descriptors();
    for _ in 0..CYCLES {
        cycle(&mut mesh, &pidfile).await;
    }
    eventually("child processes leaked", || async { children().is_empty() }).await;
    eventually("file descriptors leaked", || async { open_descriptors() == descriptors }).await;
    std::fs::remove_file(pidfile).unwrap();
}
