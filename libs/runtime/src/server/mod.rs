//! One call serves a service the way every agentmesh service is served.
//!
//! [`GrpcServer`] adds `grpc.health.v1`, the service's dependency health
//! (`agentmesh.health.v1.DependencyHealthService`, see [`DependencyHealth`]), reflection
//! v1 and v1alpha (older grpcurl, Postman and Python's grpcio-reflection speak only
//! v1alpha) listing only the services this port serves, Prometheus `/metrics` on the same
//! port (HTTP/1.1 is accepted beside gRPC), the per-call layer (correlation id, trace
//! context, deadline up to the method's maximum, authentication, metrics) and
//! graceful shutdown: on the shutdown signal every service reports NOT_SERVING, keeps
//! serving for the drain delay so load balancers notice, stops accepting, and gives
//! in-flight calls the grace period before the rest are cut.
//!
//! Authentication is on unless a server opts out: by default every call (except health
//! and reflection) must carry a principal and an actor token this service accepts
//! ([`crate::auth::MeshVerifier`], actors per [`crate::auth::actors::served_actors`]).
//! The gateway replaces it with its own authenticator for end users.
//!
//! Opt-in, for a port browsers call (the gateway's): grpc-web beside native gRPC
//! ([`GrpcServer::accept_grpc_web`], see the `grpc_web` module) and CORS over the
//! whole port ([`GrpcServer::with_cors`]).

mod grpc_web;
mod layer;

pub use grpc_web::{is_grpc_web, is_native_grpc};

use std::convert::Infallible;
use std::future::Future;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower_http::cors::CorsLayer;

use agentmesh_proto::agentmesh::health::v1::dependency_health_service_server::DependencyHealthServiceServer;

use crate::auth::{Authenticate, ServiceIdentity};
use crate::config::{Config, ServerConfig, ServiceName};
use crate::deadlines::MethodDeadlines;
use crate::dependencies::DependencyHealth;
use crate::telemetry::render_metrics;

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The reflection service could not load the descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Accepting or serving connections failed.
    #[error("serving failed: {0}")]
    Io(#[source] std::io::Error),
}

/// Binds `address`, naming it in the error.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address).await.map_err(|source| ServerError::Bind { address, source })
}

/// A gRPC server under construction. See the module documentation.
pub struct GrpcServer {
    /// Labels metrics and logs (e.g. `session-store`).
    name: &'static str,
    routes: RoutesBuilder,
    health: HealthReporter,
    health_service: HealthServer<HealthService>,
    /// Fully-qualified names of the added services, reported SERVING once listening.
    served: Vec<&'static str>,
    /// Services reflection lists besides the served ones (the gateway's passthrough).
    reflected: Vec<String>,
    /// This service's dependencies, served as `DependencyHealthService`.
    dependencies: DependencyHealth,
    authenticator: Option<Arc<dyn Authenticate>>,
    settings: ServerConfig,
    metrics_path: Option<String>,
    /// Serves every request no gRPC service claims (the gateway's REST API).
    http_fallback: Option<axum::Router>,
    /// Translates grpc-web calls to native gRPC before anything else sees them.
    grpc_web: bool,
    /// Answers preflights and marks responses for the origins browsers may call from.
    cors: Option<CorsLayer>,
}

impl GrpcServer {
    /// A server for `service`, with shutdown timing and metrics from `config`, that
    /// requires every call to carry a principal and an actor token `service` accepts.
    pub fn new(service: ServiceName, config: &Config) -> Self {
        let verifier: Arc<dyn Authenticate> = Arc::new(ServiceIdentity::from_config(config, service).verifier());
        let health = HealthReporter::new();
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
        let observability = &config.observability;
        Self {
            name: service.as_str(),
            routes: Routes::builder(),
            health,
            health_service,
            served: Vec::new(),
            reflected: Vec::new(),
            dependencies: DependencyHealth::new(service.as_str(), observability.health_check_timeout),
            authenticator: Some(verifier),
            settings: config.server.clone(),
            metrics_path: observability.metrics_enabled.then(|| observability.metrics_path.clone()),
            http_fallback: None,
            grpc_web: false,
            cors: None,
        }
    }

    /// Serves requests that match no gRPC service with `router` (HTTP/1.1 and HTTP/2).
    #[must_use]
    pub fn with_http_fallback(mut self, router: axum::Router) -> Self {
        self.http_fallback = Some(router);
        self
    }

    /// Also accepts grpc-web (`application/grpc-web`, `…+proto`, `…-text`), over HTTP/1.1
    /// or HTTP/2, for every gRPC service and the HTTP fallback alike: each call is
    /// translated to native gRPC before routing and authentication, and its response back.
    #[must_use]
    pub fn accept_grpc_web(mut self) -> Self {
        self.grpc_web = true;
        self
    }

    /// Applies `cors` to every request on the port: gRPC, grpc-web and the HTTP fallback.
    #[must_use]
    pub fn with_cors(mut self, cors: CorsLayer) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Adds a generated tonic service.
    #[must_use]
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.served.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Reports `name` SERVING in `grpc.health.v1` like an added service, for a service the
    /// HTTP fallback serves (the gateway's own services, reached through its passthrough).
    #[must_use]
    pub fn report_serving(mut self, name: &'static str) -> Self {
        self.served.push(name);
        self
    }

