//! Who may do what in the mesh, in one table: which services may mint principals and
//! which calling services (actors) each service serves.
//!
//! Keeping the whole policy here, keyed by [`ServiceName`], makes it reviewable at a
//! glance and keeps it out of the services' own code.

use std::collections::HashSet;
use std::sync::LazyLock;

use crate::config::ServiceName;

/// The services holding a key that may sign principals: the gateway for end users and
/// the agent-orchestrator for the runs it executes.
pub const PRINCIPAL_MINTERS: [ServiceName; 2] = [ServiceName::Gateway, ServiceName::AgentOrchestrator];

/// The only service that may mint a principal bound to a run (`run` claim).
pub const RUN_PRINCIPAL_MINTER: ServiceName = ServiceName::AgentOrchestrator;

/// Which actors a service serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActorPolicy {
    /// Actors served on every RPC.
    pub any_rpc: &'static [ServiceName],
    /// Actors served only on the public RPCs (those with a REST route, which the gateway
    /// passes through); internal RPCs stay closed to them.
    pub public_rpcs: &'static [ServiceName],
}

/// The actors `service` serves. The gateway serves end users (its own authenticator), no
/// actors.
pub const fn served_actors(service: ServiceName) -> ActorPolicy {
    use ServiceName::*;
    match service {
        SessionStore => ActorPolicy { any_rpc: &[Gateway, AgentOrchestrator], public_rpcs: &[] },
        AgentOrchestrator => ActorPolicy { any_rpc: &[Gateway], public_rpcs: &[] },
        LlmProxy => ActorPolicy { any_rpc: &[AgentOrchestrator], public_rpcs: &[] },
        McpBroker => ActorPolicy { any_rpc: &[AgentOrchestrator], public_rpcs: &[Gateway] },
        SecretsBroker => ActorPolicy { any_rpc: &[LlmProxy, McpBroker, AgentOrchestrator], public_rpcs: &[] },
        Gateway => ActorPolicy { any_rpc: &[], public_rpcs: &[] },
    }
}

impl ActorPolicy {
    /// Whether `actor` may call the RPC at `path` (`/package.Service/Method`).
    pub fn allows(&self, actor: ServiceName, path: &str) -> bool {
        self.any_rpc.contains(&actor) || (self.public_rpcs.contains(&actor) && is_public_rpc(path))
    }

    /// Whether `actor` may call at least one RPC.
    pub fn serves(&self, actor: ServiceName) -> bool {
        self.any_rpc.contains(&actor) || self.public_rpcs.contains(&actor)
    }
}

/// Paths (`/package.Service/Method`) of the RPCs with a `google.api.http` route.
static PUBLIC_RPCS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let pool = agentmesh_proto::descriptor_pool();
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return HashSet::new();
    };
    pool.services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .filter(|method| method.options().has_extension(&http))
        .map(|method| format!("/{}/{}", method.parent_service().full_name(), method.name()))
        .collect()
});

/// Whether the RPC at `path` is public (has a REST route in the contract).
pub fn is_public_rpc(path: &str) -> bool {
    PUBLIC_RPCS.contains(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_serves_what_the_mesh_needs_and_nothing_else() {
        let store = served_actors(ServiceName::SessionStore);
        assert!(store.allows(ServiceName::Gateway, "/agentmesh.session.v1.SessionService/GetSession"));
        assert!(store.allows(ServiceName::AgentOrchestrator, "/agentmesh.session.v1.SessionService/GetSession"));
        assert!(!store.serves(ServiceName::LlmProxy));
        assert!(!served_actors(ServiceName::LlmProxy).serves(ServiceName::Gateway));
        assert!(!served_actors(ServiceName::LlmProxy).serves(ServiceName::SessionStore));
        assert!(served_actors(ServiceName::SecretsBroker).serves(ServiceName::McpBroker));
        assert!(!served_actors(ServiceName::SecretsBroker).serves(ServiceName::Gateway));
    }

    #[test]
    fn the_gateway_reaches_only_public_rpcs_of_the_mcp_broker() {
        let broker = served_actors(ServiceName::McpBroker);
        assert!(is_public_rpc("/agentmesh.mcp.v1.McpService/ListTools"));
        assert!(broker.allows(ServiceName::Gateway, "/agentmesh.mcp.v1.McpService/ListTools"));
        assert!(!broker.allows(ServiceName::Gateway, "/agentmesh.mcp.v1.McpService/InvokeTool"));
        assert!(broker.allows(ServiceName::AgentOrchestrator, "/agentmesh.mcp.v1.McpService/InvokeTool"));
    }
}
