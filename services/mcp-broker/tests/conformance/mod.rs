//! The behaviour every `McpStore` backend must have, written once.
//!
//! A backend's test file provides `async fn fixture() -> Option<Fixture>` (None = the
//! backend's server is unreachable and the test skips) and invokes
//! `conformance_tests!(fixture);`, which generates one test per behaviour below.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::{MemoryBus, Subscriber, SubscriptionSpec};
use agentmesh_mcp_broker::store::{
    Authentication, Cursor, DiscoveredTool, EnvValue, EnvVar, Handshake, JsonObject, McpStore, ServerConfig,
    ServerQuery, ServerStatus, StdioCommand, StoreError, ToolAnnotations, ToolDefinition, ToolQuery, Transport,
};
use agentmesh_proto::agentmesh::events::v1 as pb;
use futures::StreamExt;
use prost::Message as _;
use uuid::Uuid;

/// One backend under test.
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn McpStore>,
    /// Where the store's events arrive.
    pub bus: MemoryBus,
    /// Dropped at the end of the test: removes the test's data.
    pub guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per behaviour for `$fixture`.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:path) => {
        agentmesh_testkit::suite_tests!(conformance, $fixture;
            tool_round_trip, names_are_unique_and_servers_must_exist, tools_filter_search_and_page,
            tool_cursor_walks_every_item_once, server_round_trip_and_update, servers_filter_search_and_page,
            deleting_a_server_deletes_its_tools, sync_creates_updates_and_disables, sync_names_tools_uniquely,
            handshake_and_health_are_recorded, writes_emit_domain_events
        );
    };
}

fn object(json: serde_json::Value) -> JsonObject {
    json.as_object().cloned().unwrap()
}

fn tool(name: &str, description: &str) -> ToolDefinition {
    ToolDefinition {
        name: name.into(),
        description: description.into(),
        schema: object(serde_json::json!({"type": "object", "properties": {"q": {"type": "string"}}})),
        mcp_server_id: None,
        enabled: true,
        metadata: object(serde_json::json!({"team": "search", "n": [1, 2.5, null]})),
        title: Some(format!("Title of {name}")),
        output_schema: Some(object(serde_json::json!({"type": "object"}))),
        annotations: Some(ToolAnnotations { read_only_hint: Some(true), ..Default::default() }),
    }
}

fn http_server(name: &str) -> ServerConfig {
    ServerConfig {
        name: name.into(),
        description: Some(format!("{name} server")),
        endpoint: "http://127.0.0.1:3001/mcp".into(),
        authentication: Authentication::default(),
        capabilities: vec![],
        health_check_url: None,
        enabled: true,
        transport: Transport::StreamableHttp,
        stdio: None,
        tool_prefix: None,
    }
}

fn tools(limit: u32) -> ToolQuery {
    ToolQuery { limit, ..ToolQuery::default() }
}

fn servers(limit: u32) -> ServerQuery {
    ServerQuery { limit, ..ServerQuery::default() }
}

fn discovered(remote: &str, description: &str) -> DiscoveredTool {
    DiscoveredTool {
        remote_name: remote.into(),
        description: description.into(),
        title: None,
        input_schema: object(serde_json::json!({"type": "object"})),
        output_schema: None,
        annotations: None,
    }
}

fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|item| name(item).to_owned()).collect()
}

