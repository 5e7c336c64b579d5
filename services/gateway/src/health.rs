//! `agentmesh.health.v1.HealthService`: liveness, readiness and per-dependency health of
//! the mesh as the gateway sees it (`/api/v1/health`, `/health/ready`, `/health/services`).
//!
//! Readiness asks every service's `grpc.health.v1` over the same resilient channels the
//! gateway routes through. Service health lists, in this order: one entry per service
//! (reachability, and the breaker state and counts of the gateway's channel to it); the
//! gateway's own dependencies (`event-bus`, `redis` for shared rate limits, `postgresql`
//! for API keys); then what each service reports through its
//! `agentmesh.health.v1.DependencyHealthService`, named `<service>/<dependency>` (for
//! example `session-store/postgresql`). A service that does not answer is reported
//! unhealthy in its own entry and contributes no dependency entries; the endpoint itself
//! never fails.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::EventBus;
use agentmesh_proto::agentmesh::common::v1::{ExternalServiceType, ServiceHealth};
use agentmesh_proto::agentmesh::health::v1 as pb;
use agentmesh_proto::agentmesh::health::v1::dependency_health_service_client::DependencyHealthServiceClient;
use agentmesh_proto::agentmesh::health::v1::health_service_server::HealthService;
use agentmesh_runtime::client::ServiceChannel;
use agentmesh_runtime::dependencies::breaker_state;
use agentmesh_runtime::{ApiError, DependencyHealth, ServiceName};
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
    /// The gateway's own dependencies (the bus among them).
    pub dependencies: DependencyHealth,
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

impl MeshHealth {
    /// The dependencies `service` reports, named `<service>/<dependency>`; none when it
    /// does not answer in time (its own entry then says why).
    async fn reported(&self, service: ServiceName, channel: &ServiceChannel) -> Vec<ServiceHealth> {
        let mut client = DependencyHealthServiceClient::new(channel.clone());
        let request = pb::ListDependenciesRequest {};
        let answer = match tokio::time::timeout(self.check_timeout, client.list_dependencies(request)).await {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(%service, code = ?status.code(), "no dependency health");
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
        answer
            .dependencies
            .into_iter()
            .map(|mut dependency| {
                dependency.service_name = format!("{service}/{}", dependency.service_name);
                let metadata = dependency.metadata.get_or_insert_with(Struct::default);
                metadata.fields.insert("service".to_owned(), text(service.as_str()));
                dependency
            })
            .collect()
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
        let reported = futures::future::join_all(self.services.iter().map(|(s, c)| self.reported(*s, c)));
        let (checks, own, reported) = tokio::join!(self.checks(), self.dependencies.check(), reported);
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
        services.extend(own);
        services.extend(reported.into_iter().flatten());
        Ok(Response::new(pb::ListServiceHealthResponse { services }))
    }
}
