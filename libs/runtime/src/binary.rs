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

use crate::config::{Config, LogFormat, ServiceName, ServiceSettings};
use crate::server::{ServerError, bind, serve_metrics, shutdown_signal};
use crate::telemetry;

/// The shutdown future handed to a service: resolves when the process should stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Exit code for a configuration the binary refuses to start with.
const EXIT_BAD_CONFIG: u8 = 2;

/// Runs the service `settings` names as a process: see [`run_process`]; then binds the
/// service's listen address and awaits `run` until SIGTERM/SIGINT.
pub fn main<F, Fut, E>(settings: ServiceSettings, run: F) -> ExitCode
where
    F: FnOnce(Arc<Config>, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display + From<ServerError>,
{
    let service = settings.service;
    let name = format!("agentmesh-{service}");
    run_process(&name, service.as_str(), &[settings], |config| async move {
        let listener = bind(config.listen_addr(service)).await?;
        run(Arc::new(config), listener, Box::pin(shutdown_signal())).await
    })
}

/// The life of an agentmesh process: loads and validates [`Config`] from the environment
/// with the settings of the `services` it runs (exit code 2 listing every bad variable),
/// starts the tokio runtime with `WORKERS` threads, installs telemetry for
/// `telemetry_name`, logs the configuration's warnings, starts the optional metrics
/// listener, then awaits `body`; an error from it is printed (and logged, when logs are
/// JSON for a shipper) and exits 1.
pub fn run_process<F, Fut, E>(program: &str, telemetry_name: &str, services: &[ServiceSettings], body: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display + From<ServerError>,
{
    run_process_with(program, telemetry_name, services, &[], body)
}

/// [`run_process`] with `overrides` set on top of the environment (command-line flags that
/// stand for variables).
pub fn run_process_with<F, Fut, E>(
    program: &str,
    telemetry_name: &str,
    services: &[ServiceSettings],
    overrides: &[(String, String)],
    body: F,
) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display + From<ServerError>,
{
    let config = match Config::from_env_overridden(services, overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{program}: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match build_runtime(config.workers) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{program}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(telemetry_name, &config.observability) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("{program}: {error}");
                return ExitCode::FAILURE;
            }
        };
        for warning in &config.warnings {
            tracing::warn!(variable = %warning.variable, "configuration: {}", warning.message);
        }
        // Text logs are for a person at a terminal, who needs the error once, plainly.
        let log_shipped = telemetry::log_format(&config.observability) == LogFormat::Json;
        let result = match spawn_metrics_listener(&config).await {
            Ok(()) => body(config).await,
            Err(error) => Err(E::from(error)),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                if log_shipped {
                    tracing::error!(%error, "stopped with an error");
                }
                eprintln!("{program}: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Starts the dedicated metrics listener when `OBSERVABILITY_METRICS_PORT` is set; it lives
/// as long as the runtime.
pub async fn spawn_metrics_listener(config: &Config) -> Result<(), ServerError> {
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
