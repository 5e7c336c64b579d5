//! Dependency health: what each service knows about the things it depends on.
//!
//! A service registers each dependency once at start ([`DependencyHealth::register`]): a
//! name (`postgresql`, `redis`, `event-bus`, later `openai` or an MCP server), its
//! [`ExternalServiceType`], a probe (a cheap call such as `SELECT 1` or the bus'
//! connection state) and/or the [`CircuitBreaker`] its calls run through. [`GrpcServer`]
//! serves the registry as `agentmesh.health.v1.DependencyHealthService` on every port, and
//! the gateway aggregates those answers into `GET /api/v1/health/services`.
//!
//! The registry also turns every breaker state change into an
//! `agentmesh.breaker.state_changed` event once the service hands it a bus
//! ([`DependencyHealth::publish_breaker_changes`]): `agentmesh-resilience` knows nothing of
//! events, so the breaker's state-change hook only queues the change and a task here
//! publishes it.
//!
//! [`GrpcServer`]: crate::server::GrpcServer

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use agentmesh_events::{Event, Publisher};
use agentmesh_proto::agentmesh::common::v1::{CircuitBreakerState, ExternalServiceType, ServiceHealth};
use agentmesh_proto::agentmesh::events::v1::CircuitBreakerStateChanged;
use agentmesh_proto::agentmesh::health::v1::dependency_health_service_server::DependencyHealthService;
use agentmesh_proto::agentmesh::health::v1::{ListDependenciesRequest, ListDependenciesResponse};
use agentmesh_resilience::{BreakerSnapshot, BreakerState, CircuitBreaker, Resilience, StateChange};
use futures::future::BoxFuture;
use prost::Message as _;
use prost_types::{Struct, Timestamp, Value, value::Kind};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Topic (under the bus' subject root) of breaker state changes.
pub const BREAKER_STATE_CHANGED_TOPIC: &str = "breaker.state_changed";

/// CloudEvents type of breaker state changes.
pub const BREAKER_STATE_CHANGED_TYPE: &str = "agentmesh.breaker.state_changed";

/// A probe's verdict: `Err` carries a short, loggable reason (no secrets).
type ProbeResult = Result<(), String>;

/// A cheap call that tells whether a dependency answers.
type Probe = Arc<dyn Fn() -> BoxFuture<'static, ProbeResult> + Send + Sync>;

/// One dependency, as registered.
#[derive(Clone)]
pub struct Dependency {
    name: String,
    kind: ExternalServiceType,
    probe: Option<Probe>,
    breaker: Option<CircuitBreaker>,
}

impl Dependency {
    /// A dependency named `name` (unique within the service) of kind `kind`.
    pub fn new(name: impl Into<String>, kind: ExternalServiceType) -> Self {
        Self { name: name.into(), kind, probe: None, breaker: None }
    }

    /// Checks the dependency with `probe` on every health request (bounded by the
    /// registry's probe timeout); an error's text becomes the entry's `message`.
    #[must_use]
    pub fn with_probe<F, Fut, E>(mut self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        self.probe = Some(Arc::new(move || {
            let call = probe();
            Box::pin(async move { call.await.map_err(|error| error.to_string()) })
        }));
        self
    }

    /// Reports `breaker`'s state and call counts, and publishes its state changes.
    #[must_use]
    pub fn with_breaker(mut self, breaker: &CircuitBreaker) -> Self {
        self.breaker = Some(breaker.clone());
        self
    }

    /// Reports the breaker of `policy` (see [`Dependency::with_breaker`]).
    #[must_use]
    pub fn with_resilience(self, policy: &Resilience) -> Self {
        self.with_breaker(policy.breaker())
    }
}

/// A change queued for publication.
struct QueuedChange {
    change: StateChange,
    kind: ExternalServiceType,
    at: SystemTime,
}

/// The dependencies of one service. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct DependencyHealth {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    probe_timeout: Duration,
    dependencies: RwLock<Vec<Dependency>>,
    /// Set once a bus is attached; breaker hooks queue changes here.
    changes: OnceLock<mpsc::UnboundedSender<QueuedChange>>,
}

