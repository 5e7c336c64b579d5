//! Contract tests: the protobuf contract keeps the REST mapping, status codes, bounds and
//! conventions the gateway and the services rely on. Each test fails if the contract
//! regresses.

use std::collections::{BTreeSet, HashMap};

use agentmesh_proto::agentmesh::common::v1::{FieldRules, MethodRules};
use agentmesh_proto::google::api::HttpRule;
use agentmesh_proto::google::api::http_rule::Pattern;
use agentmesh_proto::options::{event_rules, field_rules, http_rule, method_rules};
use agentmesh_proto::{descriptor_pool, doc_comment};
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MethodDescriptor, ServiceDescriptor};

const PUBLIC_SERVICES: &[&str] = &[
    "agentmesh.session.v1.SessionService",
    "agentmesh.agent.v1.AgentService",
    "agentmesh.health.v1.HealthService",
    "agentmesh.auth.v1.AuthService",
];

const INTERNAL_SERVICES: &[&str] = &[
    "agentmesh.llm.v1.LlmService",
    "agentmesh.secrets.v1.SecretsService",
    "agentmesh.health.v1.DependencyHealthService",
];

/// Methods of otherwise public services that are internal (gRPC only).
const INTERNAL_METHODS: &[&str] = &["agentmesh.mcp.v1.McpService.InvokeTool"];

/// Every REST endpoint of the contract: (method, path template, RPC full name).
const ROUTES: &[(&str, &str, &str)] = &[
    // Sessions.
    ("POST", "/api/v1/sessions", "agentmesh.session.v1.SessionService.CreateSession"),
    ("GET", "/api/v1/sessions", "agentmesh.session.v1.SessionService.ListSessions"),
    ("GET", "/api/v1/sessions/{session_id}", "agentmesh.session.v1.SessionService.GetSession"),
    ("PUT", "/api/v1/sessions/{session_id}", "agentmesh.session.v1.SessionService.UpdateSession"),
    ("DELETE", "/api/v1/sessions/{session_id}", "agentmesh.session.v1.SessionService.DeleteSession"),
    ("POST", "/api/v1/sessions/bulk-create", "agentmesh.session.v1.SessionService.BulkCreateSessions"),
    ("DELETE", "/api/v1/sessions/bulk-delete", "agentmesh.session.v1.SessionService.BulkDeleteSessions"),
    // Messages.
    ("POST", "/api/v1/sessions/{session_id}/messages", "agentmesh.session.v1.SessionService.CreateMessage"),
    ("GET", "/api/v1/sessions/{session_id}/messages", "agentmesh.session.v1.SessionService.ListMessages"),
    ("GET", "/api/v1/messages/{message_id}", "agentmesh.session.v1.SessionService.GetMessage"),
    ("PUT", "/api/v1/messages/{message_id}", "agentmesh.session.v1.SessionService.UpdateMessage"),
    ("DELETE", "/api/v1/messages/{message_id}", "agentmesh.session.v1.SessionService.DeleteMessage"),
    // Agents.
    ("POST", "/api/v1/agents", "agentmesh.agent.v1.AgentService.CreateAgent"),
    ("GET", "/api/v1/agents", "agentmesh.agent.v1.AgentService.ListAgents"),
    ("GET", "/api/v1/agents/{agent_id}", "agentmesh.agent.v1.AgentService.GetAgent"),
    ("PUT", "/api/v1/agents/{agent_id}", "agentmesh.agent.v1.AgentService.UpdateAgent"),
    ("DELETE", "/api/v1/agents/{agent_id}", "agentmesh.agent.v1.AgentService.DeleteAgent"),
    ("POST", "/api/v1/agents/{agent_id}/execute", "agentmesh.agent.v1.AgentService.ExecuteAgent"),
    ("POST", "/api/v1/agents/{agent_id}/execute/stream", "agentmesh.agent.v1.AgentService.ExecuteAgentStream"),
    // Runs.
    ("GET", "/api/v1/runs/{run_id}", "agentmesh.agent.v1.AgentService.GetRun"),
    ("GET", "/api/v1/sessions/{session_id}/runs", "agentmesh.agent.v1.AgentService.ListSessionRuns"),
    ("POST", "/api/v1/runs/{run_id}/cancel", "agentmesh.agent.v1.AgentService.CancelRun"),
    ("POST", "/api/v1/runs/{run_id}/approve", "agentmesh.agent.v1.AgentService.ApproveRun"),
    ("POST", "/api/v1/runs/{run_id}/reject", "agentmesh.agent.v1.AgentService.RejectRun"),
    ("POST", "/api/v1/agents/{agent_id}/runs", "agentmesh.agent.v1.AgentService.CreateRun"),
    ("GET", "/api/v1/runs/{run_id}/stream", "agentmesh.agent.v1.AgentService.StreamRun"),
    // Tools.
    ("POST", "/api/v1/tools", "agentmesh.mcp.v1.McpService.CreateTool"),
    ("GET", "/api/v1/tools", "agentmesh.mcp.v1.McpService.ListTools"),
    ("GET", "/api/v1/tools/{tool_id}", "agentmesh.mcp.v1.McpService.GetTool"),
    ("PUT", "/api/v1/tools/{tool_id}", "agentmesh.mcp.v1.McpService.UpdateTool"),
    ("DELETE", "/api/v1/tools/{tool_id}", "agentmesh.mcp.v1.McpService.DeleteTool"),
    // MCP servers.
    ("POST", "/api/v1/mcp-servers", "agentmesh.mcp.v1.McpService.CreateMcpServer"),
    ("GET", "/api/v1/mcp-servers", "agentmesh.mcp.v1.McpService.ListMcpServers"),
    ("GET", "/api/v1/mcp-servers/{mcp_server_id}", "agentmesh.mcp.v1.McpService.GetMcpServer"),
    ("PUT", "/api/v1/mcp-servers/{mcp_server_id}", "agentmesh.mcp.v1.McpService.UpdateMcpServer"),
    ("DELETE", "/api/v1/mcp-servers/{mcp_server_id}", "agentmesh.mcp.v1.McpService.DeleteMcpServer"),
    ("POST", "/api/v1/mcp-servers/{mcp_server_id}/refresh", "agentmesh.mcp.v1.McpService.RefreshMcpServer"),
    ("GET", "/api/v1/mcp-servers/{mcp_server_id}/tools", "agentmesh.mcp.v1.McpService.ListMcpServerTools"),
    // Health.
    ("GET", "/api/v1/health", "agentmesh.health.v1.HealthService.CheckLiveness"),
    ("GET", "/api/v1/health/ready", "agentmesh.health.v1.HealthService.CheckReadiness"),
    ("GET", "/api/v1/health/services", "agentmesh.health.v1.HealthService.ListServiceHealth"),
    // Auth.
    ("POST", "/api/v1/auth/token", "agentmesh.auth.v1.AuthService.IssueToken"),
    ("POST", "/api/v1/auth/refresh", "agentmesh.auth.v1.AuthService.RefreshToken"),
    ("POST", "/api/v1/auth/api-keys", "agentmesh.auth.v1.AuthService.CreateApiKey"),
    ("GET", "/api/v1/auth/api-keys", "agentmesh.auth.v1.AuthService.ListApiKeys"),
    ("DELETE", "/api/v1/auth/api-keys/{api_key_id}", "agentmesh.auth.v1.AuthService.RevokeApiKey"),
];

