//! What the service-level test binaries share: mcp-broker served in-process on a loopback
//! port (memory backend, in-process event bus), calls signed as the gateway's, and
//! looking at processes through /proc.

// Each test binary uses part of this module.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::MemoryBus;
use agentmesh_proto::agentmesh::mcp::v1::mcp_service_client::McpServiceClient;
use agentmesh_runtime::auth::{ACTOR_HEADER, PRINCIPAL_HEADER, Principal};
use agentmesh_runtime::secrets::SecretReader;
use agentmesh_runtime::{Config, ServiceName};
use agentmesh_testkit::identity;
use tokio::sync::oneshot;
use tonic::Request;
use tonic::transport::Channel;

/// A served broker; it stops when this is dropped.
pub struct Mesh {
    pub client: McpServiceClient<Channel>,
    pub bus: MemoryBus,
    _stop: oneshot::Sender<()>,
}

/// Serves mcp-broker configured by `env`, reading secrets with `secrets` (`None`: from
/// secrets-broker, as in production).
pub async fn start(env: &[(&str, &str)], secrets: Option<Arc<dyn SecretReader>>) -> Mesh {
    let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    let config = Arc::new(Config::load_with(None, env, &[agentmesh_mcp_broker::SETTINGS]).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let bus = MemoryBus::default();
    let shutdown = async {
        let _ = stopped.await;
    };
    match secrets {
        Some(secrets) => {
            let serving =
                agentmesh_mcp_broker::serve_with_secrets(config, Arc::new(bus.clone()), secrets, listener, shutdown);
            tokio::spawn(serving);
        }
        None => {
            tokio::spawn(agentmesh_mcp_broker::serve(config, Arc::new(bus.clone()), listener, shutdown));
        }
    }
    let channel = Channel::from_shared(url).unwrap().connect_lazy();
    Mesh { client: McpServiceClient::new(channel), bus, _stop: stop }
}

/// `body` as a call from the gateway on `principal`'s behalf.
pub fn call<T>(principal: &Principal, body: T) -> Request<T> {
    let mut request = Request::new(body);
    for (name, value) in identity::gateway_call(principal, ServiceName::McpBroker) {
        request.metadata_mut().insert(name, value.parse().unwrap());
    }
    request
}

/// `body` as a call from the agent-orchestrator (the only caller of `InvokeTool`) on
/// `principal`'s behalf.
pub fn orchestrator_call<T>(principal: &Principal, body: T) -> Request<T> {
    let mut request = Request::new(body);
    let actor = identity::actor_token(ServiceName::AgentOrchestrator, ServiceName::McpBroker);
    for (name, value) in [(PRINCIPAL_HEADER, identity::principal_token(principal)), (ACTOR_HEADER, actor)] {
        request.metadata_mut().insert(name, value.parse().unwrap());
    }
    request
}

/// The fields of `/proc/<pid>/stat` after the command, from field 3 (the state) on.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` is a live process (not a zombie).
pub fn running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| !matches!(fields.first().map(String::as_str), Some("Z" | "X") | None))
}

/// Processes whose parent is this test process (zombies included).
pub fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(*pid).is_some_and(|fields| fields.get(1) == Some(&me)))
        .collect()
}

/// The process ids listed in `path`, one a line (none while it does not exist).
pub fn read_pids(path: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|line| line.parse().ok()).collect()
}

/// Waits for `condition`, checking every 100 ms for at most 20 s, then fails with `what`.
pub async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}");
}

/// tests/mcp, where the test servers' scripts are.
pub fn scripts_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mcp")
}
