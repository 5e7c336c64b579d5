//! McpService over real gRPC on loopback (memory backend): principals, validation with
//! field names, 404, 409, the stdio admin scope and the events a client's writes emit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agentmesh_events::{Subscriber, SubscriptionSpec};
use agentmesh_mcp_broker::convert::object_to_struct;
use agentmesh_proto::agentmesh::mcp::v1 as pb;
use agentmesh_runtime::auth::Principal;
use agentmesh_runtime::{ApiError, ErrorCode};
use agentmesh_testkit::identity;
use common::{Mesh, call};
use futures::StreamExt;
use tonic::{Code, Status};

async fn start(extra_env: &[(&str, &str)]) -> Mesh {
    common::start(extra_env, None).await
}

fn user() -> Principal {
    Principal {
        scopes: vec!["tools:read".into(), "tools:write".into(), "mcp_servers:write".into()],
        ..identity::user("alice", "acme")
    }
}

fn admin() -> Principal {
    Principal { scopes: vec!["mcp_servers:admin".into(), "mcp_servers:write".into()], ..identity::user("root", "acme") }
}

fn violations(status: &Status) -> Vec<String> {
    let error = ApiError::from_status(status);
    assert_eq!(error.code, ErrorCode::Validation, "{status:?}");
    error.field_violations.into_iter().map(|v| v.field).collect()
}

fn code(status: &Status) -> ErrorCode {
    ApiError::from_status(status).code
}

fn schema(json: serde_json::Value) -> prost_types::Struct {
    object_to_struct(json.as_object().unwrap())
}

fn create_tool(name: &str) -> pb::CreateToolRequest {
    pb::CreateToolRequest {
        name: name.into(),
        description: "Searches".into(),
        schema: Some(schema(serde_json::json!({"type": "object", "properties": {"q": {"type": "string"}}}))),
        ..Default::default()
    }
}

fn http_server(name: &str) -> pb::CreateMcpServerRequest {
    pb::CreateMcpServerRequest { name: name.into(), endpoint: "http://127.0.0.1:3001/mcp".into(), ..Default::default() }
}