pub async fn tool_round_trip(f: &Fixture) {
    let created = f.store.create_tool(tool("web_search", "Searches the web")).await.unwrap();
    assert_eq!(created.id.get_version_num(), 7);
    assert_eq!((created.name.as_str(), created.enabled, created.remote_name.as_deref()), ("web_search", true, None));
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(f.store.get_tool(created.id).await.unwrap(), created, "reads back exactly as created");
    assert_eq!(f.store.get_tool_by_name("web_search").await.unwrap(), created);
    let minimal = ToolDefinition {
        title: None,
        output_schema: None,
        annotations: None,
        metadata: JsonObject::new(),
        enabled: false,
        ..tool("bare", "d")
    };
    let bare = f.store.create_tool(minimal).await.unwrap();
    assert_eq!(f.store.get_tool(bare.id).await.unwrap(), bare);

    let replaced =
        f.store.update_tool(created.id, ToolDefinition { enabled: false, ..tool("web-search", "New") }).await;
    let replaced = replaced.unwrap();
    assert_eq!((replaced.name.as_str(), replaced.description.as_str(), replaced.enabled), ("web-search", "New", false));
    assert_eq!(replaced.created_at, created.created_at);
    assert!(replaced.updated_at >= created.updated_at);
    assert!(matches!(f.store.get_tool_by_name("web_search").await, Err(StoreError::NotFound)), "old name is free");
    assert_eq!(f.store.get_tool_by_name("web-search").await.unwrap(), replaced);

    assert_eq!(f.store.delete_tool(created.id).await.unwrap().id, created.id);
    assert!(matches!(f.store.get_tool(created.id).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.delete_tool(created.id).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.update_tool(Uuid::now_v7(), tool("x", "y")).await, Err(StoreError::NotFound)));
    f.store.ping().await.unwrap();
}

pub async fn names_are_unique_and_servers_must_exist(f: &Fixture) {
    let first = f.store.create_tool(tool("dup", "a")).await.unwrap();
    assert!(matches!(f.store.create_tool(tool("dup", "b")).await, Err(StoreError::NameTaken(name)) if name == "dup"));
    let other = f.store.create_tool(tool("other", "c")).await.unwrap();
    assert!(matches!(f.store.update_tool(other.id, tool("dup", "c")).await, Err(StoreError::NameTaken(_))));
    f.store.update_tool(first.id, tool("dup", "same name, own tool")).await.unwrap();

    let orphan = ToolDefinition { mcp_server_id: Some(Uuid::now_v7()), ..tool("orphan", "d") };
    assert!(matches!(f.store.create_tool(orphan.clone()).await, Err(StoreError::UnknownServer)));
    assert!(matches!(f.store.update_tool(other.id, orphan).await, Err(StoreError::UnknownServer)));

    let server = f.store.create_server(http_server("alpha")).await.unwrap();
    assert!(matches!(f.store.create_server(http_server("alpha")).await, Err(StoreError::NameTaken(_))));
    let beta = f.store.create_server(http_server("beta")).await.unwrap();
    assert!(matches!(f.store.update_server(beta.id, http_server("alpha")).await, Err(StoreError::NameTaken(_))));
    let owned = ToolDefinition { mcp_server_id: Some(server.id), ..tool("owned", "d") };
    assert_eq!(f.store.create_tool(owned).await.unwrap().mcp_server_id, Some(server.id));

    let listed = f.store.list_tools(&tools(100)).await.unwrap();
    assert_eq!(names(&listed.items, |t| &t.name), ["dup", "other", "owned"], "refused writes changed nothing");
}

