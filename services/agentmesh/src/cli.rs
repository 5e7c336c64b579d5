//! The command line: `agentmesh up [--http ADDR]` and `agentmesh keys create|list|revoke`.

use std::net::SocketAddr;
use std::process::ExitCode;

use agentmesh_runtime::binary::run_process;
use agentmesh_runtime::shutdown_signal;
use clap::{Parser, Subcommand};

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
    /// Manage API keys in the gateway's PostgreSQL key store (`USE_DATABASE`, `DB_*`).
    #[command(subcommand)]
    Keys(crate::keys::KeysCommand),
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Up { http } => run_process("agentmesh", "agentmesh", &crate::SERVICES, |config| {
            crate::up::up(config, http, shutdown_signal())
        }),
        Command::Keys(command) => {
            run_process("agentmesh", "agentmesh", &crate::SERVICES, |config| crate::keys::run(config, command))
        }
    }
}
