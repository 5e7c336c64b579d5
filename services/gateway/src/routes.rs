//! The REST routes of the mesh, read from the contract: every RPC with a `google.api.http`
//! rule becomes a route, so a new annotated RPC needs no gateway code.
//!
//! A [`RouteTable`] is built once from the descriptor pool. Matching is by method and path
//! template; when two templates match one path, the one with more literal segments wins
//! (`DELETE /api/v1/sessions/bulk-delete` over `DELETE /api/v1/sessions/{session_id}`).

use agentmesh_proto::agentmesh::common::v1::MethodRules;
use agentmesh_proto::google::api::HttpRule;
use agentmesh_proto::google::api::http_rule::Pattern;
use agentmesh_proto::options::{http_rule, method_rules};
use agentmesh_runtime::ServiceName;
use http::Method;
use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, MethodDescriptor};

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal the request's segment.
    Literal(String),
    /// Binds the request's segment to this request field.
    Variable(String),
}

/// A REST route: one HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// The template as written in the contract, e.g. `/api/v1/sessions/{session_id}`.
    pub template: String,
    /// Parsed template.
    pub segments: Vec<Segment>,
    /// The RPC.
    pub rpc: MethodDescriptor,
    /// Request field the body maps to: `*` (whole request), a field name, or empty (no body).
    pub body: String,
    /// Response field the body shows (e.g. `sessions` for a bare array), or empty (whole).
    pub response_body: String,
    /// Status on success: 201 for creates, 204 for deletes, else 200.
    pub success_status: http::StatusCode,
    /// Stricter rate-limit group, e.g. `create_session`.
    pub rate_limit_group: Option<String>,
    /// Scopes the caller needs.
    pub required_scopes: Vec<String>,
    /// Whether unauthenticated callers may use it (health, token exchange).
    pub allow_anonymous: bool,
    /// The service that owns the RPC.
    pub owner: ServiceName,
    /// The RPC's gRPC path, `/package.Service/Method`.
    pub grpc_path: PathAndQuery,
    /// The template as a metrics label, shared rather than copied per request.
    pub metric_label: metrics::SharedString,
}

impl Route {
    /// Whether the RPC streams its response (served as SSE).
    pub fn is_streaming(&self) -> bool {
        self.rpc.is_server_streaming()
    }

    fn literal_count(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count()
    }
}

/// A matched route with its path variables.
#[derive(Debug)]
pub struct Matched<'a> {
    /// The route.
    pub route: &'a Route,
    /// `(field, value)` for each path variable.
    pub variables: Vec<(String, String)>,
}

/// Why no route answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    /// No template matches the path.
    NotFound,
    /// Templates match the path, but not with this method; lists the allowed ones.
    MethodNotAllowed(Vec<Method>),
}

/// The service owning each public contract service.
pub fn owner_of(service: &str) -> Option<ServiceName> {
    Some(match service {
        "agentmesh.session.v1.SessionService" => ServiceName::SessionStore,
        "agentmesh.agent.v1.AgentService" => ServiceName::AgentOrchestrator,
        "agentmesh.mcp.v1.McpService" => ServiceName::McpBroker,
        "agentmesh.llm.v1.LlmService" => ServiceName::LlmProxy,
        "agentmesh.secrets.v1.SecretsService" => ServiceName::SecretsBroker,
        "agentmesh.health.v1.HealthService" | "agentmesh.auth.v1.AuthService" => ServiceName::Gateway,
        _ => return None,
    })
}

/// Every REST route of the contract.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// A contract rule the gateway cannot serve (a bug in `proto/`, caught at start-up).
#[derive(Debug, thiserror::Error)]
#[error("{rpc}: {problem}")]
pub struct RouteError {
    /// The RPC.
    pub rpc: String,
    /// What is wrong.
    pub problem: String,
}