/// REST list endpoints that must return a bare JSON array: (RPC, response_body field).
const BARE_ARRAYS: &[(&str, &str)] = &[
    ("agentmesh.session.v1.SessionService.ListSessions", "sessions"),
    ("agentmesh.session.v1.SessionService.BulkCreateSessions", "sessions"),
    ("agentmesh.session.v1.SessionService.ListMessages", "messages"),
    ("agentmesh.agent.v1.AgentService.ListAgents", "agents"),
    ("agentmesh.agent.v1.AgentService.ListSessionRuns", "runs"),
    ("agentmesh.mcp.v1.McpService.ListTools", "tools"),
    ("agentmesh.mcp.v1.McpService.ListMcpServers", "mcp_servers"),
    ("agentmesh.mcp.v1.McpService.RefreshMcpServer", "tools"),
    ("agentmesh.mcp.v1.McpService.ListMcpServerTools", "tools"),
    ("agentmesh.health.v1.HealthService.ListServiceHealth", "services"),
    ("agentmesh.auth.v1.AuthService.ListApiKeys", "api_keys"),
];

fn pool() -> &'static DescriptorPool {
    descriptor_pool()
}

fn service(name: &str) -> ServiceDescriptor {
    pool().get_service_by_name(name).unwrap_or_else(|| panic!("service {name} is missing"))
}

fn method(full_name: &str) -> MethodDescriptor {
    let (service_name, method_name) =
        full_name.rsplit_once('.').unwrap_or_else(|| panic!("bad method name {full_name}"));
    service(service_name)
        .methods()
        .find(|m| m.name() == method_name)
        .unwrap_or_else(|| panic!("method {full_name} is missing"))
}

fn field(message: &str, name: &str) -> FieldDescriptor {
    pool()
        .get_message_by_name(message)
        .unwrap_or_else(|| panic!("message {message} is missing"))
        .get_field_by_name(name)
        .unwrap_or_else(|| panic!("field {message}.{name} is missing"))
}

fn rules_of(message: &str, name: &str) -> FieldRules {
    field_rules(&field(message, name)).unwrap_or_else(|| panic!("{message}.{name} has no FieldRules"))
}

fn verb_and_path(rule: &HttpRule) -> (&'static str, String) {
    match rule.pattern.as_ref() {
        Some(Pattern::Get(path)) => ("GET", path.clone()),
        Some(Pattern::Put(path)) => ("PUT", path.clone()),
        Some(Pattern::Post(path)) => ("POST", path.clone()),
        Some(Pattern::Delete(path)) => ("DELETE", path.clone()),
        Some(Pattern::Patch(path)) => ("PATCH", path.clone()),
        Some(Pattern::Custom(custom)) => ("CUSTOM", custom.path.clone()),
        None => ("NONE", String::new()),
    }
}

fn all_agentmesh_methods() -> Vec<MethodDescriptor> {
    pool()
        .services()
        .filter(|s| s.full_name().starts_with("agentmesh."))
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect()
}