fn stdio_server(name: &str) -> pb::CreateMcpServerRequest {
    pb::CreateMcpServerRequest {
        name: name.into(),
        stdio: Some(pb::StdioCommand {
            command: "node".into(),
            args: vec!["index.js".into(), "stdio".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Mesh {
    async fn server_count(&mut self) -> i64 {
        let listed = self.client.list_mcp_servers(call(&user(), pb::ListMcpServersRequest::default())).await.unwrap();
        listed.into_inner().total_count
    }
}

#[tokio::test]
async fn calls_without_a_signed_principal_are_refused() {
    let mut mesh = start(&[]).await;
    let status = mesh.client.list_tools(pb::ListToolsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn tools_crud_with_contract_defaults() {
    let mut mesh = start(&[]).await;
    let created = mesh.client.create_tool(call(&user(), create_tool("web_search"))).await.unwrap().into_inner();
    let tool = created.tool.unwrap();
    assert!(tool.enabled, "enabled defaults to true");
    assert!(tool.metadata.unwrap().fields.is_empty(), "metadata defaults to {{}}");
    assert_eq!((tool.mcp_server_id, tool.remote_name), (None, None));

    for i in 0..22 {
        mesh.client.create_tool(call(&user(), create_tool(&format!("t{i:02}")))).await.unwrap();
    }
    let first = mesh.client.list_tools(call(&user(), pb::ListToolsRequest::default())).await.unwrap().into_inner();
    assert_eq!((first.tools.len(), first.total_count), (20, 23), "default limit 20");
    let next = pb::ListToolsRequest { page_token: first.next_page_token.clone(), ..Default::default() };
    let second = mesh.client.list_tools(call(&user(), next)).await.unwrap().into_inner();
    assert_eq!(second.tools.len(), 3);
    assert!(second.next_page_token.is_empty());
    assert_eq!(second.tools.last().unwrap().name, "web_search");
    let replayed =
        pb::ListToolsRequest { enabled: Some(true), page_token: first.next_page_token, ..Default::default() };
    let status = mesh.client.list_tools(call(&user(), replayed)).await.unwrap_err();
    assert_eq!(violations(&status), ["page_token"], "a token is bound to its filters");

    let update = pb::UpdateToolRequest {
        tool_id: tool.id.clone(),
        name: "web_search".into(),
        description: "Searches the web".into(),
        schema: Some(schema(serde_json::json!({}))),
        enabled: Some(false),
        ..Default::default()
    };
    let updated = mesh.client.update_tool(call(&user(), update)).await.unwrap().into_inner().tool.unwrap();
    assert_eq!((updated.description.as_str(), updated.enabled), ("Searches the web", false));
    let got = mesh.client.get_tool(call(&user(), pb::GetToolRequest { tool_id: tool.id.clone() })).await.unwrap();
    assert_eq!(got.into_inner().tool.unwrap(), updated);

    mesh.client.delete_tool(call(&user(), pb::DeleteToolRequest { tool_id: tool.id.clone() })).await.unwrap();
    let status = mesh.client.get_tool(call(&user(), pb::GetToolRequest { tool_id: tool.id })).await.unwrap_err();
    assert_eq!(code(&status), ErrorCode::NotFound);
    assert_eq!(status.message(), "Tool not found");
}

#[tokio::test]
async fn invalid_tools_are_refused_with_every_field_named() {
    let mut mesh = start(&[("MCP_MAX_METADATA_BYTES", "32")]).await;
    let bad = pb::CreateToolRequest {
        name: "has space".into(),
        description: String::new(),
        schema: None,
        mcp_server_id: Some("nope".into()),
        ..Default::default()
    };
    let status = mesh.client.create_tool(call(&user(), bad)).await.unwrap_err();
    assert_eq!(violations(&status), ["name", "description", "schema", "mcp_server_id"]);

    let not_object = pb::CreateToolRequest {
        schema: Some(schema(serde_json::json!({"type": "array"}))),
        output_schema: Some(schema(serde_json::json!({"type": 7}))),
        metadata: Some(schema(serde_json::json!({"blob": "x".repeat(64)}))),
        ..create_tool("ok_name")
    };
    let status = mesh.client.create_tool(call(&user(), not_object)).await.unwrap_err();
    assert_eq!(violations(&status), ["schema", "output_schema", "metadata"]);

    let unknown_server =
        pb::CreateToolRequest { mcp_server_id: Some(uuid::Uuid::now_v7().to_string()), ..create_tool("orphan") };
    let status = mesh.client.create_tool(call(&user(), unknown_server)).await.unwrap_err();
    assert_eq!(violations(&status), ["mcp_server_id"]);

    let bad_list = pb::ListToolsRequest { limit: Some(101), offset: Some(-1), ..Default::default() };
    let status = mesh.client.list_tools(call(&user(), bad_list)).await.unwrap_err();
    assert_eq!(violations(&status), ["limit", "offset"]);
    let listed = mesh.client.list_tools(call(&user(), pb::ListToolsRequest::default())).await.unwrap();
    assert_eq!(listed.into_inner().total_count, 0, "nothing was stored");
}

#[tokio::test]
async fn taken_names_conflict_and_missing_records_are_not_found() {
    let mut mesh = start(&[]).await;
    mesh.client.create_tool(call(&user(), create_tool("dup"))).await.unwrap();
    let status = mesh.client.create_tool(call(&user(), create_tool("dup"))).await.unwrap_err();
    assert_eq!((status.code(), code(&status)), (Code::AlreadyExists, ErrorCode::Conflict));
    mesh.client.create_mcp_server(call(&user(), http_server("srv"))).await.unwrap();
    let status = mesh.client.create_mcp_server(call(&user(), http_server("srv"))).await.unwrap_err();
    assert_eq!(code(&status), ErrorCode::Conflict);

    let missing = uuid::Uuid::now_v7().to_string();
    let get = pb::GetMcpServerRequest { mcp_server_id: missing.clone() };
    let status = mesh.client.get_mcp_server(call(&user(), get)).await.unwrap_err();
    assert_eq!((code(&status), status.message()), (ErrorCode::NotFound, "MCP server not found"));
    let delete = pb::DeleteMcpServerRequest { mcp_server_id: missing.clone() };
    assert_eq!(code(&mesh.client.delete_mcp_server(call(&user(), delete)).await.unwrap_err()), ErrorCode::NotFound);
    let list = pb::ListMcpServerToolsRequest { mcp_server_id: missing.clone(), ..Default::default() };
    let status = mesh.client.list_mcp_server_tools(call(&user(), list)).await.unwrap_err();
    assert_eq!(code(&status), ErrorCode::NotFound);
    let update = pb::UpdateMcpServerRequest {
        mcp_server_id: missing,
        name: "x".into(),
        endpoint: "https://example.com/mcp".into(),
        ..Default::default()
    };
    assert_eq!(code(&mesh.client.update_mcp_server(call(&user(), update)).await.unwrap_err()), ErrorCode::NotFound);
}

#[tokio::test]
async fn servers_follow_the_transport_rules() {
    let mut mesh = start(&[]).await;
    let created = mesh.client.create_mcp_server(call(&user(), http_server("everything"))).await.unwrap();
    let server = created.into_inner().mcp_server.unwrap();
    assert_eq!(server.transport, pb::McpTransport::StreamableHttp as i32, "inferred");
    assert!(server.enabled);
    assert_eq!(server.status, pb::McpServerStatus::Unspecified as i32);

    let no_endpoint = pb::CreateMcpServerRequest { name: "x".into(), ..Default::default() };
    let status = mesh.client.create_mcp_server(call(&user(), no_endpoint)).await.unwrap_err();
    assert_eq!(violations(&status), ["endpoint"]);
    let ftp = pb::CreateMcpServerRequest {
        endpoint: "ftp://example.com/mcp".into(),
        health_check_url: Some("not a url".into()),
        authentication: Some(pb::McpAuthentication {
            bearer_secret: Some(String::new()),
            header_secrets: vec![pb::SecretHeader { name: "bad header".to_owned(), secret: "s".to_owned() }],
            per_user: false,
        }),
        ..http_server("x")
    };
    let status = mesh.client.create_mcp_server(call(&user(), ftp)).await.unwrap_err();
    assert_eq!(
        violations(&status),
        ["endpoint", "health_check_url", "authentication.bearer_secret", "authentication.header_secrets[0].name"]
    );
    let sse = pb::CreateMcpServerRequest { transport: pb::McpTransport::Sse as i32, ..http_server("legacy") };
    let legacy = mesh.client.create_mcp_server(call(&user(), sse)).await.unwrap().into_inner().mcp_server.unwrap();
    assert_eq!(legacy.transport, pb::McpTransport::Sse as i32);
    let bad_prefix = pb::CreateMcpServerRequest { tool_prefix: Some("no spaces".into()), ..http_server("p") };
    let status = mesh.client.create_mcp_server(call(&user(), bad_prefix)).await.unwrap_err();
    assert_eq!(violations(&status), ["tool_prefix"]);

    // The admin's stdio servers: command required, endpoint and stdio exclusive.
    let no_command = pb::CreateMcpServerRequest {
        stdio: Some(pb::StdioCommand::default()),
        ..pb::CreateMcpServerRequest { name: "s".into(), ..Default::default() }
    };
    let status = mesh.client.create_mcp_server(call(&admin(), no_command)).await.unwrap_err();
    assert_eq!(violations(&status), ["stdio.command"]);
    let both = pb::CreateMcpServerRequest { endpoint: "http://x/mcp".into(), ..stdio_server("both") };
    let status = mesh.client.create_mcp_server(call(&admin(), both)).await.unwrap_err();
    assert_eq!(violations(&status), ["endpoint"]);
    let mismatched =
        pb::CreateMcpServerRequest { transport: pb::McpTransport::StreamableHttp as i32, ..stdio_server("m") };
    let status = mesh.client.create_mcp_server(call(&admin(), mismatched)).await.unwrap_err();
    assert_eq!(violations(&status), ["stdio", "endpoint"]);
    let stdio_without_command = pb::CreateMcpServerRequest {
        transport: pb::McpTransport::Stdio as i32,
        ..pb::CreateMcpServerRequest { name: "s".into(), ..Default::default() }
    };
    let status = mesh.client.create_mcp_server(call(&admin(), stdio_without_command)).await.unwrap_err();
    assert_eq!(violations(&status), ["stdio"]);
    assert_eq!(mesh.server_count().await, 2, "only the valid servers were stored");
}

#[tokio::test]
async fn stdio_servers_need_the_admin_scope_and_nothing_is_stored_without_it() {
    let mut mesh = start(&[]).await;
    let status = mesh.client.create_mcp_server(call(&user(), stdio_server("local"))).await.unwrap_err();
    assert_eq!((status.code(), code(&status)), (Code::PermissionDenied, ErrorCode::Authorization));
    assert!(status.message().contains("mcp_servers:admin"), "{status:?}");
    let explicit = pb::CreateMcpServerRequest {
        transport: pb::McpTransport::Stdio as i32,
        ..pb::CreateMcpServerRequest { name: "local".into(), ..Default::default() }
    };
    let status = mesh.client.create_mcp_server(call(&user(), explicit)).await.unwrap_err();
    assert_eq!(code(&status), ErrorCode::Authorization);
    assert_eq!(mesh.server_count().await, 0);

    let created = mesh.client.create_mcp_server(call(&admin(), stdio_server("local"))).await.unwrap();
    let local = created.into_inner().mcp_server.unwrap();
    assert_eq!(local.transport, pb::McpTransport::Stdio as i32, "inferred from the command");
    assert_eq!(local.stdio.unwrap().args, ["index.js", "stdio"]);

    // Changing it, or turning an http server into a stdio one, is the admin's too.
    let change = pb::UpdateMcpServerRequest {
        mcp_server_id: local.id.clone(),
        name: "local".into(),
        endpoint: "http://127.0.0.1:9/mcp".into(),
        ..Default::default()
    };
    let status = mesh.client.update_mcp_server(call(&user(), change)).await.unwrap_err();
    assert_eq!(code(&status), ErrorCode::Authorization);
    let remote = mesh.client.create_mcp_server(call(&user(), http_server("remote"))).await.unwrap();
    let remote = remote.into_inner().mcp_server.unwrap();
    let to_stdio = pb::UpdateMcpServerRequest {
        mcp_server_id: remote.id.clone(),
        name: "remote".into(),
        stdio: Some(pb::StdioCommand { command: "sh".into(), ..Default::default() }),
        ..Default::default()
    };
    let status = mesh.client.update_mcp_server(call(&user(), to_stdio)).await.unwrap_err();
    assert_eq!(code(&status), ErrorCode::Authorization);
    let get = pb::GetMcpServerRequest { mcp_server_id: remote.id.clone() };
    let unchanged = mesh.client.get_mcp_server(call(&user(), get)).await.unwrap().into_inner().mcp_server.unwrap();
    // Only its health may have moved (background discovery finds nothing listening).
    let health_aside = |server: pb::McpServer| pb::McpServer { status: 0, last_health_check: None, ..server };
    assert_eq!(health_aside(unchanged), health_aside(remote.clone()), "nothing changed");
    let get = pb::GetMcpServerRequest { mcp_server_id: local.id.clone() };
    let stored = mesh.client.get_mcp_server(call(&user(), get)).await.unwrap().into_inner().mcp_server.unwrap();
    assert_eq!(stored.transport, pb::McpTransport::Stdio as i32);

    // An ordinary user may still update http servers and delete any server.
    let rename = pb::UpdateMcpServerRequest {
        mcp_server_id: remote.id.clone(),
        name: "remote2".into(),
        endpoint: "https://mcp.example.com/mcp".into(),
        enabled: Some(false),
        ..Default::default()
    };
    let renamed = mesh.client.update_mcp_server(call(&user(), rename)).await.unwrap().into_inner().mcp_server.unwrap();
    assert_eq!((renamed.name.as_str(), renamed.enabled), ("remote2", false));
    mesh.client.delete_mcp_server(call(&user(), pb::DeleteMcpServerRequest { mcp_server_id: local.id })).await.unwrap();
    assert_eq!(mesh.server_count().await, 1);
}

#[tokio::test]
async fn server_tools_list_and_events_reach_the_bus() {
    let mut mesh = start(&[]).await;
    let server = mesh.client.create_mcp_server(call(&user(), http_server("srv"))).await.unwrap();
    let server = server.into_inner().mcp_server.unwrap();
    let owned = pb::CreateToolRequest { mcp_server_id: Some(server.id.clone()), ..create_tool("srv_tool") };
    let tool = mesh.client.create_tool(call(&user(), owned)).await.unwrap().into_inner().tool.unwrap();
    mesh.client.create_tool(call(&user(), create_tool("free"))).await.unwrap();
    let list = pb::ListMcpServerToolsRequest { mcp_server_id: server.id.clone(), ..Default::default() };
    let listed = mesh.client.list_mcp_server_tools(call(&user(), list)).await.unwrap().into_inner();
    assert_eq!((listed.total_count, listed.tools[0].name.as_str()), (1, "srv_tool"));
    let filtered = pb::ListToolsRequest { mcp_server_id: Some(server.id.clone()), ..Default::default() };
    assert_eq!(mesh.client.list_tools(call(&user(), filtered)).await.unwrap().into_inner().total_count, 1);

    let delete = pb::DeleteMcpServerRequest { mcp_server_id: server.id.clone() };
    mesh.client.delete_mcp_server(call(&user(), delete)).await.unwrap();
    let get = pb::GetToolRequest { tool_id: tool.id.clone() };
    assert_eq!(code(&mesh.client.get_tool(call(&user(), get)).await.unwrap_err()), ErrorCode::NotFound);

    let expected = [
        ("agentmesh.mcp_server.created", server.id.clone()),
        ("agentmesh.tool.created", tool.id.clone()),
        ("agentmesh.tool.created", String::new()),
        ("agentmesh.tool.deleted", tool.id),
        ("agentmesh.mcp_server.deleted", server.id),
    ];
    let topics = vec!["tool.>".into(), "mcp_server.>".into()];
    let mut stream = mesh.bus.subscribe(SubscriptionSpec::ephemeral(topics)).await.unwrap();
    for (event_type, subject) in expected {
        let mut event;
        loop {
            let delivery = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
            event = delivery.event().clone();
            // Background discovery of the (unreachable) server records it unhealthy, which
            // may also update the server's record; neither is what this test counts.
            if !matches!(event.event_type(), "agentmesh.mcp_server.health_changed" | "agentmesh.mcp_server.updated") {
                break;
            }
        }
        assert_eq!(event.event_type(), event_type);
        if !subject.is_empty() {
            assert_eq!(event.subject(), Some(subject.as_str()));
        }
        assert_eq!(event.actor(), Some("gateway"), "events name the calling service");
        assert!(event.correlation_id().is_some());
    }
}

#[tokio::test]
async fn refreshing_an_unknown_server_is_not_found_and_the_gateway_cannot_invoke() {
    let mut mesh = start(&[]).await;
    let refresh = pb::RefreshMcpServerRequest { mcp_server_id: uuid::Uuid::now_v7().to_string() };
    let status = mesh.client.refresh_mcp_server(call(&user(), refresh)).await.unwrap_err();
    assert_eq!(code(&status), ErrorCode::NotFound);
    let invoke = pb::InvokeToolRequest {
        tool: Some(pb::invoke_tool_request::Tool::ToolName("nothing_here".into())),
        ..Default::default()
    };
    let status = mesh.client.invoke_tool(call(&user(), invoke)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "only the agent-orchestrator invokes tools");
}
