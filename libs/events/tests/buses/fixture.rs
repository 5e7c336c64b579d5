//! The buses the conformance suite runs against, with per-bus timing.
//!
//! The in-process bus runs on paused tokio time, so ack-wait redeliveries and "nothing
//! else arrives" checks cost no wall time. Each NATS test gets its own stream and
//! subject root (tests run in parallel against one server) and deletes the stream at
//! the end; if the test fails first, [`NatsStream`]'s `Drop` still deletes it.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::{MemoryBus, NatsBus, NatsConfig, Publisher, Subscriber};
use agentmesh_testkit::{Service, require, unique_name};

/// What a behaviour needs: both halves of one bus and its timing.
pub struct Harness {
    pub publisher: Arc<dyn Publisher>,
    pub subscriber: Arc<dyn Subscriber>,
    pub timing: Timing,
}

/// Durations the behaviours wait for.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Ack wait of subscriptions that test redelivery.
    pub ack_wait: Duration,
    /// How long "nothing more arrives" is observed.
    pub quiet: Duration,
    /// Upper bound for an expected delivery to arrive.
    pub receive: Duration,
}

pub fn memory() -> Harness {
    let bus = MemoryBus::default();
    Harness {
        publisher: Arc::new(bus.clone()),
        subscriber: Arc::new(bus),
        timing: Timing {
            ack_wait: Duration::from_secs(1),
            quiet: Duration::from_secs(2),
            receive: Duration::from_secs(10),
        },
    }
}

/// A NATS bus on a stream of its own, deleted by [`NatsStream::cleanup`] or on drop.
pub struct NatsStream {
    bus: NatsBus,
    url: String,
    cleaned: bool,
}

impl NatsStream {
    /// Connects on a fresh stream, or `None` (skip) when NATS is unreachable locally.
    pub async fn create() -> Option<Self> {
        let url = require(Service::Nats).await?;
        Some(Self::create_with(url.clone(), config(&url)).await)
    }

    /// Connects with `config` (its stream is deleted at the end).
    pub async fn create_with(url: String, config: NatsConfig) -> Self {
        let bus = NatsBus::connect(config).await.expect("connect to NATS");
        NatsStream { bus, url, cleaned: false }
    }

    pub fn bus(&self) -> &NatsBus {
        &self.bus
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn harness(&self) -> Harness {
        Harness {
            publisher: Arc::new(self.bus.clone()),
            subscriber: Arc::new(self.bus.clone()),
            timing: Timing {
                ack_wait: Duration::from_secs(1),
                quiet: Duration::from_millis(500),
                receive: Duration::from_secs(10),
            },
        }
    }

    /// Deletes the stream; call at the end of a passing test.
    pub async fn cleanup(mut self) {
        self.bus.delete_stream().await.expect("delete test stream");
        self.cleaned = true;
    }
}

/// A config with a unique stream and subject root.
pub fn config(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_owned(),
        stream_name: unique_name("t"),
        subject_root: unique_name("t"),
        ..NatsConfig::default()
    }
}

impl Drop for NatsStream {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // The test's runtime is unwinding (or blocked in this drop), so delete the stream
        // from a fresh runtime on another thread, over a fresh connection.
        let url = self.url.clone();
        let stream = self.bus.config().stream_name.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let client = async_nats::connect(url).await?;
                async_nats::jetstream::new(client).delete_stream(&stream).await?;
                Ok::<_, async_nats::Error>(())
            })?;
            Ok::<_, async_nats::Error>(())
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("could not delete test stream {}", self.bus.config().stream_name);
        }
    }
}