fn http_rules() -> HashMap<String, HttpRule> {
    all_agentmesh_methods()
        .into_iter()
        .filter_map(|m| http_rule(&m).map(|rule| (m.full_name().to_owned(), rule)))
        .collect()
}

#[test]
fn descriptor_pool_decodes_every_package() {
    let pool = pool();
    for package in [
        "agentmesh.common.v1",
        "agentmesh.session.v1",
        "agentmesh.agent.v1",
        "agentmesh.mcp.v1",
        "agentmesh.llm.v1",
        "agentmesh.secrets.v1",
        "agentmesh.health.v1",
        "agentmesh.auth.v1",
        "agentmesh.events.v1",
        "google.api",
    ] {
        assert!(pool.files().any(|f| f.package_name() == package), "package {package} missing from the descriptor set");
    }
    for extension in
        ["google.api.http", "agentmesh.common.v1.field", "agentmesh.common.v1.method", "agentmesh.common.v1.event"]
    {
        assert!(pool.get_extension_by_name(extension).is_some(), "extension {extension} missing");
    }
    assert_eq!(pool.get_extension_by_name("google.api.http").map(|e| e.number()), Some(72_295_728));
}

#[test]
fn public_methods_have_http_rules_under_api_v1() {
    let mut public: Vec<MethodDescriptor> =
        PUBLIC_SERVICES.iter().flat_map(|name| service(name).methods().collect::<Vec<_>>()).collect();
    public.extend(
        service("agentmesh.mcp.v1.McpService").methods().filter(|m| !INTERNAL_METHODS.contains(&m.full_name())),
    );
    assert!(public.len() >= ROUTES.len());
    for m in public {
        let rule = http_rule(&m).unwrap_or_else(|| panic!("{} has no google.api.http rule", m.full_name()));
        let (_, path) = verb_and_path(&rule);
        assert!(
            path.starts_with("/api/v1/") || path == "/api/v1/health",
            "{} maps to {path}, outside /api/v1",
            m.full_name()
        );
        assert!(rule.additional_bindings.is_empty(), "{} has additional bindings", m.full_name());
    }
}

#[test]
fn internal_methods_have_no_http_rule() {
    let mut internal: Vec<MethodDescriptor> =
        INTERNAL_SERVICES.iter().flat_map(|name| service(name).methods().collect::<Vec<_>>()).collect();
    internal.extend(INTERNAL_METHODS.iter().map(|name| method(name)));
    assert!(internal.len() >= 8);
    for m in internal {
        assert!(http_rule(&m).is_none(), "internal method {} must not be exposed over REST", m.full_name());
    }
}

#[test]
fn long_calls_declare_a_maximum_deadline_and_the_rest_keep_the_server_cap() {
    let declared: HashMap<String, u32> = all_agentmesh_methods()
        .into_iter()
        .filter_map(|m| {
            let seconds = method_rules(&m)?.max_deadline_seconds;
            (seconds > 0).then(|| (m.full_name().to_owned(), seconds))
        })
        .collect();
    let expected: HashMap<String, u32> = [
        ("agentmesh.agent.v1.AgentService.ExecuteAgent", 600),
        ("agentmesh.agent.v1.AgentService.ExecuteAgentStream", 600),
        ("agentmesh.agent.v1.AgentService.StreamRun", 600),
        ("agentmesh.llm.v1.LlmService.Chat", 300),
        ("agentmesh.llm.v1.LlmService.StreamChat", 300),
        ("agentmesh.mcp.v1.McpService.InvokeTool", 300),
        ("agentmesh.secrets.v1.SecretsService.WatchSecrets", 86_400),
    ]
    .into_iter()
    .map(|(name, seconds)| (name.to_owned(), seconds))
    .collect();
    assert_eq!(declared, expected);
}

#[test]
fn every_rest_route_is_present_with_its_method() {
    let rules = http_rules();
    for (verb, path, rpc) in ROUTES {
        let rule = rules.get(*rpc).unwrap_or_else(|| panic!("{rpc} has no HTTP rule (expected {verb} {path})"));
        assert_eq!(verb_and_path(rule), (*verb, (*path).to_owned()), "{rpc}");
    }
    // No two RPCs share a route, and no route exists that the table does not know.
    let mut seen = BTreeSet::new();
    for (rpc, rule) in &rules {
        let route = verb_and_path(rule);
        assert!(seen.insert(route.clone()), "duplicate route {route:?}");
        assert!(
            ROUTES.iter().any(|(verb, path, name)| name == rpc && *verb == route.0 && *path == route.1),
            "{rpc} maps to {route:?}, which the route table does not list"
        );
    }
}

#[test]
fn http_rules_bind_existing_fields() {
    for (rpc, rule) in http_rules() {
        let m = method(&rpc);
        let input = m.input();
        let (_, path) = verb_and_path(&rule);
        for segment in path.split('/') {
            if let Some(var) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let f = input
                    .get_field_by_name(var)
                    .unwrap_or_else(|| panic!("{rpc}: path variable {var} is not a request field"));
                assert_eq!(f.kind(), Kind::String, "{rpc}: path variable {var} must be a string");
            }
        }
        if !rule.body.is_empty() && rule.body != "*" {
            assert!(input.get_field_by_name(&rule.body).is_some(), "{rpc}: body field {} missing", rule.body);
        }
        let (verb, _) = verb_and_path(&rule);
        if verb == "GET" {
            assert!(rule.body.is_empty(), "{rpc}: GET with a body");
        }
        if !rule.response_body.is_empty() {
            assert!(
                m.output().get_field_by_name(&rule.response_body).is_some(),
                "{rpc}: response_body field {} missing",
                rule.response_body
            );
        }
    }
}