pub async fn tools_filter_search_and_page(f: &Fixture) {
    let server = f.store.create_server(http_server("srv")).await.unwrap();
    for (name, description, enabled, on_server) in [
        ("b_weather", "Current WEATHER", true, true),
        ("a_files", "Reads 100% of files", true, false),
        ("d_disabled", "weather too", false, true),
        ("c_calc", "Adds for sums", true, false),
        ("e_under_score", "x", true, false),
    ] {
        let definition =
            ToolDefinition { enabled, mcp_server_id: on_server.then_some(server.id), ..tool(name, description) };
        f.store.create_tool(definition).await.unwrap();
    }
    let all = f.store.list_tools(&tools(100)).await.unwrap();
    assert_eq!(names(&all.items, |t| &t.name), ["a_files", "b_weather", "c_calc", "d_disabled", "e_under_score"]);
    assert_eq!((all.total, all.has_more), (5, false));

    let query = |q: ToolQuery| {
        let store = f.store.clone();
        async move { store.list_tools(&q).await.unwrap() }
    };
    let on_server = query(ToolQuery { mcp_server_id: Some(server.id), ..tools(100) }).await;
    assert_eq!(names(&on_server.items, |t| &t.name), ["b_weather", "d_disabled"]);
    let enabled = query(ToolQuery { enabled: Some(true), ..tools(100) }).await;
    assert_eq!(enabled.total, 4);
    let disabled = query(ToolQuery { enabled: Some(false), ..tools(100) }).await;
    assert_eq!(names(&disabled.items, |t| &t.name), ["d_disabled"]);
    let weather = query(ToolQuery { search: Some("weather".into()), ..tools(100) }).await;
    assert_eq!(names(&weather.items, |t| &t.name), ["b_weather", "d_disabled"], "description, any case");
    let by_name = query(ToolQuery { search: Some("CALC".into()), ..tools(100) }).await;
    assert_eq!(names(&by_name.items, |t| &t.name), ["c_calc"]);
    let percent = query(ToolQuery { search: Some("0%".into()), ..tools(100) }).await;
    assert_eq!(names(&percent.items, |t| &t.name), ["a_files"], "% is literal");
    let underscore = query(ToolQuery { search: Some("r_s".into()), ..tools(100) }).await;
    assert_eq!(names(&underscore.items, |t| &t.name), ["e_under_score"], "_ is literal");
    let combined = query(ToolQuery { search: Some("weather".into()), enabled: Some(true), ..tools(100) }).await;
    assert_eq!(combined.total, 1);
    let named = ["c_calc", "d_disabled", "no_such_tool"].map(String::from).to_vec();
    let by_names = query(ToolQuery { names: named.clone(), ..tools(100) }).await;
    assert_eq!(names(&by_names.items, |t| &t.name), ["c_calc", "d_disabled"], "exact names; unknown ones left out");
    let enabled_named = query(ToolQuery { names: named, enabled: Some(true), ..tools(100) }).await;
    assert_eq!(names(&enabled_named.items, |t| &t.name), ["c_calc"]);

    let page = query(ToolQuery { offset: 1, ..tools(2) }).await;
    assert_eq!(names(&page.items, |t| &t.name), ["b_weather", "c_calc"]);
    assert_eq!((page.total, page.has_more), (5, true));
    let last = query(ToolQuery { offset: 3, ..tools(2) }).await;
    assert_eq!((last.items.len(), last.has_more), (2, false));
    let beyond = query(ToolQuery { offset: 50, ..tools(2) }).await;
    assert_eq!((beyond.items.len(), beyond.total, beyond.has_more), (0, 5, false));
    let none = query(ToolQuery { search: Some("nothing matches".into()), ..tools(10) }).await;
    assert_eq!((none.items.len(), none.total), (0, 0));
}

pub async fn tool_cursor_walks_every_item_once(f: &Fixture) {
    let mut expected = Vec::new();
    for i in 0..23 {
        let name = format!("tool_{i:02}");
        f.store.create_tool(tool(&name, "t")).await.unwrap();
        expected.push(name);
    }
    let mut seen = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = f.store.list_tools(&ToolQuery { after: after.clone(), ..tools(7) }).await.unwrap();
        assert_eq!(page.total, 23);
        seen.extend(names(&page.items, |t| &t.name));
        if !page.has_more {
            break;
        }
        after = page.items.last().map(|t| Cursor { name: t.name.clone() });
    }
    assert_eq!(seen, expected);
}

