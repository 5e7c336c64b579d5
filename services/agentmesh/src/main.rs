//! The `agentmesh` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

/// mimalloc: the services allocate per request, and glibc malloc cost a fifth of the
/// gateway's CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    agentmesh::cli::main()
}