impl DependencyHealth {
    /// An empty registry for `service`, whose probes may take at most `probe_timeout`.
    pub fn new(service: &'static str, probe_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                service,
                probe_timeout,
                dependencies: RwLock::new(Vec::new()),
                changes: OnceLock::new(),
            }),
        }
    }

    /// The service this registry belongs to.
    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// Adds `dependency`; its breaker, if any, is watched for state changes.
    pub fn register(&self, dependency: Dependency) {
        if let Some(breaker) = &dependency.breaker {
            self.watch_breaker(breaker, dependency.kind);
        }
        self.inner.dependencies.write().unwrap_or_else(PoisonError::into_inner).push(dependency);
    }

    /// Removes the dependencies named `name` (a deleted MCP server, say), so health output
    /// stops listing them and a later one of the same name is listed once.
    pub fn unregister(&self, name: &str) {
        self.inner.dependencies.write().unwrap_or_else(PoisonError::into_inner).retain(|d| d.name != name);
    }

    /// Publishes `breaker`'s state changes (once a bus is attached) without listing it as
    /// a dependency: for breakers reported elsewhere, such as the gateway's channels.
    pub fn watch_breaker(&self, breaker: &CircuitBreaker, kind: ExternalServiceType) {
        let registry: Weak<Inner> = Arc::downgrade(&self.inner);
        breaker.on_state_change(move |change| {
            let Some(inner) = registry.upgrade() else { return };
            if let Some(queue) = inner.changes.get() {
                // The receiver only goes away with the runtime; nothing to publish to then.
                let _ = queue.send(QueuedChange { change: change.clone(), kind, at: SystemTime::now() });
            }
        });
    }

    /// Publishes every later state change of the watched breakers to `publisher`, from a
    /// task spawned here (call inside the tokio runtime). Only the first bus attached is used.
    pub fn publish_breaker_changes(&self, publisher: Arc<dyn Publisher>) {
        let (queue, mut changes) = mpsc::unbounded_channel::<QueuedChange>();
        if self.inner.changes.set(queue).is_err() {
            tracing::debug!(service = self.inner.service, "breaker changes are already published");
            return;
        }
        let service = self.inner.service;
        tokio::spawn(async move {
            while let Some(queued) = changes.recv().await {
                let event = match breaker_event(service, &queued) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%error, breaker = queued.change.breaker, "breaker event not built");
                        continue;
                    }
                };
                if let Err(error) = publisher.publish(event).await {
                    metrics::counter!("agentmesh_events_publish_failures_total", "source" => service).increment(1);
                    tracing::warn!(%error, breaker = queued.change.breaker, "breaker state change not published");
                }
            }
        });
    }

    /// Checks every dependency at once: probes run concurrently, each bounded by the probe
    /// timeout. Entries come in registration order.
    pub async fn check(&self) -> Vec<ServiceHealth> {
        let dependencies = self.inner.dependencies.read().unwrap_or_else(PoisonError::into_inner).clone();
        let timeout = self.inner.probe_timeout;
        futures::future::join_all(dependencies.iter().map(|dependency| check_one(dependency, timeout))).await
    }
}

#[tonic::async_trait]
impl DependencyHealthService for DependencyHealth {
    async fn list_dependencies(
        &self,
        _request: tonic::Request<ListDependenciesRequest>,
    ) -> Result<tonic::Response<ListDependenciesResponse>, tonic::Status> {
        Ok(tonic::Response::new(ListDependenciesResponse {
            service: self.inner.service.to_owned(),
            dependencies: self.check().await,
        }))
    }
}

/// Probes `dependency` and reads its breaker.
async fn check_one(dependency: &Dependency, timeout: Duration) -> ServiceHealth {
    let started = Instant::now();
    let probed = match &dependency.probe {
        Some(probe) => Some(
            tokio::time::timeout(timeout, probe())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis()))),
        ),
        None => None,
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let snapshot = dependency.breaker.as_ref().map(CircuitBreaker::snapshot);
    let state = snapshot.as_ref().map_or(BreakerState::Closed, |s| s.state);
    let status = match (&probed, state) {
        (Some(Err(_)), _) | (_, BreakerState::Open) => "unhealthy",
        (_, BreakerState::HalfOpen) => "degraded",
        _ => "healthy",
    };
    let mut metadata = vec![(
        "message",
        text(match &probed {
            Some(Err(reason)) => reason.as_str(),
            Some(Ok(())) => "ok",
            None => "not probed",
        }),
    )];
    if probed.is_some() {
        metadata.push(("latency_ms", number(latency_ms)));
    }
    if let Some(snapshot) = &snapshot {
        metadata.extend(breaker_details(dependency, snapshot));
    }
    ServiceHealth {
        service_name: dependency.name.clone(),
        service_type: dependency.kind as i32,
        status: status.to_owned(),
        last_check: Some(timestamp(SystemTime::now())),
        error_count: snapshot.as_ref().map_or(0, |s| i64::try_from(s.failures).unwrap_or(i64::MAX)),
        success_count: snapshot.as_ref().map_or(0, |s| i64::try_from(s.successes).unwrap_or(i64::MAX)),
        circuit_breaker_state: breaker_state(state) as i32,
        metadata: Some(Struct { fields: metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() }),
    }
}

fn breaker_details(dependency: &Dependency, snapshot: &BreakerSnapshot) -> Vec<(&'static str, Value)> {
    let breaker = dependency.breaker.as_ref().map_or("", CircuitBreaker::name);
    vec![
        ("breaker", text(breaker)),
        ("consecutive_failures", number(f64::from(snapshot.consecutive_failures))),
        ("rejected_count", number(snapshot.rejected as f64)),
        ("state_since", text(&chrono::DateTime::<chrono::Utc>::from(snapshot.last_transition_at).to_rfc3339())),
    ]
}

