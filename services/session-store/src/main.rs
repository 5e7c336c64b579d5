//! The `agentmesh-session-store` binary: configuration, telemetry and shutdown come from the runtime.

use std::process::ExitCode;

fn main() -> ExitCode {
    agentmesh_runtime::binary::main(agentmesh_runtime::ServiceName::SessionStore, agentmesh_session_store::run)
}
