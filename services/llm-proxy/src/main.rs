//! The `agentmesh-llm-proxy` binary: configuration, telemetry and shutdown come from the runtime.

use std::process::ExitCode;

fn main() -> ExitCode {
    agentmesh_runtime::binary::main(agentmesh_runtime::ServiceName::LlmProxy, agentmesh_llm_proxy::run)
}