impl RouteTable {
    /// Reads every `google.api.http` rule (and additional bindings) in `pool`.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Self, RouteError> {
        let mut routes = Vec::new();
        for service in pool.services() {
            for rpc in service.methods() {
                let Some(rule) = http_rule(&rpc) else { continue };
                let owner = owner_of(service.full_name()).ok_or_else(|| RouteError {
                    rpc: rpc.full_name().to_owned(),
                    problem: "no service in the mesh owns this RPC".to_owned(),
                })?;
                let rules = method_rules(&rpc).unwrap_or_default();
                for binding in std::iter::once(&rule).chain(&rule.additional_bindings) {
                    routes.push(route(&rpc, binding, &rules, owner)?);
                }
            }
        }
        Ok(Self { routes })
    }

    /// All routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Full names of the contract services with at least one route, each once, in
    /// contract order: the public services.
    pub fn services(&self) -> Vec<String> {
        let mut services: Vec<String> = Vec::new();
        for route in &self.routes {
            let service = route.rpc.parent_service();
            if !services.iter().any(|known| known == service.full_name()) {
                services.push(service.full_name().to_owned());
            }
        }
        services
    }

    /// The first route of the RPC named `full_name` (e.g. `agentmesh.session.v1.SessionService.GetSession`).
    pub fn for_rpc(&self, full_name: &str) -> Option<&Route> {
        self.routes.iter().find(|route| route.rpc.full_name() == full_name)
    }

    /// The route for `method` and `path`, preferring literal segments over variables.
    pub fn find(&self, method: &Method, path: &str) -> Result<Matched<'_>, Miss> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let candidates: Vec<(&Route, Vec<(String, String)>)> =
            self.routes.iter().filter_map(|route| bind(&route.segments, &parts).map(|vars| (route, vars))).collect();
        // Only the most specific templates answer for a path (as in axum): a literal
        // `bulk-create` segment shadows `{session_id}` for every method.
        let Some(most_literal) = candidates.iter().map(|(route, _)| route.literal_count()).max() else {
            return Err(Miss::NotFound);
        };
        let specific = candidates.into_iter().filter(|(route, _)| route.literal_count() == most_literal);
        let mut allowed = Vec::new();
        for (route, variables) in specific {
            if route.method == *method {
                return Ok(Matched { route, variables });
            }
            allowed.push(route.method.clone());
        }
        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allowed.dedup();
        Err(Miss::MethodNotAllowed(allowed))
    }
}

fn bind(segments: &[Segment], parts: &[&str]) -> Option<Vec<(String, String)>> {
    if segments.len() != parts.len() {
        return None;
    }
    let mut variables = Vec::new();
    for (segment, part) in segments.iter().zip(parts) {
        match segment {
            Segment::Literal(literal) if literal == part => {}
            Segment::Variable(field) if !part.is_empty() => {
                let value = percent_decode(part)?;
                variables.push((field.clone(), value));
            }
            _ => return None,
        }
    }
    Some(variables)
}

/// Decodes `%XX` escapes of a path segment; `None` for invalid escapes or UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn route(
    rpc: &MethodDescriptor,
    rule: &HttpRule,
    rules: &MethodRules,
    owner: ServiceName,
) -> Result<Route, RouteError> {
    let error = |problem: String| RouteError { rpc: rpc.full_name().to_owned(), problem };
    let (method, template) = match &rule.pattern {
        Some(Pattern::Get(t)) => (Method::GET, t),
        Some(Pattern::Put(t)) => (Method::PUT, t),
        Some(Pattern::Post(t)) => (Method::POST, t),
        Some(Pattern::Delete(t)) => (Method::DELETE, t),
        Some(Pattern::Patch(t)) => (Method::PATCH, t),
        Some(Pattern::Custom(custom)) => {
            (Method::from_bytes(custom.kind.as_bytes()).map_err(|e| error(e.to_string()))?, &custom.path)
        }
        None => return Err(error("http rule without a pattern".to_owned())),
    };
    let segments = parse_template(template).map_err(error)?;
    let input = rpc.input();
    for segment in &segments {
        if let Segment::Variable(field) = segment
            && input.get_field_by_name(field).is_none()
        {
            return Err(error(format!("path variable {field} is not a field of {}", input.full_name())));
        }
    }
    if !rule.body.is_empty() && rule.body != "*" && input.get_field_by_name(&rule.body).is_none() {
        return Err(error(format!("body field {} does not exist", rule.body)));
    }
    if !rule.response_body.is_empty() && rpc.output().get_field_by_name(&rule.response_body).is_none() {
        return Err(error(format!("response_body field {} does not exist", rule.response_body)));
    }
    let success_status = match rules.success_status {
        0 => http::StatusCode::OK,
        code => u16::try_from(code)
            .ok()
            .and_then(|c| http::StatusCode::from_u16(c).ok())
            .ok_or_else(|| error(format!("invalid success_status {code}")))?,
    };
    let grpc_path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name())
        .parse()
        .map_err(|_| error("the RPC's name is not a valid gRPC path".to_owned()))?;
    Ok(Route {
        method,
        metric_label: metrics::SharedString::from(std::sync::Arc::<str>::from(template.as_str())),
        grpc_path,
        template: template.clone(),
        segments,
        rpc: rpc.clone(),
        body: rule.body.clone(),
        response_body: rule.response_body.clone(),
        success_status,
        rate_limit_group: Some(rules.rate_limit_group.clone()).filter(|g| !g.is_empty()),
        required_scopes: rules.required_scopes.clone(),
        allow_anonymous: rules.allow_anonymous,
        owner,
    })
}