#[test]
fn list_endpoints_return_bare_arrays() {
    for (rpc, field_name) in BARE_ARRAYS {
        let m = method(rpc);
        let rule = http_rule(&m).unwrap_or_else(|| panic!("{rpc} has no HTTP rule"));
        assert_eq!(rule.response_body, *field_name, "{rpc}");
        let f = m.output().get_field_by_name(field_name).unwrap_or_else(|| panic!("{rpc}: {field_name} missing"));
        assert!(f.is_list(), "{rpc}: {field_name} must be repeated");
    }
    // Every List* RPC paginates: limit/offset/page_token in, next_page_token/total_count out.
    for m in all_agentmesh_methods() {
        if !m.name().starts_with("List") || http_rule(&m).is_none() || m.name() == "ListServiceHealth" {
            continue;
        }
        for name in ["limit", "offset"] {
            let f = m.input().get_field_by_name(name).unwrap_or_else(|| panic!("{}: no {name}", m.full_name()));
            assert!(f.supports_presence(), "{}: {name} must be optional", m.full_name());
            assert_eq!(f.kind(), Kind::Int32, "{}: {name}", m.full_name());
        }
        assert!(m.input().get_field_by_name("page_token").is_some(), "{}", m.full_name());
        assert!(m.output().get_field_by_name("next_page_token").is_some(), "{}", m.full_name());
        let total =
            m.output().get_field_by_name("total_count").unwrap_or_else(|| panic!("{}: no total_count", m.full_name()));
        assert_eq!(total.kind(), Kind::Int64);
    }
}

#[test]
fn wrapper_responses_unwrap_to_the_entity() {
    for (rpc, field_name) in [
        ("agentmesh.session.v1.SessionService.CreateSession", "session"),
        ("agentmesh.session.v1.SessionService.GetSession", "session"),
        ("agentmesh.session.v1.SessionService.UpdateSession", "session"),
        ("agentmesh.session.v1.SessionService.CreateMessage", "message"),
        ("agentmesh.session.v1.SessionService.GetMessage", "message"),
        ("agentmesh.session.v1.SessionService.UpdateMessage", "message"),
        ("agentmesh.agent.v1.AgentService.CreateAgent", "agent"),
        ("agentmesh.agent.v1.AgentService.GetAgent", "agent"),
        ("agentmesh.agent.v1.AgentService.UpdateAgent", "agent"),
        ("agentmesh.agent.v1.AgentService.ExecuteAgent", "execution"),
        ("agentmesh.agent.v1.AgentService.ExecuteAgentStream", "event"),
        ("agentmesh.agent.v1.AgentService.GetRun", "run"),
        ("agentmesh.agent.v1.AgentService.CancelRun", "run"),
        ("agentmesh.agent.v1.AgentService.CreateRun", "run"),
        ("agentmesh.agent.v1.AgentService.ApproveRun", "run"),
        ("agentmesh.agent.v1.AgentService.RejectRun", "run"),
        ("agentmesh.agent.v1.AgentService.StreamRun", "event"),
        ("agentmesh.mcp.v1.McpService.GetTool", "tool"),
        ("agentmesh.mcp.v1.McpService.GetMcpServer", "mcp_server"),
    ] {
        let rule = http_rule(&method(rpc)).unwrap_or_else(|| panic!("{rpc} has no HTTP rule"));
        assert_eq!(rule.response_body, field_name, "{rpc}");
    }
    let execute = http_rule(&method("agentmesh.agent.v1.AgentService.ExecuteAgent"));
    assert_eq!(execute.map(|r| r.body).as_deref(), Some("execution"));
    let bulk_delete = http_rule(&method("agentmesh.session.v1.SessionService.BulkDeleteSessions"));
    assert_eq!(bulk_delete.map(|r| r.body).as_deref(), Some("session_ids"));
    let bulk_create = http_rule(&method("agentmesh.session.v1.SessionService.BulkCreateSessions"));
    assert_eq!(bulk_create.map(|r| r.body).as_deref(), Some("sessions"));
}

#[test]
fn streaming_rpcs_are_server_streaming() {
    for rpc in [
        "agentmesh.agent.v1.AgentService.ExecuteAgentStream",
        "agentmesh.agent.v1.AgentService.StreamRun",
        "agentmesh.llm.v1.LlmService.StreamChat",
        "agentmesh.secrets.v1.SecretsService.WatchSecrets",
    ] {
        let m = method(rpc);
        assert!(m.is_server_streaming() && !m.is_client_streaming(), "{rpc}");
    }
    let from = field("agentmesh.agent.v1.StreamRunRequest", "from_sequence");
    assert!(from.supports_presence());
    assert_eq!(from.kind(), Kind::Uint64);
    let kind = pool()
        .get_message_by_name("agentmesh.agent.v1.RunEvent")
        .and_then(|m| m.oneofs().find(|o| o.name() == "kind"))
        .map(|o| o.fields().map(|f| f.name().to_owned()).collect::<Vec<_>>());
    assert_eq!(
        kind,
        Some(
            [
                "run_started",
                "token",
                "tool_call",
                "tool_result",
                "message",
                "usage",
                "error",
                "run_completed",
                "interrupt",
                "step_restarted"
            ]
            .map(String::from)
            .to_vec()
        )
    );
}

