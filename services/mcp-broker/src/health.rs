//! Readiness follows the storage backend: while it does not answer, the service reports
//! NOT_SERVING on `grpc.health.v1`, so load balancers and the gateway stop sending work.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::agentmesh::mcp::v1::mcp_service_server::McpServiceServer;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::service::McpBroker;
use crate::store::McpStore;

/// Pings `store` every `interval` and mirrors the answer into `reporter`. Runs forever.
pub async fn watch(store: Arc<dyn McpStore>, reporter: HealthReporter, interval: Duration) {
    let mut serving = true;
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
    loop {
        ticks.tick().await;
        let healthy = match store.ping().await {
            Ok(()) => true,
            Err(error) => {
                if serving {
                    tracing::warn!(%error, "storage unreachable: NOT_SERVING");
                }
                false
            }
        };
        if healthy != serving {
            serving = healthy;
            let status = if healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
            if healthy {
                tracing::info!("storage reachable again: SERVING");
            }
            reporter
                .set_service_status(<McpServiceServer<McpBroker> as tonic::server::NamedService>::NAME, status)
                .await;
            reporter.set_service_status("", status).await;
        }
    }
}
