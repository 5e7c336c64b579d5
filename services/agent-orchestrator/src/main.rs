//! The `agentmesh-agent-orchestrator` binary: configuration, telemetry and shutdown come from the runtime.

use std::process::ExitCode;

fn main() -> ExitCode {
    agentmesh_runtime::binary::main(
        agentmesh_runtime::ServiceName::AgentOrchestrator,
        agentmesh_agent_orchestrator::run,
    )
}