pub async fn server_round_trip_and_update(f: &Fixture) {
    let stdio = ServerConfig {
        name: "everything (stdio) ✓".into(),
        description: None,
        endpoint: String::new(),
        authentication: Authentication::default(),
        capabilities: vec!["tools".into()],
        health_check_url: None,
        enabled: false,
        transport: Transport::Stdio,
        stdio: Some(StdioCommand {
            command: "node".into(),
            args: vec!["dist/index.js".into(), "stdio".into()],
            env: vec![
                EnvVar { name: "LOG".into(), value: EnvValue::Literal("debug".into()) },
                EnvVar { name: "TOKEN".into(), value: EnvValue::Secret("gh-token".into()) },
            ],
            working_directory: Some("/srv/mcp".into()),
        }),
        tool_prefix: Some(String::new()),
    };
    let created = f.store.create_server(stdio.clone()).await.unwrap();
    assert_eq!(created.config, stdio);
    assert_eq!(
        (created.status, created.last_health_check, created.protocol_version.as_str()),
        (ServerStatus::Unknown, None, "")
    );
    assert_eq!(f.store.get_server(created.id).await.unwrap(), created, "reads back exactly as created");

    let http = ServerConfig {
        authentication: Authentication {
            bearer_secret: Some("mcp-token".into()),
            header_secrets: BTreeMap::from([("X-Api-Key".to_owned(), "mcp-key-{user_id}".to_owned())]),
            per_user: true,
        },
        health_check_url: Some("http://127.0.0.1:3001/health".into()),
        tool_prefix: Some("ev_".into()),
        ..http_server("everything")
    };
    let updated = f.store.update_server(created.id, http.clone()).await.unwrap();
    assert_eq!(updated.config, http);
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(f.store.get_server(created.id).await.unwrap(), updated);
    assert!(matches!(f.store.get_server(Uuid::now_v7()).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.update_server(Uuid::now_v7(), http).await, Err(StoreError::NotFound)));
}

pub async fn servers_filter_search_and_page(f: &Fixture) {
    for (name, enabled) in [("gamma", true), ("alpha", true), ("beta", false), ("Delta", true)] {
        f.store.create_server(ServerConfig { enabled, ..http_server(name) }).await.unwrap();
    }
    let all = f.store.list_servers(&servers(100)).await.unwrap();
    assert_eq!(names(&all.items, |s| &s.config.name), ["Delta", "alpha", "beta", "gamma"], "byte order");
    let enabled = f.store.list_servers(&ServerQuery { enabled: Some(false), ..servers(10) }).await.unwrap();
    assert_eq!(names(&enabled.items, |s| &s.config.name), ["beta"]);
    let search = f.store.list_servers(&ServerQuery { search: Some("ELTA".into()), ..servers(10) }).await.unwrap();
    assert_eq!(names(&search.items, |s| &s.config.name), ["Delta"]);
    let by_description =
        f.store.list_servers(&ServerQuery { search: Some("TA SERVER".into()), ..servers(10) }).await.unwrap();
    assert_eq!(names(&by_description.items, |s| &s.config.name), ["Delta", "beta"]);
    let page = f.store.list_servers(&ServerQuery { offset: 1, ..servers(2) }).await.unwrap();
    assert_eq!(
        (names(&page.items, |s| &s.config.name), page.total, page.has_more),
        (vec!["alpha".to_owned(), "beta".to_owned()], 4, true)
    );
    let after = Cursor { name: "beta".into() };
    let rest = f.store.list_servers(&ServerQuery { after: Some(after), ..servers(10) }).await.unwrap();
    assert_eq!((names(&rest.items, |s| &s.config.name), rest.has_more), (vec!["gamma".to_owned()], false));
}