#[test]
fn success_statuses_follow_the_rest_conventions() {
    let mut creates = 0;
    let mut deletes = 0;
    for m in all_agentmesh_methods() {
        if http_rule(&m).is_none() {
            continue;
        }
        let name = m.name();
        let status = method_rules(&m).map_or(0, |r| r.success_status);
        if name == "CreateRun" {
            // Starts work in the background: 202 Accepted with the run to follow.
            assert_eq!(status, 202, "{} must answer 202", m.full_name());
        } else if name.starts_with("Create") || name.starts_with("BulkCreate") {
            creates += 1;
            assert_eq!(status, 201, "{} must answer 201", m.full_name());
        } else if name.starts_with("Delete") || name.starts_with("BulkDelete") || name.starts_with("Revoke") {
            deletes += 1;
            assert_eq!(status, 204, "{} must answer 204", m.full_name());
            assert!(m.output().fields().next().is_none(), "{}: a 204 response must be empty", m.full_name());
        } else {
            assert_eq!(status, 0, "{} must answer 200", m.full_name());
        }
    }
    assert_eq!(creates, 7, "create endpoints");
    assert_eq!(deletes, 7, "delete endpoints");
}

#[test]
fn method_rules_carry_rate_limits_and_scopes() {
    let group = |rpc: &str| method_rules(&method(rpc)).map(|r| r.rate_limit_group);
    assert_eq!(group("agentmesh.session.v1.SessionService.CreateSession").as_deref(), Some("create_session"));
    assert_eq!(group("agentmesh.agent.v1.AgentService.ExecuteAgent").as_deref(), Some("execute_agent"));
    assert_eq!(group("agentmesh.agent.v1.AgentService.ExecuteAgentStream").as_deref(), Some("execute_agent"));
    // Every public method is either anonymous or requires at least one scope.
    for m in all_agentmesh_methods() {
        if http_rule(&m).is_none() {
            continue;
        }
        let rules: MethodRules = method_rules(&m).unwrap_or_else(|| panic!("{} has no MethodRules", m.full_name()));
        assert!(
            rules.allow_anonymous == rules.required_scopes.is_empty(),
            "{}: exactly one of allow_anonymous / required_scopes",
            m.full_name()
        );
        if rules.allow_anonymous {
            let service = m.parent_service();
            assert!(
                service.name() == "HealthService" || ["IssueToken", "RefreshToken"].contains(&m.name()),
                "{} must not be anonymous",
                m.full_name()
            );
        }
    }
}

/// (message, field, minimum, maximum, default)
type Bound = (&'static str, &'static str, Option<i64>, Option<i64>, &'static str);

#[test]
fn bounded_fields_carry_the_seed_numbers() {
    let cases: &[Bound] = &[
        ("agentmesh.session.v1.ListSessionsRequest", "limit", Some(1), Some(100), "20"),
        ("agentmesh.session.v1.ListSessionsRequest", "offset", Some(0), None, "0"),
        ("agentmesh.session.v1.ListMessagesRequest", "limit", Some(1), Some(200), "50"),
        ("agentmesh.session.v1.ListMessagesRequest", "offset", Some(0), None, "0"),
        ("agentmesh.agent.v1.ListAgentsRequest", "limit", Some(1), Some(100), "20"),
        ("agentmesh.agent.v1.ListAgentsRequest", "offset", Some(0), None, "0"),
        ("agentmesh.agent.v1.ListSessionRunsRequest", "limit", Some(1), Some(100), "20"),
        ("agentmesh.mcp.v1.ListToolsRequest", "limit", Some(1), Some(100), "20"),
        ("agentmesh.mcp.v1.ListMcpServersRequest", "limit", Some(1), Some(100), "20"),
        ("agentmesh.auth.v1.ListApiKeysRequest", "limit", Some(1), Some(100), "20"),
        ("agentmesh.common.v1.RetryConfig", "max_attempts", Some(1), None, "3"),
        ("agentmesh.common.v1.CircuitBreakerConfig", "failure_threshold", Some(1), None, "5"),
    ];
    for (message, name, minimum, maximum, default) in cases {
        let rules = rules_of(message, name);
        assert_eq!(rules.minimum, *minimum, "{message}.{name} minimum");
        assert_eq!(rules.maximum, *maximum, "{message}.{name} maximum");
        assert_eq!(rules.default_value, *default, "{message}.{name} default");
        assert!(field(message, name).supports_presence(), "{message}.{name} must be optional");
    }

    let sort_by = rules_of("agentmesh.session.v1.ListSessionsRequest", "sort_by");
    assert_eq!(sort_by.default_value, "\"last_activity\"");
    let sort_order = rules_of("agentmesh.session.v1.ListSessionsRequest", "sort_order");
    assert_eq!(sort_order.default_value, "\"desc\"");
    let role = rules_of("agentmesh.session.v1.CreateMessageRequest", "role");
    assert_eq!(role.default_value, "\"user\"");

    let bulk = rules_of("agentmesh.session.v1.BulkCreateSessionsRequest", "sessions");
    assert_eq!(bulk.max_items, 100);
    let ids = rules_of("agentmesh.session.v1.BulkDeleteSessionsRequest", "session_ids");
    assert_eq!((ids.max_items, ids.format.as_str()), (100, "uuid"));

    let title = rules_of("agentmesh.session.v1.CreateSessionRequest", "title");
    assert_eq!(title.max_length, 500);
    let user_id = rules_of("agentmesh.session.v1.CreateSessionRequest", "user_id");
    assert_eq!(user_id.max_length, 255);
    let name = rules_of("agentmesh.agent.v1.CreateAgentRequest", "name");
    assert!(name.required && name.min_length == 1 && name.max_length == 255);
}

#[test]
fn path_ids_are_required_uuids() {
    for (rpc, rule) in http_rules() {
        let (_, path) = verb_and_path(&rule);
        for segment in path.split('/') {
            if let Some(var) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let f = method(&rpc).input().get_field_by_name(var).unwrap_or_else(|| panic!("{rpc}: {var} missing"));
                let rules = field_rules(&f).unwrap_or_else(|| panic!("{rpc}: {var} has no rules"));
                assert!(rules.required, "{rpc}: {var} must be required");
                assert_eq!(rules.format, "uuid", "{rpc}: {var} must be a uuid");
            }
        }
    }
}

