//! Discovery and invocation through the real gRPC service (memory backend, mesh identity)
//! against the real reference MCP server (`@modelcontextprotocol/server-everything`) over
//! streamable HTTP and over stdio: prefixed tool names, results with text, structured
//! content and images, argument validation before anything is sent, timeouts and the
//! per-server circuit breaker, secrets in a stdio server's environment (and a rotated one
//! used without a restart of the broker), no child left after a delete, and
//! `agentmesh.tool.invoked` events without argument values.
//!
//! The servers are installed by `tests/mcp/install.sh`; without them each test skips with a
//! one-line reason, unless `AGENTMESH_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::{Subscriber, SubscriptionSpec};
use agentmesh_mcp_broker::convert::{object_to_struct, struct_to_object};
use agentmesh_proto::agentmesh::common::v1::content_part::Part;
use agentmesh_proto::agentmesh::common::v1::image_part;
use agentmesh_proto::agentmesh::events::v1::ToolInvoked;
use agentmesh_proto::agentmesh::mcp::v1 as pb;
use agentmesh_runtime::auth::Principal;
use agentmesh_runtime::config::Secret;
use agentmesh_runtime::secrets::{SecretNotice, SecretReadError, SecretReader};
use agentmesh_runtime::{ApiError, ErrorCode};
use agentmesh_testkit::identity;
use agentmesh_testkit::mcp_peers::{HttpPeer, everything, tools_dir};
use common::{Mesh, call, eventually, orchestrator_call, running, scripts_dir};
use futures::StreamExt;
use prost::Message;
use serde_json::{Value, json};
use tonic::Status;

/// The Python SDK's interpreter (with the FastMCP test server's dependencies).
fn python() -> Option<PathBuf> {
    everything()?;
    Some(tools_dir().join("mcp-python-venv/bin/python")).filter(|path| path.is_file())
}

/// Secrets by name, rotated by the test, which announces each change as secrets-broker does.
#[derive(Debug)]
struct FakeSecrets {
    values: std::sync::Mutex<HashMap<String, String>>,
    notices: tokio::sync::broadcast::Sender<SecretNotice>,
}

impl FakeSecrets {
    fn new(pairs: &[(&str, &str)]) -> Arc<Self> {
        let values = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Arc::new(Self { values: std::sync::Mutex::new(values), notices: tokio::sync::broadcast::channel(16).0 })
    }

    fn rotate(&self, name: &str, value: &str) {
        self.values.lock().unwrap().insert(name.to_owned(), value.to_owned());
        // No watcher (the broker has not subscribed yet) is not an error.
        let _unheard = self.notices.send(SecretNotice::Changed(name.to_owned()));
    }
}

#[async_trait::async_trait]
impl SecretReader for FakeSecrets {
    async fn read(&self, name: &str) -> Result<Option<Secret>, SecretReadError> {
        Ok(self.values.lock().unwrap().get(name).map(|value| Secret::new(value.clone())))
    }

    fn watch(&self, _prefix: &str) -> Option<futures::stream::BoxStream<'static, SecretNotice>> {
        let notices = self.notices.subscribe();
        Some(Box::pin(futures::stream::unfold(notices, |mut notices| async move {
            notices.recv().await.ok().map(|notice| (notice, notices))
        })))
    }
}

/// Small resilience numbers so that breaker tests run in seconds.
const TEST_ENV: &[(&str, &str)] = &[
    ("RETRY_MCP_MAX_ATTEMPTS", "1"),
    ("CIRCUIT_MCP_FAILURE_THRESHOLD", "3"),
    ("CIRCUIT_MCP_RECOVERY_TIMEOUT", "1"),
    ("MCP_SHUTDOWN_GRACE", "0.5"),
    ("MCP_HEALTH_CHECK_INTERVAL", "3600"),
];

async fn start(secrets: &[(&str, &str)], extra_env: &[(&str, &str)]) -> Mesh {
    start_with(FakeSecrets::new(secrets), extra_env).await
}

async fn start_with(secrets: Arc<FakeSecrets>, extra_env: &[(&str, &str)]) -> Mesh {
    let env: Vec<(&str, &str)> = TEST_ENV.iter().chain(extra_env).copied().collect();
    common::start(&env, Some(secrets)).await
}

