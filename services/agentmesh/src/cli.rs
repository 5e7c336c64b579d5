//! The command line: `agentmesh up [--http ADDR]`.

use std::net::SocketAddr;
use std::process::ExitCode;

use agentmesh_runtime::binary::{build_runtime, spawn_metrics_listener};
use agentmesh_runtime::{Config, shutdown_signal, telemetry};
use clap::{Parser, Subcommand};

/// Exit code for a configuration agentmesh refuses to start with.
const EXIT_BAD_CONFIG: u8 = 2;

/// agentmesh: a production backend for AI agents.
#[derive(Debug, Parser)]
#[command(name = "agentmesh", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run all six services in this process (embedded defaults: memory storage, in-process
    /// events). Configuration comes from the environment, as for the separate binaries.
    Up {
        /// Gateway listen address [default: HOST:PORT, i.e. 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("agentmesh: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match build_runtime(config.workers) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agentmesh: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init("agentmesh", &config.observability) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("agentmesh: {error}");
                return ExitCode::FAILURE;
            }
        };
        let result = match cli.command {
            Command::Up { http } => match spawn_metrics_listener(&config).await {
                Ok(()) => crate::up::up(config, http, shutdown_signal()).await,
                Err(error) => Err(error.into()),
            },
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "agentmesh stopped with an error");
                eprintln!("agentmesh: {error}");
                ExitCode::FAILURE
            }
        }
    })
}
