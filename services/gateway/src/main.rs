//! The `agentmesh-gateway` binary: configuration, telemetry and shutdown come from the runtime.

use std::process::ExitCode;

/// mimalloc: the services allocate per request, and glibc malloc cost a fifth of the
/// gateway's CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    agentmesh_runtime::binary::main(agentmesh_gateway::SETTINGS, agentmesh_gateway::run)
}