fn admin() -> Principal {
    Principal {
        scopes: vec!["mcp_servers:admin".into(), "mcp_servers:write".into(), "tools:read".into()],
        ..identity::user("root", "acme")
    }
}

fn error(status: &Status) -> ApiError {
    ApiError::from_status(status)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

impl Mesh {
    async fn create(&mut self, request: pb::CreateMcpServerRequest) -> pb::McpServer {
        let created = self.client.create_mcp_server(call(&admin(), request)).await.unwrap();
        created.into_inner().mcp_server.unwrap()
    }

    async fn refresh(&mut self, server: &pb::McpServer) -> Vec<pb::Tool> {
        let request = pb::RefreshMcpServerRequest { mcp_server_id: server.id.clone() };
        self.client.refresh_mcp_server(call(&admin(), request)).await.unwrap().into_inner().tools
    }

    async fn invoke(
        &mut self,
        tool: &str,
        arguments: Value,
        timeout_ms: Option<i64>,
    ) -> Result<pb::InvokeToolResponse, Status> {
        let request = pb::InvokeToolRequest {
            tool: Some(pb::invoke_tool_request::Tool::ToolName(tool.to_owned())),
            arguments: Some(object_to_struct(arguments.as_object().unwrap())),
            session_id: Some(uuid::Uuid::now_v7().to_string()),
            run_id: Some(uuid::Uuid::now_v7().to_string()),
            timeout_ms,
        };
        self.client.invoke_tool(orchestrator_call(&admin(), request)).await.map(tonic::Response::into_inner)
    }
}

fn texts(response: &pb::InvokeToolResponse) -> Vec<&str> {
    response
        .content
        .iter()
        .filter_map(|part| match &part.part {
            Some(Part::Text(text)) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Discovery lists the real tools with the server's prefix; calls return what the tools do.
async fn discover_and_invoke(mesh: &mut Mesh, server: &pb::McpServer) {
    let tools = mesh.refresh(server).await;
    let prefix = format!("{}_", server.name);
    for expected in ["echo", "get-sum", "get-tiny-image", "get-structured-content"] {
        let name = format!("{prefix}{expected}");
        let tool = tools.iter().find(|tool| tool.name == name).unwrap_or_else(|| panic!("{name} not discovered"));
        assert_eq!(tool.remote_name.as_deref(), Some(expected));
        assert_eq!(tool.mcp_server_id.as_deref(), Some(server.id.as_str()));
    }

    let echoed = mesh.invoke(&format!("{prefix}echo"), json!({"message": "hi"}), None).await.unwrap();
    assert_eq!(texts(&echoed), ["Echo: hi"]);
    assert!(!echoed.is_error && !echoed.truncated);

    let sum = mesh.invoke(&format!("{prefix}get-sum"), json!({"a": 2, "b": 3}), None).await.unwrap();
    assert_eq!(texts(&sum), ["The sum of 2 and 3 is 5."]);

    let image = mesh.invoke(&format!("{prefix}get-tiny-image"), json!({}), None).await.unwrap();
    let png = image
        .content
        .iter()
        .find_map(|part| match &part.part {
            Some(Part::Image(image)) => Some(image),
            _ => None,
        })
        .expect("an image part");
    let Some(image_part::Source::Data(bytes)) = &png.source else { panic!("no image bytes") };
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    let weather = mesh.invoke(&format!("{prefix}get-structured-content"), json!({"location": "Chicago"}), None).await;
    let structured = struct_to_object(&weather.unwrap().structured_content.expect("structured content"));
    assert!(structured.contains_key("temperature"), "{structured:?}");
}

#[tokio::test]
async fn reference_server_over_streamable_http() {
    let Some(entry) = everything() else { return };
    let http = HttpPeer::everything(&entry).await;
    let mut mesh = start(&[], &[]).await;
    let name = unique("evh");
    let server = mesh
        .create(pb::CreateMcpServerRequest { name: name.clone(), endpoint: http.endpoint(), ..Default::default() })
        .await;
    discover_and_invoke(&mut mesh, &server).await;

    // The arguments are checked against the schema before anything is sent.
    let invalid = mesh.invoke(&format!("{name}_get-sum"), json!({"a": "two"}), None).await.unwrap_err();
    let invalid = error(&invalid);
    assert_eq!(invalid.code, ErrorCode::Validation);
    let fields: Vec<_> = invalid.field_violations.iter().map(|v| v.field.as_str()).collect();
    assert!(fields.contains(&"arguments.a") && fields.contains(&"arguments.b"), "{fields:?}");
    assert!(!format!("{invalid:?}").contains("two"), "argument values are not echoed: {invalid:?}");

    let unknown = mesh.invoke(&format!("{name}_nope"), json!({}), None).await.unwrap_err();
    assert_eq!(error(&unknown).code, ErrorCode::NotFound);

    // Every call reached the point of calling is reported, without argument values.
    let topics = vec!["tool.invoked".into()];
    let mut stream = mesh.bus.subscribe(SubscriptionSpec::ephemeral(topics)).await.unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
        let event = delivery.event().clone();
        assert_eq!(event.event_type(), "agentmesh.tool.invoked");
        let data = event.data().clone();
        let invoked = ToolInvoked::decode(data.clone()).unwrap();
        assert_eq!(invoked.mcp_server_id.as_deref(), Some(server.id.as_str()));
        assert_eq!(invoked.user_id, "root");
        assert!(invoked.run_id.is_some() && invoked.session_id.is_some());
        let raw = String::from_utf8_lossy(&data);
        assert!(!raw.contains("Chicago") && !raw.contains("hi\""), "argument values leaked: {raw}");
        outcomes.push(invoked.outcome);
    }
    assert_eq!(outcomes, ["ok", "ok", "ok", "ok"]);
}

/// The processes whose environment holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

#[tokio::test]
async fn reference_server_over_stdio_with_a_secret_and_no_child_left() {
    let Some(entry) = everything() else { return };
    let marker = unique("marker-");
    let mut mesh = start(&[("test-token", "s3cret-value")], &[]).await;
    let name = unique("evs");
    let server = mesh
        .create(pb::CreateMcpServerRequest {
            name: name.clone(),
            stdio: Some(pb::StdioCommand {
                command: "node".into(),
                args: vec![entry.display().to_string(), "stdio".into()],
                env: vec![
                    pb::EnvironmentVariable {
                        name: "AGENTMESH_TEST_MARKER".into(),
                        value: Some(pb::environment_variable::Value::Literal(marker.clone())),
                    },
                    pb::EnvironmentVariable {
                        name: "AGENTMESH_TEST_TOKEN".into(),
                        value: Some(pb::environment_variable::Value::Secret("test-token".into())),
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    discover_and_invoke(&mut mesh, &server).await;

    let env = mesh.invoke(&format!("{name}_get-env"), json!({}), None).await.unwrap();
    let env: serde_json::Map<String, Value> = serde_json::from_str(texts(&env)[0]).unwrap();
    assert_eq!(env["AGENTMESH_TEST_TOKEN"], "s3cret-value", "the secret reached the child's environment");

    let marker_var = format!("AGENTMESH_TEST_MARKER={marker}");
    let children = processes_with(&marker_var);
    assert_eq!(children.len(), 1, "one session reused across calls: {children:?}");
    let pid = children[0];
    assert!(running(pid));

    let delete = pb::DeleteMcpServerRequest { mcp_server_id: server.id.clone() };
    mesh.client.delete_mcp_server(call(&admin(), delete)).await.unwrap();
    eventually("the stdio server outlived its deletion", || async { !running(pid) }).await;
    assert!(processes_with(&marker_var).is_empty());
}

#[tokio::test]
async fn hung_tools_time_out_and_open_the_breaker_which_recovers() {
    let Some(entry) = everything() else { return };
    let http = HttpPeer::everything(&entry).await;
    let mut mesh = start(&[], &[]).await;
    let name = unique("evb");
    mesh.create(pb::CreateMcpServerRequest { name: name.clone(), endpoint: http.endpoint(), ..Default::default() })
        .await;
    let server = mesh
        .client
        .list_mcp_servers(call(
            &admin(),
            pb::ListMcpServersRequest { search: Some(name.clone()), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .mcp_servers
        .remove(0);
    mesh.refresh(&server).await;
    let slow = format!("{name}_trigger-long-running-operation");
    for _ in 0..3 {
        let status = mesh.invoke(&slow, json!({"duration": 30, "steps": 2}), Some(200)).await.unwrap_err();
        assert_eq!(error(&status).code, ErrorCode::Timeout, "{status:?}");
    }
    let echo = format!("{name}_echo");
    let refused = mesh.invoke(&echo, json!({"message": "hi"}), None).await.unwrap_err();
    assert_eq!(error(&refused).code, ErrorCode::CircuitBreakerOpen, "{refused:?}");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let echoed = mesh.invoke(&echo, json!({"message": "again"}), None).await.unwrap();
    assert_eq!(texts(&echoed), ["Echo: again"]);
}

fn stdio_server(name: &str, command: &str, args: Vec<String>, marker: &str) -> pb::CreateMcpServerRequest {
    pb::CreateMcpServerRequest {
        name: name.to_owned(),
        stdio: Some(pb::StdioCommand {
            command: command.to_owned(),
            args,
            env: vec![pb::EnvironmentVariable {
                name: "AGENTMESH_TEST_MARKER".into(),
                value: Some(pb::environment_variable::Value::Literal(marker.to_owned())),
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_stdio_server_that_dies_is_started_again_in_the_background() {
    let Some(entry) = everything() else { return };
    let marker = unique("marker-");
    let marker_var = format!("AGENTMESH_TEST_MARKER={marker}");
    let mut mesh = start(&[], &[]).await;
    let name = unique("evk");
    let args = vec![entry.display().to_string(), "stdio".into()];
    let server = mesh.create(stdio_server(&name, "node", args, &marker)).await;
    mesh.refresh(&server).await;
    let first = processes_with(&marker_var);
    assert_eq!(first.len(), 1, "{first:?}");
    std::process::Command::new("kill").arg("-9").arg(first[0].to_string()).status().unwrap();

    // No call is needed: the broker starts it again by itself, and records it as healthy.
    eventually("the killed server was not started again", || async {
        matches!(processes_with(&marker_var)[..], [pid] if pid != first[0])
    })
    .await;
    let healthy = pb::McpServerStatus::Healthy as i32;
    eventually("the restarted server is not healthy", || {
        let mut client = mesh.client.clone();
        let get = pb::GetMcpServerRequest { mcp_server_id: server.id.clone() };
        async move {
            client.get_mcp_server(call(&admin(), get)).await.unwrap().into_inner().mcp_server.unwrap().status == healthy
        }
    })
    .await;
    let echoed = mesh.invoke(&format!("{name}_echo"), json!({"message": "back"}), None).await.unwrap();
    assert_eq!(texts(&echoed), ["Echo: back"]);
    let delete = pb::DeleteMcpServerRequest { mcp_server_id: server.id.clone() };
    mesh.client.delete_mcp_server(call(&admin(), delete)).await.unwrap();
    eventually("the deleted server's process is gone", || async { processes_with(&marker_var).is_empty() }).await;
}

#[tokio::test]
async fn a_changed_tool_list_is_synced_into_the_registry() {
    let Some(python) = python() else { return };
    let marker = unique("marker-");
    let mut mesh = start(&[], &[]).await;
    let name = unique("fm");
    let script = scripts_dir().join("fastmcp_server.py").display().to_string();
    let server =
        mesh.create(stdio_server(&name, python.to_str().unwrap(), vec![script, "stdio".into()], &marker)).await;
    let tools = mesh.refresh(&server).await;
    let names: Vec<_> = tools.iter().map(|tool| tool.name.clone()).collect();
    assert!(names.contains(&format!("{name}_register_tool")), "{names:?}");

    let added = mesh.invoke(&format!("{name}_register_tool"), json!({"name": "late"}), None).await.unwrap();
    assert!(!added.is_error, "{added:?}");
    let late = format!("{name}_late");
    let mut client = mesh.client.clone();
    let server_id = server.id.clone();
    eventually("the new tool is in the registry", || {
        let mut client = client.clone();
        let request = pb::ListMcpServerToolsRequest { mcp_server_id: server_id.clone(), ..Default::default() };
        let late = late.clone();
        async move {
            let listed = client.list_mcp_server_tools(call(&admin(), request)).await.unwrap().into_inner();
            listed.tools.iter().any(|tool| tool.name == late)
        }
    })
    .await;
    let called = mesh.invoke(&late, json!({}), None).await.unwrap();
    assert_eq!(texts(&called), ["late was added at run time"]);
    let delete = pb::DeleteMcpServerRequest { mcp_server_id: server.id.clone() };
    client.delete_mcp_server(call(&admin(), delete)).await.unwrap();
}

#[tokio::test]
async fn a_server_registered_before_it_listens_gets_its_tools_once_it_does() {
    let Some(entry) = everything() else { return };
    let mut mesh = start(&[], &[]).await;
    let port = agentmesh_testkit::ports::reserve().unwrap();
    let server = mesh
        .create(pb::CreateMcpServerRequest {
            name: unique("evl"),
            endpoint: format!("http://127.0.0.1:{port}/mcp"),
            ..Default::default()
        })
        .await;
    let client = mesh.client.clone();
    let state = |id: String| {
        let mut client = client.clone();
        async move {
            let get = pb::GetMcpServerRequest { mcp_server_id: id.clone() };
            let status =
                client.get_mcp_server(call(&admin(), get)).await.unwrap().into_inner().mcp_server.unwrap().status;
            let list = pb::ListMcpServerToolsRequest { mcp_server_id: id, ..Default::default() };
            let tools = client.list_mcp_server_tools(call(&admin(), list)).await.unwrap().into_inner().total_count;
            (status, tools)
        }
    };
    let unhealthy = (pb::McpServerStatus::Unhealthy as i32, 0);
    eventually("the unreachable server is not recorded unhealthy", || {
        let state = state(server.id.clone());
        async move { state.await == unhealthy }
    })
    .await;

    let _http = HttpPeer::everything_on(&entry, port).await;
    eventually("the server's tools were not discovered once it listened", || {
        let state = state(server.id.clone());
        async move {
            let (status, tools) = state.await;
            status == pb::McpServerStatus::Healthy as i32 && tools > 0
        }
    })
    .await;
    let sum = mesh.invoke(&format!("{}_get-sum", server.name), json!({"a": 4, "b": 5}), None).await.unwrap();
    assert_eq!(texts(&sum), ["The sum of 4 and 5 is 9."]);
}

#[tokio::test]
async fn periodic_health_checks_ping_servers_or_get_their_health_url() {
    let Some(entry) = everything() else { return };
    let http = HttpPeer::everything(&entry).await;
    let mut mesh = start(&[], &[("MCP_HEALTH_CHECK_INTERVAL", "0.3"), ("MCP_REQUEST_TIMEOUT", "1")]).await;
    let pinged = mesh
        .create(pb::CreateMcpServerRequest { name: unique("evp"), endpoint: http.endpoint(), ..Default::default() })
        .await;
    let dead_port = agentmesh_testkit::ports::reserve().unwrap();
    let probed = mesh
        .create(pb::CreateMcpServerRequest {
            name: unique("evu"),
            endpoint: http.endpoint(),
            health_check_url: Some(format!("http://127.0.0.1:{dead_port}/health")),
            ..Default::default()
        })
        .await;
    let status = |id: String| {
        let mut client = mesh.client.clone();
        async move {
            let get = pb::GetMcpServerRequest { mcp_server_id: id };
            client.get_mcp_server(call(&admin(), get)).await.unwrap().into_inner().mcp_server.unwrap().status
        }
    };
    let healthy = pb::McpServerStatus::Healthy as i32;
    let unhealthy = pb::McpServerStatus::Unhealthy as i32;
    eventually("the pinged server is healthy", || {
        let status = status(pinged.id.clone());
        async move { status.await == healthy }
    })
    .await;
    eventually("the server whose health URL answers nothing is unhealthy", || {
        let status = status(probed.id.clone());
        async move { status.await == unhealthy }
    })
    .await;
    drop(http);
    eventually("the pinged server is unhealthy once it is gone", || {
        let status = status(pinged.id.clone());
        async move { status.await == unhealthy }
    })
    .await;
}

#[tokio::test]
async fn per_user_credentials_are_resolved_for_the_calling_user() {
    let Some(entry) = everything() else { return };
    let http = HttpPeer::everything(&entry).await;
    let mut mesh = start(&[("token-root", "root-token")], &[]).await;
    let name = unique("evq");
    let server = mesh
        .create(pb::CreateMcpServerRequest {
            name: name.clone(),
            endpoint: http.endpoint(),
            authentication: Some(pb::McpAuthentication {
                bearer_secret: Some("token-{user_id}".into()),
                per_user: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    mesh.refresh(&server).await;
    let echoed = mesh.invoke(&format!("{name}_echo"), json!({"message": "mine"}), None).await.unwrap();
    assert_eq!(texts(&echoed), ["Echo: mine"]);

    // Bob has no credentials of his own: his call is refused, naming no secret value.
    let bob = Principal { scopes: vec!["tools:read".into()], ..identity::user("bob", "acme") };
    let request = pb::InvokeToolRequest {
        tool: Some(pb::invoke_tool_request::Tool::ToolName(format!("{name}_echo"))),
        arguments: Some(object_to_struct(json!({"message": "his"}).as_object().unwrap())),
        ..Default::default()
    };
    let refused = mesh.client.invoke_tool(orchestrator_call(&bob, request)).await.unwrap_err();
    let refused = error(&refused);
    assert_eq!(refused.code, ErrorCode::ExternalService, "{refused:?}");
    assert!(format!("{refused:?}").contains("token-bob"), "{refused:?}");
}

#[tokio::test]
async fn shutting_down_leaves_no_stdio_child() {
    let Some(entry) = everything() else { return };
    let marker = unique("marker-");
    let marker_var = format!("AGENTMESH_TEST_MARKER={marker}");
    let mut mesh = start(&[], &[]).await;
    let args = vec![entry.display().to_string(), "stdio".into()];
    let server = mesh.create(stdio_server(&unique("evz"), "node", args, &marker)).await;
    mesh.refresh(&server).await;
    assert_eq!(processes_with(&marker_var).len(), 1);
    drop(mesh);
    eventually("the stdio server ended with the broker", || async { processes_with(&marker_var).is_empty() }).await;
}

#[tokio::test]
async fn a_rotated_credential_is_used_by_the_next_call_without_restarting_the_broker() {
    let Some(entry) = everything() else { return };
    let secrets = FakeSecrets::new(&[("mcp-api-token", "token-v1")]);
    let mut mesh = start_with(secrets.clone(), &[]).await;
    let name = unique("evr");
    let mut request = stdio_server(&name, "node", vec![entry.display().to_string(), "stdio".into()], &unique("m-"));
    if let Some(stdio) = request.stdio.as_mut() {
        stdio.env.push(pb::EnvironmentVariable {
            name: "API_TOKEN".into(),
            value: Some(pb::environment_variable::Value::Secret("mcp-api-token".into())),
        });
    }
    let server = mesh.create(request).await;
    mesh.refresh(&server).await;
    let tool = format!("{name}_get-env");
    let token = |response: pb::InvokeToolResponse| {
        let environment: Value = serde_json::from_str(texts(&response)[0]).unwrap();
        environment["API_TOKEN"].as_str().unwrap().to_owned()
    };
    assert_eq!(token(mesh.invoke(&tool, json!({}), None).await.unwrap()), "token-v1");

    secrets.rotate("mcp-api-token", "token-v2");
    for _ in 0..100 {
        let seen = token(mesh.invoke(&tool, json!({}), None).await.unwrap());
        if seen == "token-v2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every call from now on uses the new credential.
    for _ in 0..3 {
        assert_eq!(token(mesh.invoke(&tool, json!({}), None).await.unwrap()), "token-v2");
    }
    // A change to a secret the session does not use leaves it open.
    secrets.rotate("unrelated-secret", "x");
    assert_eq!(token(mesh.invoke(&tool, json!({}), None).await.unwrap()), "token-v2");
}
