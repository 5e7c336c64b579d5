//! 100 open/close cycles of a stdio MCP server leave the broker with the processes and file
//! descriptors it started with: nothing leaks per connection.
//!
//! Alone in its own test binary, so that no other test's children or descriptors are
//! counted. Uses the standard-library-only server in tests/mcp (no install needed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use agentmesh_mcp_broker::connection::{Connection, ServerSpec, StdioSpec, Timeouts, TransportSpec};
use common::children;

const CYCLES: usize = 100;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn open_close_cycles_leak_no_process_and_no_descriptor() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mcp/misbehaving_server.py");
    let pidfile = std::env::temp_dir().join(format!("{}.pids", agentmesh_testkit::unique_name("cycles")));
    let spec = ServerSpec {
        label: "cycles".into(),
        transport: TransportSpec::Stdio(StdioSpec {
            command: "python3".into(),
            args: vec![script.to_str().unwrap().into(), "bad-after-init".into(), pidfile.to_str().unwrap().into()],
            env: vec![("PYTHONDONTWRITEBYTECODE".into(), "1".into())],
            working_directory: None,
        }),
        timeouts: Timeouts { initialize: Duration::from_secs(20), ..Timeouts::default() },
    };
    // One cycle first, so that lazily created runtime resources are counted in the baseline.
    Connection::open(&spec).await.unwrap().close().await;
    let (descriptors, processes) = (open_descriptors(), children().len());
    for _ in 0..CYCLES {
        let connection = Connection::open(&spec).await.unwrap();
        assert!(connection.pid().is_some());
        connection.close().await;
    }
    assert_eq!(children().len(), processes, "child processes leaked");
    assert_eq!(open_descriptors(), descriptors, "file descriptors leaked");
    std::fs::remove_file(pidfile).unwrap();
}
