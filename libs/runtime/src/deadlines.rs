//! Per-method maximum deadlines, read from the contract.
//!
//! A caller's `grpc-timeout` is honoured up to the method's `max_deadline_seconds`
//! (`agentmesh.common.v1.method` option); methods that declare none keep the server's cap
//! (`SERVER_REQUEST_TIMEOUT`). A call without a deadline gets the method's maximum. For a
//! server-streaming method the deadline bounds the whole stream, not only its first
//! message. The table is built once at start from the descriptor pool, like the gateway's
//! field rules, so the per-call cost is one hash lookup.

use std::collections::HashMap;
use std::time::Duration;

use agentmesh_proto::options::method_rules;
use prost_reflect::DescriptorPool;

/// The longest deadline each RPC allows. See the module documentation.
#[derive(Debug, Clone)]
pub struct MethodDeadlines {
    /// The cap of methods that declare no maximum.
    default: Duration,
    /// Declared maxima by gRPC path (`/package.Service/Method`).
    declared: HashMap<String, Duration>,
}

impl MethodDeadlines {
    /// The maxima declared in `pool`; other methods get `default`.
    pub fn from_pool(pool: &DescriptorPool, default: Duration) -> Self {
        let declared = pool
            .services()
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .filter_map(|method| {
                let seconds = method_rules(&method)?.max_deadline_seconds;
                let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
                (seconds > 0).then(|| (path, Duration::from_secs(u64::from(seconds))))
            })
            .collect();
        Self { default, declared }
    }

    /// The maxima of the agentmesh contract, with `default` for the rest.
    pub fn from_contract(default: Duration) -> Self {
        Self::from_pool(agentmesh_proto::descriptor_pool(), default)
    }

    /// The longest deadline the method at `path` (`/package.Service/Method`) allows.
    pub fn max_for(&self, path: &str) -> Duration {
        self.declared(path).unwrap_or(self.default)
    }

    /// The maximum the contract declares for the method at `path`, if any.
    pub fn declared(&self, path: &str) -> Option<Duration> {
        self.declared.get(path).copied()
    }

    /// The deadline a call to `path` runs under: what the caller asked for, at most the
    /// method's maximum; the maximum when the caller asked for nothing.
    pub fn limit(&self, path: &str, requested: Option<Duration>) -> Duration {
        let max = self.max_for(path);
        requested.map_or(max, |requested| requested.min(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(60);

    #[test]
    fn declared_methods_allow_minutes_and_the_rest_keep_the_cap() {
        let deadlines = MethodDeadlines::from_contract(CAP);
        let execute = "/agentmesh.agent.v1.AgentService/ExecuteAgent";
        let stream = "/agentmesh.agent.v1.AgentService/StreamRun";
        let chat = "/agentmesh.llm.v1.LlmService/StreamChat";
        let invoke = "/agentmesh.mcp.v1.McpService/InvokeTool";
        let create = "/agentmesh.session.v1.SessionService/CreateSession";
        assert_eq!(deadlines.max_for(execute), Duration::from_secs(600));
        assert_eq!(deadlines.max_for(stream), Duration::from_secs(600));
        assert_eq!(deadlines.max_for(chat), Duration::from_secs(300));
        assert_eq!(deadlines.max_for(invoke), Duration::from_secs(300));
        assert_eq!(deadlines.max_for(create), CAP);
        assert_eq!(deadlines.max_for("/not.a.Service/Method"), CAP);

        let asked = Some(Duration::from_secs(600));
        assert_eq!(deadlines.limit(create, asked), CAP);
        assert_eq!(deadlines.limit(execute, asked), Duration::from_secs(600));
        assert_eq!(deadlines.limit(chat, asked), Duration::from_secs(300));
        assert_eq!(deadlines.limit(execute, Some(Duration::from_secs(5))), Duration::from_secs(5));
        assert_eq!(deadlines.limit(execute, None), Duration::from_secs(600));
        assert_eq!(deadlines.limit(create, None), CAP);
    }
}