pub async fn deleting_a_server_deletes_its_tools(f: &Fixture) {
    let doomed = f.store.create_server(http_server("doomed")).await.unwrap();
    let kept = f.store.create_server(http_server("kept")).await.unwrap();
    f.store.sync_tools(doomed.id, vec![discovered("echo", "e"), discovered("add", "a")]).await.unwrap();
    f.store.create_tool(ToolDefinition { mcp_server_id: Some(doomed.id), ..tool("direct", "d") }).await.unwrap();
    f.store.sync_tools(kept.id, vec![discovered("echo", "e")]).await.unwrap();
    f.store.create_tool(tool("free", "f")).await.unwrap();

    let (server, deleted) = f.store.delete_server(doomed.id).await.unwrap();
    assert_eq!(server.id, doomed.id);
    assert_eq!(names(&deleted, |t| &t.name), ["direct", "doomed_add", "doomed_echo"]);
    let left = f.store.list_tools(&tools(100)).await.unwrap();
    assert_eq!(names(&left.items, |t| &t.name), ["free", "kept_echo"]);
    assert!(matches!(f.store.get_server(doomed.id).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.delete_server(doomed.id).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.sync_tools(doomed.id, vec![]).await, Err(StoreError::NotFound)));
}

pub async fn sync_creates_updates_and_disables(f: &Fixture) {
    let server = f.store.create_server(http_server("everything")).await.unwrap();
    let echo = DiscoveredTool {
        title: Some("Echo".into()),
        output_schema: Some(object(serde_json::json!({"type": "object"}))),
        annotations: Some(ToolAnnotations { idempotent_hint: Some(true), ..Default::default() }),
        ..discovered("echo", "Echoes")
    };
    let first = f.store.sync_tools(server.id, vec![echo.clone(), discovered("get-sum", "Adds")]).await.unwrap();
    assert_eq!(names(&first.created, |t| &t.name), ["everything_echo", "everything_get-sum"]);
    assert!(first.updated.is_empty() && first.disabled.is_empty());
    assert_eq!(first.tools, first.created, "the server's tools, by name");
    let created_echo = &first.created[0];
    assert_eq!(created_echo.remote_name.as_deref(), Some("echo"));
    assert_eq!(created_echo.title.as_deref(), Some("Echo"));
    assert_eq!(created_echo.annotations, echo.annotations);
    assert_eq!(created_echo.mcp_server_id, Some(server.id));
    assert_eq!(f.store.get_tool(created_echo.id).await.unwrap(), *created_echo);

    let same = f.store.sync_tools(server.id, vec![discovered("get-sum", "Adds"), echo.clone()]).await.unwrap();
    assert!(same.created.is_empty() && same.updated.is_empty() && same.disabled.is_empty(), "{same:?}");
    assert_eq!(same.tools, first.tools);

    let changed =
        f.store.sync_tools(server.id, vec![DiscoveredTool { description: "Echoes back".into(), ..echo.clone() }]).await;
    let changed = changed.unwrap();
    assert_eq!(names(&changed.updated, |t| &t.name), ["everything_echo"]);
    assert_eq!(changed.updated[0].id, created_echo.id, "matched by remote name");
    assert_eq!(changed.updated[0].created_at, created_echo.created_at);
    assert_eq!(names(&changed.disabled, |t| &t.name), ["everything_get-sum"]);
    assert!(!changed.disabled[0].enabled);
    assert_eq!(changed.tools.len(), 2, "disabled, not deleted");

    let back = f.store.sync_tools(server.id, vec![echo.clone(), discovered("get-sum", "Adds")]).await.unwrap();
    assert_eq!(names(&back.updated, |t| &t.name), ["everything_echo", "everything_get-sum"]);
    assert!(back.tools.iter().all(|t| t.enabled), "a withdrawn tool comes back enabled");

    // Disabled by hand: it stays disabled when the server offers it again.
    let sum = back.tools.iter().find(|t| t.remote_name.as_deref() == Some("get-sum")).unwrap().clone();
    let manual = ToolDefinition {
        name: sum.name.clone(),
        description: sum.description.clone(),
        schema: sum.schema.clone(),
        mcp_server_id: sum.mcp_server_id,
        enabled: false,
        metadata: sum.metadata.clone(),
        title: None,
        output_schema: None,
        annotations: None,
    };
    let manual = f.store.update_tool(sum.id, manual).await.unwrap();
    assert_eq!(manual.remote_name.as_deref(), Some("get-sum"), "an update keeps the remote name");
    f.store.sync_tools(server.id, vec![echo.clone()]).await.unwrap();
    let again = f.store.sync_tools(server.id, vec![echo, discovered("get-sum", "Adds")]).await.unwrap();
    assert!(!f.store.get_tool(sum.id).await.unwrap().enabled, "{again:?}");
}

