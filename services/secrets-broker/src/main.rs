//! The `agentmesh-secrets-broker` binary: configuration, telemetry and shutdown come from the runtime.

use std::process::ExitCode;

fn main() -> ExitCode {
    agentmesh_runtime::binary::main(agentmesh_runtime::ServiceName::SecretsBroker, agentmesh_secrets_broker::run)
}