#[test]
fn field_rules_are_consistent() {
    for message in pool().all_messages() {
        for f in message.fields() {
            let Some(rules) = field_rules(&f) else {
                continue;
            };
            let at = f.full_name();
            if !rules.default_value.is_empty() {
                let value: serde_json::Value = serde_json::from_str(&rules.default_value)
                    .unwrap_or_else(|e| panic!("{at}: default {:?} is not JSON: {e}", rules.default_value));
                if let Some(n) = value.as_i64() {
                    assert!(rules.minimum.is_none_or(|min| n >= min), "{at}: default below minimum");
                    assert!(rules.maximum.is_none_or(|max| n <= max), "{at}: default above maximum");
                }
                if let (Kind::Enum(e), Some(s)) = (f.kind(), value.as_str()) {
                    let prefix = enum_prefix(e.name());
                    let wanted = format!("{prefix}_{}", s.to_ascii_uppercase());
                    assert!(e.get_value_by_name(&wanted).is_some(), "{at}: default {s} is no value of {}", e.name());
                }
            }
            if let (Some(min), Some(max)) = (rules.minimum, rules.maximum) {
                assert!(min <= max, "{at}: minimum above maximum");
            }
            if rules.max_items > 0 {
                assert!(f.is_list(), "{at}: max_items on a singular field");
            }
            if !rules.format.is_empty() {
                assert!(["uuid", "uri", "json"].contains(&rules.format.as_str()), "{at}: format {}", rules.format);
                assert_eq!(f.kind(), Kind::String, "{at}: format on a non-string");
            }
        }
    }
}

fn enum_prefix(enum_name: &str) -> String {
    let mut out = String::new();
    for (i, c) in enum_name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn enums_are_prefixed_and_start_unspecified() {
    let mut count = 0;
    for e in pool().all_enums() {
        if !e.full_name().starts_with("agentmesh.") {
            continue;
        }
        count += 1;
        let prefix = enum_prefix(e.name());
        let zero = e.get_value(0).unwrap_or_else(|| panic!("{} has no zero value", e.full_name()));
        assert_eq!(zero.name(), format!("{prefix}_UNSPECIFIED"), "{}", e.full_name());
        for value in e.values() {
            assert!(
                value.name().starts_with(&format!("{prefix}_")),
                "{} is not prefixed with {prefix}_",
                value.full_name()
            );
        }
    }
    assert!(count >= 13, "only {count} enums found");
}

#[test]
fn seed_enums_render_to_the_seed_strings() {
    let rendered = |full_name: &str| -> Vec<String> {
        let e = pool().get_enum_by_name(full_name).unwrap_or_else(|| panic!("{full_name} missing"));
        let prefix = format!("{}_", enum_prefix(e.name()));
        e.values()
            .filter(|v| v.number() != 0)
            .map(|v| v.name().trim_start_matches(&prefix).to_ascii_lowercase())
            .collect()
    };
    let strings = |values: &[&str]| values.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        rendered("agentmesh.common.v1.AgentStatus"),
        strings(&["idle", "processing", "waiting", "error", "completed"])
    );
    assert_eq!(rendered("agentmesh.common.v1.MessageRole"), strings(&["user", "assistant", "system", "tool"]));
    assert_eq!(
        rendered("agentmesh.common.v1.ExternalServiceType"),
        strings(&["llm_provider", "mcp_server", "database", "cache", "secret_manager", "message_queue"])
    );
    assert_eq!(rendered("agentmesh.common.v1.CircuitBreakerState"), strings(&["closed", "open", "half_open"]));
    assert_eq!(
        rendered("agentmesh.common.v1.ErrorCode"),
        strings(&[
            "validation_error",
            "authentication_error",
            "authorization_error",
            "rate_limit_error",
            "external_service_error",
            "circuit_breaker_open",
            "timeout_error",
            "internal_error",
            "not_found",
            "conflict",
            "method_not_allowed",
            "payload_too_large",
            "unsupported_media_type",
            "not_implemented",
        ])
    );
    assert_eq!(
        rendered("agentmesh.session.v1.SessionSortField"),
        strings(&["created_at", "updated_at", "last_activity"])
    );
    assert_eq!(rendered("agentmesh.common.v1.SortOrder"), strings(&["asc", "desc"]));
    assert_eq!(rendered("agentmesh.secrets.v1.SecretProvider"), strings(&["local", "aws", "azure", "gcp"]));
    assert_eq!(rendered("agentmesh.secrets.v1.SecretChangeKind"), strings(&["created", "rotated", "deleted"]));
    assert_eq!(
        rendered("agentmesh.agent.v1.RunStatus"),
        strings(&["queued", "running", "completed", "failed", "cancelled", "requires_action"])
    );
}