    /// Lists `name` in reflection without serving it here: a service another process
    /// serves behind this port (the gateway's passthrough).
    #[must_use]
    pub fn reflect_service(mut self, name: impl Into<String>) -> Self {
        self.reflected.push(name.into());
        self
    }

    /// The registry of this service's dependencies, served on this port; register each
    /// dependency (and attach the event bus for breaker events) before serving.
    pub fn dependencies(&self) -> DependencyHealth {
        self.dependencies.clone()
    }

    /// Authenticates every call except health and reflection with `authenticator` instead
    /// of the mesh's principal and actor tokens (the gateway's end-user authentication).
    #[must_use]
    pub fn with_authenticator(mut self, authenticator: Arc<dyn Authenticate>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// Serves every call without authentication. Only for tests and tools that stand in
    /// for a service; never for a service of the mesh.
    #[must_use]
    pub fn without_authentication(mut self) -> Self {
        self.authenticator = None;
        self
    }

    /// A handle to change health status later, e.g. NOT_SERVING while a database is down.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then drains (see module docs).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let mut served = self.served;
        let dependencies = DependencyHealthServiceServer::new(self.dependencies);
        served.push(<DependencyHealthServiceServer<DependencyHealth> as NamedService>::NAME);
        let reflected: Vec<String> = served.iter().map(|name| (*name).to_owned()).chain(self.reflected).collect();
        let mut routes = self.routes;
        routes.add_service(dependencies);
        routes.add_service(self.health_service);
        routes.add_service(reflection(&reflected).build_v1()?);
        routes.add_service(reflection(&reflected).build_v1alpha()?);
        let mut router = routes.routes().into_axum_router();
        if let Some(path) = &self.metrics_path {
            router = router.route(path, get(|| async { render_metrics() }));
        }
        if let Some(fallback) = self.http_fallback {
            router = router.fallback_service(fallback);
        }

        for name in &served {
            self.health.set_service_status(name, ServingStatus::Serving).await;
        }
        self.health.set_service_status("", ServingStatus::Serving).await;

        // Printed as an address (`127.0.0.1:50051`), never as `Some(…)`.
        let local = listener.local_addr().map_or_else(|error| format!("unknown ({error})"), |a| a.to_string());
        // Outermost last: each layer sees the request before the ones listed above it.
        let mut app = router.layer(layer::ServerCallLayer {
            service_name: self.name,
            authenticator: self.authenticator,
            deadlines: Arc::new(MethodDeadlines::from_contract(self.settings.request_timeout)),
        });
        if self.grpc_web {
            // Outside the call layer, so authentication, deadlines and metrics see native gRPC.
            app = app.layer(grpc_web::GrpcWebLayer);
        }
        if let Some(cors) = self.cors {
            // Outermost: a preflight is answered before authentication could refuse it.
            app = app.layer(cors);
        }
        // Until it stops accepting, this process's clients may call it without the socket.
        let in_process = match listener.local_addr() {
            Ok(address) if self.settings.in_process_calls => Some(crate::in_process::register(address, app.clone())),
            _ => None,
        };
        // One hyper server per port for gRPC (h2c), REST (HTTP/1.1 and 2) and WebSocket
        // upgrades, which tonic's own server does not support.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY not set");
            }
        });
        let (stop_accepting, stop_accepting_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                // A dropped sender also means stop.
                let _ = stop_accepting_rx.await;
            })
            .into_future();
        tokio::pin!(server);
        tracing::info!(service = self.name, address = %local, "serving");

        tokio::select! {
            result = &mut server => return result.map_err(ServerError::Io),
            () = shutdown => {}
        }

        tracing::info!(service = self.name, drain_delay = ?self.settings.drain_delay, "shutting down: NOT_SERVING");
        for name in &served {
            self.health.set_service_status(name, ServingStatus::NotServing).await;
        }
        self.health.set_service_status("", ServingStatus::NotServing).await;
        tokio::select! {
            result = &mut server => return result.map_err(ServerError::Io),
            () = tokio::time::sleep(self.settings.drain_delay) => {}
        }

        drop(in_process);
        let _ = stop_accepting.send(());
        match tokio::time::timeout(self.settings.shutdown_grace, &mut server).await {
            Ok(result) => {
                tracing::info!(service = self.name, "stopped");
                result.map_err(ServerError::Io)
            }
            Err(_) => {
                tracing::warn!(service = self.name, grace = ?self.settings.shutdown_grace, "grace period over: cutting remaining calls");
                Ok(())
            }
        }
    }
}

/// Reflection over the agentmesh contract, `grpc.health.v1` and reflection itself, listing
/// only `services`, `grpc.health.v1.Health` and both reflection versions.
fn reflection(services: &[String]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(agentmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        // Registered above, so both versions describe each other.
        .include_reflection_service(false);
    let own = ["grpc.health.v1.Health", REFLECTION_V1, REFLECTION_V1ALPHA];
    for name in services.iter().map(String::as_str).chain(own) {
        builder = builder.with_service_name(name);
    }
    builder
}

/// Full name of the reflection service, version 1.
pub const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
/// Full name of the reflection service, version 1alpha.
pub const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Resolves on SIGTERM or SIGINT (Ctrl-C): what binaries pass as their shutdown future.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Serves only Prometheus metrics on `listener` (the optional `OBSERVABILITY_METRICS_PORT`
/// listener) until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    path: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(path, get(|| async { render_metrics() }));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