pub async fn sync_names_tools_uniquely(f: &Fixture) {
    f.store.create_tool(tool("srv_echo", "taken by hand")).await.unwrap();
    let server = f.store.create_server(http_server("srv")).await.unwrap();
    let long = "l".repeat(80);
    let outcome = f
        .store
        .sync_tools(server.id, vec![discovered("echo", "e"), discovered("a.b c", "x"), discovered(&long, "long")])
        .await
        .unwrap();
    let mut created = names(&outcome.created, |t| &t.name);
    created.sort();
    let long_name = format!("srv_{}", "l".repeat(60));
    assert_eq!(created, ["srv_a_b_c".to_owned(), "srv_echo_2".to_owned(), long_name]);

    // Another server offering the same tool gets its own prefix; an explicit prefix wins.
    let other = f.store.create_server(ServerConfig { tool_prefix: Some("x-".into()), ..http_server("other") }).await;
    let other = other.unwrap();
    let theirs = f.store.sync_tools(other.id, vec![discovered("echo", "e")]).await.unwrap();
    assert_eq!(names(&theirs.created, |t| &t.name), ["x-echo"]);

    // A new prefix renames the server's tools on the next sync; ids stay.
    let renamed = ServerConfig { tool_prefix: Some("ev_".into()), ..http_server("srv") };
    f.store.update_server(server.id, renamed).await.unwrap();
    let echo_id = outcome.created.iter().find(|t| t.remote_name.as_deref() == Some("echo")).unwrap().id;
    let after = f.store.sync_tools(server.id, vec![discovered("echo", "e")]).await.unwrap();
    let echo = after.tools.iter().find(|t| t.id == echo_id).unwrap();
    assert_eq!(echo.name, "ev_echo");
    assert!(f.store.get_tool_by_name("srv_echo").await.is_ok(), "the hand-made tool is untouched");
}

