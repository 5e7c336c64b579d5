//! The `main` every service binary shares: configuration → runtime → telemetry → listener
//! → the service's `run` until SIGTERM/SIGINT.
//!
//! Keeping this here makes each `main.rs` one line and guarantees every binary validates
//! its configuration, logs and exits the same way.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{Config, ServiceName};
use crate::server::{bind, serve_metrics, shutdown_signal};
use crate::telemetry;

/// The shutdown future handed to a service: resolves when the process should stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Exit code for a configuration the binary refuses to start with.
const EXIT_BAD_CONFIG: u8 = 2;

/// Runs `service` as a process: loads and validates [`Config`] from the environment (exit
/// code 2 listing every bad variable), starts the tokio runtime with `WORKERS` threads,
/// installs telemetry, binds the service's listen address and awaits `run`.
pub fn main<F, Fut, E>(service: ServiceName, run: F) -> ExitCode
where
    F: FnOnce(Arc<Config>, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("agentmesh-{service}: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match build_runtime(config.workers) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agentmesh-{service}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(service.as_str(), &config.observability) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("agentmesh-{service}: {error}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(error) = spawn_metrics_listener(&config).await {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
        let listener = match bind(config.listen_addr(service)).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        match run(Arc::new(config), listener, Box::pin(shutdown_signal())).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}

/// Starts the dedicated metrics listener when `OBSERVABILITY_METRICS_PORT` is set; it lives
/// as long as the runtime.
pub async fn spawn_metrics_listener(config: &Config) -> Result<(), crate::ServerError> {
    let observability = &config.observability;
    if !observability.metrics_enabled || observability.metrics_port == 0 {
        return Ok(());
    }
    let address = std::net::SocketAddr::new(config.listen_addr(ServiceName::Gateway).ip(), observability.metrics_port);
    let listener = bind(address).await?;
    let path = observability.metrics_path.clone();
    tokio::spawn(async move {
        if let Err(error) = serve_metrics(listener, &path, std::future::pending()).await {
            tracing::error!(%error, "metrics listener failed");
        }
    });
    Ok(())
}

/// A multi-threaded runtime with `workers` threads (0 = one per core).
pub fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    builder.enable_all().build()
}
