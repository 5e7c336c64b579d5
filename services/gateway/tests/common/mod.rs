//! An in-process mesh for gateway tests: session-store (memory) and the gateway on
//! loopback ports, sharing one in-process event bus.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod grpc_web;

use std::sync::Arc;

use agentmesh_events::{EventBus, MemoryBus};
use agentmesh_runtime::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running gateway with session-store behind it.
pub struct Mesh {
    /// `http://127.0.0.1:<port>` of the gateway.
    pub base: String,
    /// HTTP client for REST calls.
    pub http: reqwest::Client,
    /// The bus both services publish to.
    pub bus: Arc<dyn EventBus>,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Mesh {
    /// Starts the mesh with `env` on top of the embedded defaults.
    pub async fn start(env: &[(&str, &str)]) -> Mesh {
        Self::start_with(env, &[]).await
    }

    /// Starts the mesh; `peers` point services at extra servers (e.g. a fake orchestrator).
    pub async fn start_with(env: &[(&str, &str)], peers: &[(&str, String)]) -> Mesh {
        let session_store = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut vars: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        vars.push(("SESSION_STORE_URL".into(), format!("http://{}", session_store.local_addr().unwrap())));
        vars.extend(peers.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let config = Arc::new(Config::load(None, vars).unwrap());
        let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::default());
        let base = format!("http://{}", gateway.local_addr().unwrap());
        let mut stops = Vec::new();
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        tokio::spawn(agentmesh_session_store::serve(config.clone(), bus.clone(), session_store, async {
            let _ = stopped.await;
        }));
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        tokio::spawn(agentmesh_gateway::serve(config.clone(), bus.clone(), gateway, async {
            let _ = stopped.await;
        }));
        Mesh { base, http: reqwest::Client::new(), bus, _stop: stops }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