/// The contract's enum for a breaker state.
pub fn breaker_state(state: BreakerState) -> CircuitBreakerState {
    match state {
        BreakerState::Closed => CircuitBreakerState::Closed,
        BreakerState::Open => CircuitBreakerState::Open,
        BreakerState::HalfOpen => CircuitBreakerState::HalfOpen,
    }
}

/// The `agentmesh.breaker.state_changed` event for one queued change.
fn breaker_event(service: &str, queued: &QueuedChange) -> Result<Event, agentmesh_events::ValidationError> {
    let change = &queued.change;
    let payload = CircuitBreakerStateChanged {
        breaker: change.breaker.clone(),
        service_type: queued.kind as i32,
        previous_state: breaker_state(change.from) as i32,
        current_state: breaker_state(change.to) as i32,
        consecutive_failures: i32::try_from(change.consecutive_failures).unwrap_or(i32::MAX),
        time: Some(timestamp(queued.at)),
        service: service.to_owned(),
    };
    Event::builder(BREAKER_STATE_CHANGED_TOPIC, format!("agentmesh/{service}"), BREAKER_STATE_CHANGED_TYPE)
        .subject(change.breaker.clone())
        .time(queued.at.into())
        .data_schema("agentmesh.events.v1.CircuitBreakerStateChanged")
        .data(payload.encode_to_vec())
        .build()
}

fn timestamp(at: SystemTime) -> Timestamp {
    let at = chrono::DateTime::<chrono::Utc>::from(at);
    Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

fn text(value: &str) -> Value {
    Value { kind: Some(Kind::StringValue(value.to_owned())) }
}

fn number(value: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(value)) }
}

#[cfg(test)]
mod tests {
    use agentmesh_resilience::{BreakerConfig, Outcome};

    use super::*;

    fn breaker(recovery_timeout: Duration) -> CircuitBreaker {
        CircuitBreaker::new("db", BreakerConfig { failure_threshold: 1, recovery_timeout, ..BreakerConfig::default() })
    }

    fn fail(breaker: &CircuitBreaker) {
        breaker.try_acquire().unwrap().record(Outcome::RETRYABLE);
    }

    async fn status_of(dependency: Dependency) -> (String, i32) {
        let registry = DependencyHealth::new("test", Duration::from_secs(1));
        registry.register(dependency);
        let entry = registry.check().await.remove(0);
        (entry.status, entry.circuit_breaker_state)
    }

    #[tokio::test]
    async fn status_follows_the_probe_and_the_breaker() {
        let kind = ExternalServiceType::Database;
        let closed = breaker(Duration::from_secs(60));
        let healthy = Dependency::new("db", kind).with_breaker(&closed).with_probe(|| async { Ok::<(), String>(()) });
        assert_eq!(status_of(healthy).await, ("healthy".to_owned(), CircuitBreakerState::Closed as i32));

        let failing = Dependency::new("db", kind).with_probe(|| async { Err::<(), _>("refused") });
        assert_eq!(status_of(failing).await, ("unhealthy".to_owned(), CircuitBreakerState::Closed as i32));

        let open = breaker(Duration::from_secs(60));
        fail(&open);
        let refused = Dependency::new("db", kind).with_breaker(&open);
        assert_eq!(status_of(refused).await, ("unhealthy".to_owned(), CircuitBreakerState::Open as i32));

        // No recovery wait: the open breaker is half-open when read, probing recovery.
        let probing = breaker(Duration::ZERO);
        fail(&probing);
        let recovering = Dependency::new("db", kind).with_breaker(&probing);
        assert_eq!(status_of(recovering).await, ("degraded".to_owned(), CircuitBreakerState::HalfOpen as i32));
    }

    #[tokio::test]
    async fn unregistered_dependencies_are_no_longer_listed() {
        let registry = DependencyHealth::new("test", Duration::from_secs(1));
        for name in ["mcp-server-a", "mcp-server-b", "mcp-server-a"] {
            registry.register(Dependency::new(name, ExternalServiceType::McpServer));
        }
        registry.unregister("mcp-server-a");
        let names: Vec<String> = registry.check().await.into_iter().map(|entry| entry.service_name).collect();
        assert_eq!(names, ["mcp-server-b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_is_unhealthy_after_the_timeout() {
        let registry = DependencyHealth::new("test", Duration::from_millis(100));
        registry.register(
            Dependency::new("vault", ExternalServiceType::SecretManager)
                .with_probe(std::future::pending::<Result<(), String>>),
        );
        let entry = registry.check().await.remove(0);
        assert_eq!(entry.status, "unhealthy");
        let message = &entry.metadata.unwrap().fields["message"];
        assert_eq!(message.kind, Some(Kind::StringValue("no answer within 100 ms".to_owned())));
    }
}
