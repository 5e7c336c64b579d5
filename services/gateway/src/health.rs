//! `agentmesh.health.v1.HealthService`: liveness, readiness and per-dependency health of
//! the mesh as the gateway sees it (`/api/v1/health`, `/health/ready`, `/health/services`).
//!
//! Readiness asks every service's `grpc.health.v1` over the same resilient channels the
//! gateway routes through; service health adds each channel's circuit breaker state and
//! success/error counts, and the event bus' connection state.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::EventBus;
use agentmesh_proto::agentmesh::common::v1::{CircuitBreakerState, ExternalServiceType, ServiceHealth};
use agentmesh_proto::agentmesh::health::v1 as pb;
use agentmesh_proto::agentmesh::health::v1::health_service_server::HealthService;
use agentmesh_resilience::BreakerState;
use agentmesh_runtime::client::ServiceChannel;
use agentmesh_runtime::{ApiError, ServiceName};
use prost_types::{Struct, Timestamp, Value, value::Kind};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The mesh's health, as served by the gateway.
pub struct MeshHealth {
    /// Channels to every service behind the gateway.
    pub services: Vec<(ServiceName, ServiceChannel)>,
    /// The bus events flow through.
    pub bus: Arc<dyn EventBus>,
    /// Longest a single check may take.
    pub check_timeout: Duration,
}

struct Check {
    name: String,
    ready: bool,
    message: String,
    latency_ms: i64,
}

impl MeshHealth {
    async fn check(&self, service: ServiceName, channel: &ServiceChannel) -> Check {
        let started = Instant::now();
        let mut client = HealthClient::new(channel.clone());
        let answer =
            tokio::time::timeout(self.check_timeout, client.check(HealthCheckRequest { service: String::new() })).await;
        let (ready, message) = match answer {
            Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => {
                (true, "serving".to_owned())
            }
            Ok(Ok(_)) => (false, "not serving".to_owned()),
            Ok(Err(status)) => (false, ApiError::from_status(&status).message),
            Err(_) => (false, format!("no answer within {:?}", self.check_timeout)),
        };
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        Check { name: service.as_str().to_owned(), ready, message, latency_ms }
    }

    async fn checks(&self) -> Vec<Check> {
        let mut checks = futures::future::join_all(self.services.iter().map(|(s, c)| self.check(*s, c))).await;
        let bus = self.bus.health();
        checks.push(Check {
            name: "event-bus".to_owned(),
            ready: bus.is_ready(),
            message: format!("{bus:?}").to_lowercase(),
            latency_ms: 0,
        });
        checks
    }
}

fn now() -> Timestamp {
    let at = chrono::Utc::now();
    Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

fn text(value: &str) -> Value {
    Value { kind: Some(Kind::StringValue(value.to_owned())) }
}

fn breaker_state(state: BreakerState) -> CircuitBreakerState {
    match state {
        BreakerState::Closed => CircuitBreakerState::Closed,
        BreakerState::Open => CircuitBreakerState::Open,
        BreakerState::HalfOpen => CircuitBreakerState::HalfOpen,
    }
}

#[tonic::async_trait]
impl HealthService for MeshHealth {
    async fn check_liveness(
        &self,
        _request: Request<pb::CheckLivenessRequest>,
    ) -> Result<Response<pb::CheckLivenessResponse>, Status> {
        Ok(Response::new(pb::CheckLivenessResponse {
            status: "ok".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            timestamp: Some(now()),
        }))
    }

    async fn check_readiness(
        &self,
        _request: Request<pb::CheckReadinessRequest>,
    ) -> Result<Response<pb::CheckReadinessResponse>, Status> {
        let checks = self.checks().await;
        let failing: Vec<&Check> = checks.iter().filter(|c| !c.ready).collect();
        if !failing.is_empty() {
            let details: serde_json::Map<String, serde_json::Value> =
                failing.iter().map(|c| (c.name.clone(), serde_json::Value::from(c.message.clone()))).collect();
            let error =
                ApiError::new(agentmesh_runtime::ErrorCode::ExternalService, "Not ready: dependencies are unavailable")
                    .with_detail("failing", serde_json::Value::Object(details))
                    .with_detail("is_retryable", true)
                    .with_retry_after(Duration::from_secs(5));
            return Err(error.into());
        }
        Ok(Response::new(pb::CheckReadinessResponse {
            ready: true,
            status: "ready".to_owned(),
            checks: checks
                .into_iter()
                .map(|c| pb::ReadinessCheck {
                    name: c.name,
                    ready: c.ready,
                    message: c.message,
                    latency_ms: c.latency_ms,
                })
                .collect(),
            timestamp: Some(now()),
        }))
    }

    async fn list_service_health(
        &self,
        _request: Request<pb::ListServiceHealthRequest>,
    ) -> Result<Response<pb::ListServiceHealthResponse>, Status> {
        let checks = self.checks().await;
        let mut services: Vec<ServiceHealth> = Vec::new();
        for ((service, channel), check) in self.services.iter().zip(&checks) {
            let snapshot = channel.policy().breaker().snapshot();
            let metadata = Struct {
                fields: [
                    ("kind".to_owned(), text("internal_service")),
                    ("message".to_owned(), text(&check.message)),
                    ("latency_ms".to_owned(), Value { kind: Some(Kind::NumberValue(check.latency_ms as f64)) }),
                ]
                .into(),
            };
            services.push(ServiceHealth {
                service_name: service.as_str().to_owned(),
                service_type: ExternalServiceType::Unspecified as i32,
                status: if check.ready { "healthy" } else { "unhealthy" }.to_owned(),
                last_check: Some(now()),
                error_count: i64::try_from(snapshot.failures).unwrap_or(i64::MAX),
                success_count: i64::try_from(snapshot.successes).unwrap_or(i64::MAX),
                circuit_breaker_state: breaker_state(snapshot.state) as i32,
                metadata: Some(metadata),
            });
        }
        if let Some(bus) = checks.last() {
            services.push(ServiceHealth {
                service_name: bus.name.clone(),
                service_type: ExternalServiceType::MessageQueue as i32,
                status: if bus.ready { "healthy" } else { "unhealthy" }.to_owned(),
                last_check: Some(now()),
                circuit_breaker_state: CircuitBreakerState::Closed as i32,
                metadata: Some(Struct { fields: [("message".to_owned(), text(&bus.message))].into() }),
                ..ServiceHealth::default()
            });
        }
        Ok(Response::new(pb::ListServiceHealthResponse { services }))
    }
}
