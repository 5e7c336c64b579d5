//! The six services of the mesh by name, and where each listens (`<SERVICE>_ADDR`, the
//! gateway's from `HOST`/`PORT`) and is reached by its peers (`<SERVICE>_URL`).

use std::fmt;
use std::net::SocketAddr;

use super::vars::Vars;

/// The six services of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    /// REST/gRPC entry point.
    Gateway,
    /// Sessions and messages.
    SessionStore,
    /// Agents and runs.
    AgentOrchestrator,
    /// LLM providers.
    LlmProxy,
    /// MCP servers and tools.
    McpBroker,
    /// Secret providers.
    SecretsBroker,
}

impl ServiceName {
    /// Every service, in start-up order (dependencies first, gateway last).
    pub const ALL: [ServiceName; 6] = [
        ServiceName::SecretsBroker,
        ServiceName::SessionStore,
        ServiceName::LlmProxy,
        ServiceName::McpBroker,
        ServiceName::AgentOrchestrator,
        ServiceName::Gateway,
    ];

    /// The kebab-case name used for binaries, logs, metrics and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::SessionStore => "session-store",
            Self::AgentOrchestrator => "agent-orchestrator",
            Self::LlmProxy => "llm-proxy",
            Self::McpBroker => "mcp-broker",
            Self::SecretsBroker => "secrets-broker",
        }
    }

    /// The namespace of this service's own settings (see
    /// [`Settings`](super::Settings)): every variable a service declares starts with it.
    /// A binary that does not run the service leaves these variables to the binary that
    /// does, so one configuration file can serve every binary of the mesh.
    pub const fn settings_prefix(self) -> &'static str {
        match self {
            Self::Gateway => "GATEWAY_",
            Self::SessionStore => "SESSION_",
            Self::AgentOrchestrator => "AGENT_",
            Self::LlmProxy => "LLM_",
            Self::McpBroker => "MCP_",
            Self::SecretsBroker => "SECRET_",
        }
    }

    /// Prefix of this service's `<PREFIX>_ADDR` and `<PREFIX>_URL` variables.
    fn env_prefix(self) -> &'static str {
        match self {
            Self::Gateway => "GATEWAY",
            Self::SessionStore => "SESSION_STORE",
            Self::AgentOrchestrator => "AGENT_ORCHESTRATOR",
            Self::LlmProxy => "LLM_PROXY",
            Self::McpBroker => "MCP_BROKER",
            Self::SecretsBroker => "SECRETS_BROKER",
        }
    }

    pub(super) fn default_port(self) -> u16 {
        match self {
            Self::Gateway => 8080,
            Self::SessionStore => 50051,
            Self::AgentOrchestrator => 50052,
            Self::LlmProxy => 50053,
            Self::McpBroker => 50054,
            Self::SecretsBroker => 50055,
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one service listens and where its peers reach it.
#[derive(Debug, Clone)]
pub struct ServiceEndpoint {
    /// `<SERVICE>_ADDR`: the listen address (gateway: `HOST`:`PORT`).
    pub listen: SocketAddr,
    /// `<SERVICE>_URL`: how other services reach it, e.g. `http://session-store:50051`.
    pub url: String,
}

/// Listen addresses and peer URLs of all six services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    endpoints: Vec<(ServiceName, ServiceEndpoint)>,
}

impl Endpoints {
    /// Reads `HOST`, `PORT` and every `<SERVICE>_ADDR` / `<SERVICE>_URL`.
    pub(super) fn read(v: &mut Vars) -> Self {
        let host = v.get("HOST", "127.0.0.1".to_owned());
        let gateway_port = v.get("PORT", ServiceName::Gateway.default_port());
        let endpoints = ServiceName::ALL
            .into_iter()
            .map(|service| {
                let prefix = service.env_prefix();
                let port = if service == ServiceName::Gateway { gateway_port } else { service.default_port() };
                let default_listen = format!("{host}:{port}");
                let listen_var = format!("{prefix}_ADDR");
                let raw_listen = v.raw(&listen_var).map_or(default_listen.clone(), str::to_owned);
                let listen = raw_listen.parse::<SocketAddr>().unwrap_or_else(|_| {
                    let variable = if v.raw(&listen_var).is_some() { listen_var.as_str() } else { "HOST" };
                    v.issue(
                        variable,
                        format!("invalid address {raw_listen:?}: expected IP:PORT, e.g. 127.0.0.1:{port}"),
                    );
                    SocketAddr::from(([127, 0, 0, 1], port))
                });
                let url_var = format!("{prefix}_URL");
                let url: String = v.get(&url_var, format!("http://127.0.0.1:{}", listen.port()));
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    v.issue(&url_var, "must start with http:// or https://");
                }
                (service, ServiceEndpoint { listen, url })
            })
            .collect();
        Endpoints { endpoints }
    }

    /// The endpoint of `service`.
    pub fn get(&self, service: ServiceName) -> &ServiceEndpoint {
        let (_, endpoint) = self
            .endpoints
            .iter()
            .find(|(name, _)| *name == service)
            .unwrap_or_else(|| unreachable!("every service has an endpoint"));
        endpoint
    }

    /// Points `service`'s peers at `url` (the all-in-one binary binds ephemeral ports).
    pub fn set_url(&mut self, service: ServiceName, url: String) {
        if let Some((_, endpoint)) = self.endpoints.iter_mut().find(|(name, _)| *name == service) {
            endpoint.url = url;
        }
    }
}