/// Parses `/a/{b}/c` (and `{b=*}`) into segments.
fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    let path = template.strip_prefix('/').ok_or_else(|| format!("template {template} must start with /"))?;
    path.split('/')
        .map(|part| match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(inner) => {
                let field = inner.strip_suffix("=*").unwrap_or(inner);
                if field.is_empty() || field.contains(['=', '*', '.']) {
                    Err(format!("unsupported template variable {part} in {template}"))
                } else {
                    Ok(Segment::Variable(field.to_owned()))
                }
            }
            None if part.is_empty() || part.contains(['{', '}']) => Err(format!("bad segment {part:?} in {template}")),
            None => Ok(Segment::Literal(part.to_owned())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::from_pool(agentmesh_proto::descriptor_pool()).unwrap()
    }

    #[test]
    fn every_annotated_rpc_is_routed_to_its_owner() {
        let table = table();
        let get = table.find(&Method::GET, "/api/v1/sessions/abc").unwrap();
        assert_eq!(get.route.rpc.name(), "GetSession");
        assert_eq!(get.route.owner, ServiceName::SessionStore);
        assert_eq!(get.variables, [("session_id".to_owned(), "abc".to_owned())]);
        let execute = table.find(&Method::POST, "/api/v1/agents/a1/execute").unwrap();
        assert_eq!((execute.route.rpc.name(), execute.route.owner), ("ExecuteAgent", ServiceName::AgentOrchestrator));
        assert_eq!(execute.route.rate_limit_group.as_deref(), Some("execute_agent"));
        let stream = table.find(&Method::POST, "/api/v1/agents/a1/execute/stream").unwrap();
        assert!(stream.route.is_streaming());
        let health = table.find(&Method::GET, "/api/v1/health").unwrap();
        assert!(health.route.allow_anonymous);
        assert_eq!(health.route.owner, ServiceName::Gateway);
    }

    #[test]
    fn literal_segments_win_over_variables() {
        let table = table();
        let bulk = table.find(&Method::DELETE, "/api/v1/sessions/bulk-delete").unwrap();
        assert_eq!(bulk.route.rpc.name(), "BulkDeleteSessions");
        assert_eq!(bulk.route.body, "session_ids");
        assert_eq!(bulk.route.success_status, http::StatusCode::NO_CONTENT);
        let one = table.find(&Method::DELETE, "/api/v1/sessions/0193").unwrap();
        assert_eq!(one.route.rpc.name(), "DeleteSession");
        assert_eq!(
            table.find(&Method::GET, "/api/v1/sessions/bulk-create").unwrap_err(),
            Miss::MethodNotAllowed(vec![Method::POST]),
            "a literal segment shadows the variable for every method"
        );
    }

    #[test]
    fn misses_tell_not_found_from_method_not_allowed() {
        let table = table();
        assert_eq!(table.find(&Method::GET, "/api/v1/nothing").unwrap_err(), Miss::NotFound);
        assert_eq!(table.find(&Method::GET, "/api/v1/sessions/a/b/c").unwrap_err(), Miss::NotFound);
        assert_eq!(
            table.find(&Method::PATCH, "/api/v1/sessions").unwrap_err(),
            Miss::MethodNotAllowed(vec![Method::GET, Method::POST])
        );
    }

    #[test]
    fn path_variables_are_percent_decoded_and_templates_validated() {
        let table = table();
        let matched = table.find(&Method::GET, "/api/v1/messages/a%2Fb%20c").unwrap();
        assert_eq!(matched.variables[0].1, "a/b c");
        assert_eq!(table.find(&Method::GET, "/api/v1/messages/%zz").unwrap_err(), Miss::NotFound);
        assert!(parse_template("api/v1").is_err());
        assert!(parse_template("/a/{b.c}").is_err());
        assert_eq!(parse_template("/a/{b=*}").unwrap()[1], Segment::Variable("b".into()));
    }
}
