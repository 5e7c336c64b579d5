//! A store's outbox relay under test: [`RunningRelay`] runs one in the background and
//! stops it when dropped (before the test's schema is dropped, if it is declared first),
//! [`quick_relay`] has the relay poll and back off fast enough for a test, and
//! [`test_pool`] is the small pool every store test connects with.
//!
//! ```no_run
//! use agentmesh_postgres::outbox::OutboxRelay;
//! use agentmesh_testkit::outbox::{RunningRelay, quick_relay};
//!
//! # async fn example(relay: OutboxRelay) {
//! // `relay` is the store's, e.g. `store.relay(publisher)`.
//! let running = RunningRelay::start(relay.with_settings(quick_relay()));
//! // ... write, then read the events from the bus ...
//! running.stop().await;
//! # }
//! ```

use std::time::Duration;

use agentmesh_postgres::PoolSettings;
use agentmesh_postgres::outbox::{OutboxRelay, RelaySettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The pool a store under test connects with: up to 6 connections, 10 s to get one.
pub fn test_pool() -> PoolSettings {
    PoolSettings { min: 0, max: 6, acquire_timeout: Duration::from_secs(10) }
}

/// Relay settings for tests: polls every 200 ms and retries within half a second, so a
/// test waiting for an event is not waiting on the production timings.
pub fn quick_relay() -> RelaySettings {
    RelaySettings {
        poll_interval: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        publish_timeout: Duration::from_secs(3),
        ..RelaySettings::default()
    }
}

/// A relay running in the background until stopped or dropped.
#[derive(Debug)]
pub struct RunningRelay {
    /// Sent (or dropped) to ask the relay to stop.
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningRelay {
    /// Runs `relay` on its own task.
    pub fn start(relay: OutboxRelay) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(relay.run(async move {
            let _ = stopped.await;
        }));
        Self { stop: Some(stop), task }
    }

    /// Whether the relay's task has ended (it should not, until asked to stop).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the relay to stop and waits until it has (it finishes the batch in hand).
    ///
    /// # Panics
    ///
    /// When the relay does not stop within 30 s, or its task panicked.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(30), &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("the relay task failed: {error}"),
            Err(_) => panic!("the relay did not stop within 30 s"),
        }
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}
