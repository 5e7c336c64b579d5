//! How a server stops and bounds its calls (`SERVER_*`).

use std::time::Duration;

use super::vars::Vars;

/// Graceful-shutdown timing and the default call deadline (`SERVER_*`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `SERVER_DRAIN_DELAY`: after reporting NOT_SERVING, keep accepting calls this long so
    /// load balancers notice before the listener closes.
    pub drain_delay: Duration,
    /// `SERVER_SHUTDOWN_GRACE_PERIOD`: how long in-flight calls may run once draining.
    pub shutdown_grace: Duration,
    /// `SERVER_REQUEST_TIMEOUT`: upper bound for one unary call when the client sets none.
    pub request_timeout: Duration,
    /// Whether clients in this process may call this server without its socket (see
    /// `agentmesh_runtime::in_process`). No variable sets it: `agentmesh up`, which runs every
    /// service in one process, turns it on.
    pub in_process_calls: bool,
}

impl ServerConfig {
    pub(super) fn read(v: &mut Vars) -> Self {
        ServerConfig {
            drain_delay: v.get("SERVER_DRAIN_DELAY", Duration::ZERO),
            shutdown_grace: v.get("SERVER_SHUTDOWN_GRACE_PERIOD", Duration::from_secs(30)),
            request_timeout: v.get("SERVER_REQUEST_TIMEOUT", Duration::from_secs(60)),
            in_process_calls: false,
        }
    }
}