pub async fn handshake_and_health_are_recorded(f: &Fixture) {
    let server = f.store.create_server(http_server("hs")).await.unwrap();
    let handshake = Handshake {
        capabilities: vec!["tools".into(), "resources".into()],
        protocol_version: "2025-06-18".into(),
        server_info: "mcp-servers/everything 1.0.0".into(),
    };
    let recorded = f.store.record_handshake(server.id, handshake.clone()).await.unwrap();
    assert_eq!(recorded.config.capabilities, handshake.capabilities);
    assert_eq!(
        (recorded.protocol_version.as_str(), recorded.server_info.as_str()),
        ("2025-06-18", "mcp-servers/everything 1.0.0")
    );
    let again = f.store.record_handshake(server.id, handshake).await.unwrap();
    assert_eq!(again, recorded, "the same handshake changes nothing");
    assert_eq!(f.store.get_server(server.id).await.unwrap(), recorded);

    let at = agentmesh_mcp_broker::store::now();
    let first = f.store.record_health(server.id, ServerStatus::Healthy, at, "ping ok").await.unwrap();
    assert_eq!(
        (first.previous, first.server.status, first.server.last_health_check),
        (ServerStatus::Unknown, ServerStatus::Healthy, Some(at))
    );
    let second = f.store.record_health(server.id, ServerStatus::Healthy, at, "ping ok").await.unwrap();
    assert_eq!(second.previous, ServerStatus::Healthy);
    let down = f.store.record_health(server.id, ServerStatus::Unhealthy, at, "connection refused").await.unwrap();
    assert_eq!((down.previous, down.server.status), (ServerStatus::Healthy, ServerStatus::Unhealthy));
    assert_eq!(f.store.get_server(server.id).await.unwrap(), down.server);
    assert!(matches!(
        f.store.record_health(Uuid::now_v7(), ServerStatus::Healthy, at, "").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(f.store.record_handshake(Uuid::now_v7(), Handshake::default()).await, Err(StoreError::NotFound)));
}

pub async fn writes_emit_domain_events(f: &Fixture) {
    let made = f.store.create_tool(tool("ev_tool", "t")).await.unwrap();
    f.store.update_tool(made.id, tool("ev_tool", "t2")).await.unwrap();
    f.store.delete_tool(made.id).await.unwrap();
    let server = f.store.create_server(http_server("ev")).await.unwrap();
    f.store.update_server(server.id, ServerConfig { enabled: false, ..http_server("ev") }).await.unwrap();
    let synced = f.store.sync_tools(server.id, vec![discovered("echo", "e")]).await.unwrap();
    f.store.sync_tools(server.id, vec![discovered("echo", "e")]).await.unwrap();
    let handshake = Handshake { protocol_version: "2025-06-18".into(), ..Handshake::default() };
    f.store.record_handshake(server.id, handshake).await.unwrap();
    let at = agentmesh_mcp_broker::store::now();
    f.store.record_health(server.id, ServerStatus::Healthy, at, "ok").await.unwrap();
    f.store.record_health(server.id, ServerStatus::Healthy, at, "ok").await.unwrap();
    f.store.delete_server(server.id).await.unwrap();

    let echo = synced.created[0].id;
    let expected = [
        ("agentmesh.tool.created", made.id),
        ("agentmesh.tool.updated", made.id),
        ("agentmesh.tool.deleted", made.id),
        ("agentmesh.mcp_server.created", server.id),
        ("agentmesh.mcp_server.updated", server.id),
        ("agentmesh.tool.created", echo),
        ("agentmesh.mcp_server.updated", server.id),
        ("agentmesh.mcp_server.health_changed", server.id),
        ("agentmesh.tool.deleted", echo),
        ("agentmesh.mcp_server.deleted", server.id),
    ];
    let mut stream = f.bus.subscribe(SubscriptionSpec::ephemeral(vec![">".into()])).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events arrived: {seen:?}", seen.len(), expected.len()))
            .unwrap()
            .unwrap();
        let event = delivery.event().clone();
        delivery.ack().await.unwrap();
        assert_eq!(event.source(), "agentmesh/mcp-broker");
        seen.push((event.event_type().to_owned(), event.subject().unwrap_or_default().parse::<Uuid>().unwrap(), event));
    }
    let kinds: Vec<(&str, Uuid)> = seen.iter().map(|(t, s, _)| (t.as_str(), *s)).collect();
    assert_eq!(kinds, expected, "one event per change, in write order, none for unchanged syncs and health");
    // Nothing more: the unchanged sync and the repeated health observation emitted nothing.
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err());

    let created = pb::ToolCreated::decode(seen[0].2.data().clone()).unwrap().tool.unwrap();
    assert_eq!((created.name.as_str(), created.title.as_deref()), ("ev_tool", Some("Title of ev_tool")));
    assert_eq!(seen[0].2.data_schema(), Some("agentmesh.events.v1.ToolCreated"));
    let deleted = pb::ToolDeleted::decode(seen[8].2.data().clone()).unwrap();
    assert_eq!(deleted.name, "ev_echo");
    let health = pb::McpServerHealthChanged::decode(seen[7].2.data().clone()).unwrap();
    assert_eq!((health.previous_status, health.current_status, health.reason.as_str()), (0, 1, "ok"));
    let server_created = pb::McpServerCreated::decode(seen[3].2.data().clone()).unwrap().mcp_server.unwrap();
    assert_eq!(server_created.endpoint, "http://127.0.0.1:3001/mcp");
}
