//! The `agentmesh-mcp-broker` binary: configuration, telemetry and shutdown come from the runtime.

use std::process::ExitCode;

fn main() -> ExitCode {
    agentmesh_runtime::binary::main(agentmesh_runtime::ServiceName::McpBroker, agentmesh_mcp_broker::run)
}
