//! The command line: `agentmesh up [--http ADDR] [--postgres URL] [--redis URL] [--nats URL]
//! [--loopback-peers]`,
//! `agentmesh chat`, `agentmesh keys create|list|revoke` and `agentmesh migrate [--check]`.

use std::process::ExitCode;

use agentmesh_runtime::binary::{run_process, run_process_with};
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
    Up(crate::up::UpArgs),
    /// Chat with an agent through the gateway.
    Chat(crate::chat::ChatArgs),
    /// Manage API keys in the gateway's PostgreSQL key store (`USE_DATABASE`, `DB_*`).
    #[command(subcommand)]
    Keys(crate::keys::KeysCommand),
    /// Apply every service's PostgreSQL migrations (`DB_*` settings), each in its schema.
    Migrate {
        /// Only list pending migrations per service; exit 1 when any are pending.
        #[arg(long)]
        check: bool,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Up(args) => {
            run_process_with("agentmesh", "agentmesh", &crate::SERVICES, &args.overrides(), |config| {
                crate::up::up(config, &args, shutdown_signal())
            })
        }
        Command::Chat(args) => crate::chat::main(args),
        Command::Keys(command) => {
            run_process("agentmesh", "agentmesh", &crate::SERVICES, |config| crate::keys::run(config, command))
        }
        Command::Migrate { check } => {
            run_process("agentmesh", "agentmesh", &crate::SERVICES, |config| crate::migrate::run(config, check))
        }
    }
}
