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
    /// Whether every call must carry a signed principal (the user it is made for). Only
    /// secrets-broker takes calls without one: credentials belong to the calling service,
    /// which also reads them when no user is involved (a key rotated in the background).
    pub needs_principal: bool,
}

/// The actors `service` serves. The gateway serves end users (its own authenticator), no
/// actors.
pub const fn served_actors(service: ServiceName) -> ActorPolicy {
    use ServiceName::*;
    match service {
        SessionStore => ActorPolicy { any_rpc: &[Gateway, AgentOrchestrator], public_rpcs: &[], needs_principal: true },
        AgentOrchestrator => ActorPolicy { any_rpc: &[Gateway], public_rpcs: &[], needs_principal: true },
        LlmProxy => ActorPolicy { any_rpc: &[AgentOrchestrator], public_rpcs: &[], needs_principal: true },
        McpBroker => ActorPolicy { any_rpc: &[AgentOrchestrator], public_rpcs: &[Gateway], needs_principal: true },
        SecretsBroker => ActorPolicy {
            any_rpc: &[Gateway, LlmProxy, McpBroker, AgentOrchestrator],
            public_rpcs: &[],
            needs_principal: false,
        },
        Gateway => ActorPolicy { any_rpc: &[], public_rpcs: &[], needs_principal: true },
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
        // The gateway reads its signing keys there.
        assert!(served_actors(ServiceName::SecretsBroker).serves(ServiceName::Gateway));
        assert!(!served_actors(ServiceName::SecretsBroker).serves(ServiceName::SessionStore));
        let needing_principal: Vec<_> =
            ServiceName::ALL.into_iter().filter(|service| served_actors(*service).needs_principal).collect();
        assert_eq!(needing_principal.len(), ServiceName::ALL.len() - 1);
        assert!(!served_actors(ServiceName::SecretsBroker).needs_principal);
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