#[test]
fn seed_entities_have_their_fields() {
    let cases: &[(&str, &[&str])] = &[
        (
            "agentmesh.session.v1.Session",
            &["id", "user_id", "title", "metadata", "message_count", "last_activity", "created_at", "updated_at"],
        ),
        (
            "agentmesh.session.v1.Message",
            &[
                "id",
                "session_id",
                "role",
                "content",
                "metadata",
                "tool_calls",
                "tool_call_id",
                "parent_message_id",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "agentmesh.agent.v1.Agent",
            &[
                "id",
                "name",
                "description",
                "system_prompt",
                "model_config",
                "tools",
                "status",
                "metadata",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "agentmesh.mcp.v1.Tool",
            &[
                "id",
                "name",
                "description",
                "schema",
                "mcp_server_id",
                "enabled",
                "metadata",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "agentmesh.mcp.v1.McpServer",
            &[
                "id",
                "name",
                "description",
                "endpoint",
                "authentication",
                "capabilities",
                "health_check_url",
                "enabled",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "agentmesh.common.v1.ExternalService",
            &[
                "id",
                "name",
                "service_type",
                "endpoint",
                "authentication",
                "retry_config",
                "circuit_breaker_config",
                "health_check_url",
                "enabled",
            ],
        ),
        (
            "agentmesh.common.v1.ServiceHealth",
            &[
                "service_name",
                "service_type",
                "status",
                "last_check",
                "error_count",
                "success_count",
                "circuit_breaker_state",
                "metadata",
            ],
        ),
        (
            "agentmesh.common.v1.ErrorResponse",
            &["error", "code", "message", "details", "correlation_id", "timestamp", "path"],
        ),
        ("agentmesh.agent.v1.AgentExecutionRequest", &["session_id", "message", "agent_id", "stream", "metadata"]),
        (
            "agentmesh.agent.v1.AgentExecutionResponse",
            &["session_id", "message_id", "content", "metadata", "tool_calls", "execution_time_ms", "run_id", "usage"],
        ),
    ];
    for (message, fields) in cases {
        let descriptor = pool().get_message_by_name(message).unwrap_or_else(|| panic!("{message} missing"));
        for name in *fields {
            assert!(descriptor.get_field_by_name(name).is_some(), "{message}.{name} missing");
        }
    }
    // Seed `Optional[...]` fields keep explicit presence.
    for (message, name) in [
        ("agentmesh.session.v1.Session", "user_id"),
        ("agentmesh.session.v1.Session", "title"),
        ("agentmesh.session.v1.Message", "parent_message_id"),
        ("agentmesh.agent.v1.Agent", "description"),
        ("agentmesh.agent.v1.Agent", "system_prompt"),
        ("agentmesh.mcp.v1.Tool", "mcp_server_id"),
        ("agentmesh.mcp.v1.McpServer", "health_check_url"),
        ("agentmesh.common.v1.ErrorDetail", "retry_after"),
        ("agentmesh.common.v1.ErrorDetail", "correlation_id"),
    ] {
        assert!(field(message, name).supports_presence(), "{message}.{name} must be optional");
    }
    let tool_calls = field("agentmesh.session.v1.Message", "tool_calls");
    assert!(tool_calls.is_list());
    assert!(matches!(tool_calls.kind(), Kind::Message(m) if m.full_name() == "agentmesh.session.v1.ToolCall"));
    assert!(field("agentmesh.session.v1.Message", "tool_call_id").supports_presence());
}

#[test]
fn events_document_their_subjects() {
    let expected = [
        ("SessionCreated", "agentmesh.session.created"),
        ("SessionUpdated", "agentmesh.session.updated"),
        ("SessionDeleted", "agentmesh.session.deleted"),
        ("MessageCreated", "agentmesh.message.created"),
        ("MessageUpdated", "agentmesh.message.updated"),
        ("MessageDeleted", "agentmesh.message.deleted"),
        ("AgentCreated", "agentmesh.agent.created"),
        ("AgentUpdated", "agentmesh.agent.updated"),
        ("AgentDeleted", "agentmesh.agent.deleted"),
        ("RunStartedEvent", "agentmesh.run.started"),
        ("RunCompletedEvent", "agentmesh.run.completed"),
        ("RunFailedEvent", "agentmesh.run.failed"),
        ("RunCancelledEvent", "agentmesh.run.cancelled"),
        ("RunRequiresActionEvent", "agentmesh.run.requires_action"),
        ("RunOutputChunk", "agentmesh.run.{run_id}.output"),
        ("LlmUsage", "agentmesh.llm.usage"),
        ("ToolInvoked", "agentmesh.tool.invoked"),
        ("ToolCreated", "agentmesh.tool.created"),
        ("ToolUpdated", "agentmesh.tool.updated"),
        ("ToolDeleted", "agentmesh.tool.deleted"),
        ("McpServerCreated", "agentmesh.mcp_server.created"),
        ("McpServerUpdated", "agentmesh.mcp_server.updated"),
        ("McpServerDeleted", "agentmesh.mcp_server.deleted"),
        ("McpServerHealthChanged", "agentmesh.mcp_server.health_changed"),
        ("SecretRotated", "agentmesh.secret.rotated"),
        ("CircuitBreakerStateChanged", "agentmesh.breaker.state_changed"),
    ];
    let mut subjects = BTreeSet::new();
    for (name, subject) in expected {
        let message = pool()
            .get_message_by_name(&format!("agentmesh.events.v1.{name}"))
            .unwrap_or_else(|| panic!("event {name} missing"));
        let rules = event_rules(&message).unwrap_or_else(|| panic!("{name} has no subject"));
        assert_eq!(rules.subject, subject, "{name}");
        assert!(subjects.insert(subject), "subject {subject} used twice");
        let doc = doc_comment(&message.parent_file(), message.path()).unwrap_or_default();
        assert!(doc.contains(&subject.replace("{run_id}", "<run_id>")), "{name}: comment lacks its subject");
    }
    let envelope =
        pool().get_message_by_name("agentmesh.events.v1.Envelope").unwrap_or_else(|| panic!("Envelope missing"));
    for name in [
        "id",
        "source",
        "type",
        "subject",
        "time",
        "tenant",
        "correlation_id",
        "actor",
        "data_content_type",
        "data_schema",
        "data",
    ] {
        assert!(envelope.get_field_by_name(name).is_some(), "Envelope.{name} missing");
    }
}

/// Every service, RPC, message, field, enum and enum value of the agentmesh packages has a
/// comment (they become OpenAPI descriptions and rustdoc).
#[test]
fn every_element_is_documented() {
    let mut missing = Vec::new();
    let mut undocumented_files = Vec::new();
    let mut check = |file: &prost_reflect::FileDescriptor, path: &[i32], what: &str| {
        if doc_comment(file, path).is_none() {
            missing.push(what.to_owned());
        }
    };
    for file in pool().files() {
        if !file.package_name().starts_with("agentmesh.") {
            continue;
        }
        for s in file.services() {
            check(&file, s.path(), s.full_name());
            for m in s.methods() {
                check(&file, m.path(), m.full_name());
            }
        }
        for e in file.enums() {
            check(&file, e.path(), e.full_name());
            for v in e.values() {
                check(&file, v.path(), v.full_name());
            }
        }
        let mut messages: Vec<_> = file.messages().collect();
        while let Some(m) = messages.pop() {
            check(&file, m.path(), m.full_name());
            for f in m.fields() {
                check(&file, f.path(), f.full_name());
            }
            for e in m.child_enums() {
                check(&file, e.path(), e.full_name());
                for v in e.values() {
                    check(&file, v.path(), v.full_name());
                }
            }
            messages.extend(m.child_messages());
        }
        let leading = file
            .file_descriptor_proto()
            .source_code_info
            .as_ref()
            .and_then(|info| info.location.iter().find(|l| l.path == [12]))
            .and_then(|l| l.leading_comments.clone().or_else(|| l.leading_detached_comments.first().cloned()));
        if leading.is_none() {
            undocumented_files.push(file.name().to_owned());
        }
    }
    assert!(missing.is_empty(), "undocumented: {missing:#?}");
    assert!(undocumented_files.is_empty(), "files without a leading comment: {undocumented_files:#?}");
}

#[test]
fn generated_code_is_usable() {
    use agentmesh_proto::agentmesh::common::v1::ErrorCode;
    use agentmesh_proto::agentmesh::session::v1::{ListSessionsRequest, Session};
    use prost::Message;

    let session = Session {
        id: "0b6f0c43-3a0e-4f5e-9a55-1f2d3c4b5a69".to_owned(),
        title: Some("Hello".to_owned()),
        message_count: 3,
        ..Default::default()
    };
    let decoded = Session::decode(session.encode_to_vec().as_slice());
    assert_eq!(decoded.ok(), Some(session));
    let request = ListSessionsRequest::default();
    assert_eq!(request.limit, None, "an absent limit is distinguishable from 0");
    assert_eq!(ErrorCode::ValidationError.as_str_name(), "ERROR_CODE_VALIDATION_ERROR");

    // The generated server and client types exist.
    fn _types(
        _: Option<agentmesh_proto::agentmesh::session::v1::session_service_server::SessionServiceServer<()>>,
        _: Option<agentmesh_proto::agentmesh::agent::v1::agent_service_client::AgentServiceClient<()>>,
    ) {
    }
}
