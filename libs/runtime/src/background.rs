//! Work a service runs beside its server for exactly as long as it serves (readiness
//! following the store, outbox relays, watchers), and the readiness watch every service
//! with a store runs.
//!
//! [`BackgroundTasks`] ties spawned work to one owner: dropping it (when `serve` returns)
//! ends every task, so nothing outlives the server or keeps polling a closed pool.
//! [`follow_storage`] mirrors a store's answers into `grpc.health.v1`: while the store
//! does not answer, the service reports NOT_SERVING, so load balancers and the gateway
//! stop sending work.
//!
//! ```
//! use std::time::Duration;
//! use agentmesh_runtime::background::{BackgroundTasks, follow_storage};
//!
//! # async fn example() {
//! let reporter = tonic_health::server::HealthReporter::new();
//! let tasks = BackgroundTasks::new();
//! let ping = || async { Ok::<(), std::io::Error>(()) };
//! tasks.spawn(follow_storage(ping, reporter, "agentmesh.agent.v1.AgentService", Duration::from_secs(5)));
//! // ... serve until shutdown ...
//! drop(tasks); // ends the watch
//! # }
//! ```

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Spawned work that ends when this handle is dropped.
#[derive(Debug)]
pub struct BackgroundTasks {
    /// Dropped with the handle: every task's receiver then sees the channel close.
    _stop: watch::Sender<()>,
    stopped: watch::Receiver<()>,
}

impl BackgroundTasks {
    /// A handle with no tasks yet.
    pub fn new() -> Self {
        let (stop, stopped) = watch::channel(());
        Self { _stop: stop, stopped }
    }

    /// Runs `work` on its own task until it finishes or this handle is dropped.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let stopped = self.stopped();
        tokio::spawn(async move {
            tokio::select! {
                () = work => {}
                () = stopped => {}
            }
        });
    }

    /// Completes once this handle is dropped: the shutdown signal of work that stops
    /// gracefully by itself (e.g. an outbox relay's `run`).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            // Only ever closed, never sent on: `changed` returns when the sender is gone.
            while stopped.changed().await.is_ok() {}
        }
    }
}

impl Default for BackgroundTasks {
    fn default() -> Self {
        Self::new()
    }
}

/// Calls `ping` every `interval` (at least 100 ms) and mirrors the answer into
/// `reporter`, for `service` (its gRPC name) and the server as a whole (`""`). Logs each
/// change once. Runs until dropped.
pub async fn follow_storage<P, F, E>(mut ping: P, reporter: HealthReporter, service: &'static str, interval: Duration)
where
    P: FnMut() -> F,
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut serving = true;
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
    loop {
        ticks.tick().await;
        let healthy = match ping().await {
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
            reporter.set_service_status(service, status).await;
            reporter.set_service_status("", status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health;
    use tonic_health::server::HealthService;

    use super::*;

    const SERVICE: &str = "agentmesh.test.v1.TestService";

    async fn status(health: &impl Health, service: &str) -> i32 {
        let request = tonic::Request::new(HealthCheckRequest { service: service.to_owned() });
        health.check(request).await.map(|r| r.into_inner().status).unwrap_or(-1)
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_the_store_both_ways() {
        let reporter = HealthReporter::new();
        let health = HealthService::from_health_reporter(reporter.clone());
        reporter.set_service_status(SERVICE, ServingStatus::Serving).await;
        let up = Arc::new(AtomicBool::new(false));
        let ping = {
            let up = up.clone();
            move || {
                let up = up.load(Ordering::SeqCst);
                async move { if up { Ok(()) } else { Err("down") } }
            }
        };
        let tasks = BackgroundTasks::new();
        tasks.spawn(follow_storage(ping, reporter, SERVICE, Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(status(&health, SERVICE).await, ServingStatus::NotServing as i32);
        assert_eq!(status(&health, "").await, ServingStatus::NotServing as i32);
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(status(&health, SERVICE).await, ServingStatus::Serving as i32);
    }

    #[tokio::test]
    async fn dropping_the_handle_ends_its_tasks() {
        let tasks = BackgroundTasks::new();
        let stopped = tasks.stopped();
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<()>(1);
        tasks.spawn(async move {
            let _held = sender;
            std::future::pending::<()>().await;
        });
        drop(tasks);
        stopped.await;
        assert!(receiver.recv().await.is_none(), "the task ended and dropped its sender");
    }
}
