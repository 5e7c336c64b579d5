//! The life of stdio children around the broker's own: a server that keeps exiting is
//! restarted with backoff until it is deleted; a broker killed with `SIGKILL` (the real
//! `agentmesh-mcp-broker` binary) leaves no child, its server dying with it (parent-death
//! signal) and what that server started being killed by the next broker to start (the
//! state directory's ledger), which leaves groups it does not own alone.
//!
//! Uses the standard-library-only server in tests/mcp (no install needed) and `setpriv`
//! (util-linux).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentmesh_mcp_broker::connection::ledger::start_time;
use agentmesh_mcp_broker::convert::object_to_struct;
use agentmesh_proto::agentmesh::mcp::v1 as pb;
use agentmesh_proto::agentmesh::mcp::v1::mcp_service_client::McpServiceClient;
use agentmesh_runtime::auth::Principal;
use agentmesh_runtime::{ApiError, ErrorCode};
use agentmesh_testkit::{identity, unique_name};
use common::{call, eventually, orchestrator_call, read_pids, running, scripts_dir};
use tonic::transport::Channel;

fn admin() -> Principal {
    Principal {
        scopes: vec!["mcp_servers:admin".into(), "mcp_servers:write".into(), "tools:read".into()],
        ..identity::user("root", "acme")
    }
}

fn misbehaving(name: &str, mode: &str, pidfile: &Path) -> pb::CreateMcpServerRequest {
    let script = scripts_dir().join("misbehaving_server.py").display().to_string();
    pb::CreateMcpServerRequest {
        name: name.to_owned(),
        stdio: Some(pb::StdioCommand {
            command: "python3".into(),
            args: vec![script, mode.into(), pidfile.display().to_string()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn temporary(name: &str) -> PathBuf {
    std::env::temp_dir().join(unique_name(name))
}

#[tokio::test]
async fn a_server_that_keeps_exiting_is_restarted_with_backoff_until_deleted() {
    let env = [("MCP_SHUTDOWN_GRACE", "0.5"), ("MCP_HEALTH_CHECK_INTERVAL", "3600"), ("RETRY_MCP_MAX_ATTEMPTS", "1")];
    let mut mesh = common::start(&env, None).await;
    let pidfile = temporary("crash-loop");
    let name = unique_name("crashy");
    let create = misbehaving(&name, "crash-loop", &pidfile);
    let server = mesh.client.create_mcp_server(call(&admin(), create)).await.unwrap().into_inner().mcp_server.unwrap();

    // The first process is discovered and exits; each restart is a new process.
    eventually("the server was not restarted twice", || async { read_pids(&pidfile).len() >= 3 }).await;
    let pids = read_pids(&pidfile);
    assert_eq!(pids.iter().collect::<std::collections::HashSet<_>>().len(), pids.len(), "{pids:?}");

    // A call meanwhile is refused (retryably), not left waiting.
    let invoke = pb::InvokeToolRequest {
        tool: Some(pb::invoke_tool_request::Tool::ToolName(format!("{name}_noop"))),
        arguments: Some(object_to_struct(&serde_json::Map::new())),
        ..Default::default()
    };
    let refused = mesh.client.invoke_tool(orchestrator_call(&admin(), invoke)).await.unwrap_err();
    let refused = ApiError::from_status(&refused);
    assert_eq!(refused.code, ErrorCode::ExternalService, "{refused:?}");

    // Delays double (0.5 s, 1 s, 2 s, 4 s, jittered): a few more restarts in four seconds,
    // where restarting at once would have started one every few milliseconds.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarts = read_pids(&pidfile).len() - 1;
    assert!(restarts <= 8, "{restarts} restarts: no backoff");

    let delete = pb::DeleteMcpServerRequest { mcp_server_id: server.id };
    mesh.client.delete_mcp_server(call(&admin(), delete)).await.unwrap();
    // An attempt already under way may still start a process, which is killed once open;
    // after that nothing is started any more.
    let settled = || async {
        let before = read_pids(&pidfile);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = read_pids(&pidfile);
        after == before && after.iter().all(|pid| !running(*pid))
    };
    eventually("restarts went on after the deletion, or a restarted server outlived it", settled).await;
    std::fs::remove_file(pidfile).unwrap();
}

/// The real broker binary, serving on a loopback port with its state in `state_dir`.
struct Broker {
    process: Child,
    client: McpServiceClient<Channel>,
}

impl Broker {
    async fn start(state_dir: &Path) -> Broker {
        let port = agentmesh_testkit::ports::reserve().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentmesh-mcp-broker"));
        command.env_clear().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .env("MCP_BROKER_ADDR", format!("127.0.0.1:{port}"))
            .env("MCP_STATE_DIR", state_dir)
            .env("MCP_SHUTDOWN_GRACE", "0.5")
            .env("MCP_HEALTH_CHECK_INTERVAL", "3600");
        let process = command.spawn().unwrap();
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect_lazy();
        let client = McpServiceClient::new(channel);
        eventually("the broker did not start serving", || {
            let mut client = client.clone();
            async move { client.list_mcp_servers(call(&admin(), pb::ListMcpServersRequest::default())).await.is_ok() }
        })
        .await;
        Broker { process, client }
    }

    fn ledgers(state_dir: &Path) -> Vec<String> {
        let files = std::fs::read_dir(state_dir).unwrap();
        let contents = files.map(|file| std::fs::read_to_string(file.unwrap().path()).unwrap_or_default());
        contents.collect()
    }

    fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.process.id().to_string();
        assert!(Command::new("kill").arg(format!("-{signal}")).arg(pid).status().unwrap().success());
        self.process.wait().unwrap()
    }
}

#[tokio::test]
async fn a_broker_killed_with_sigkill_leaves_no_child_once_a_broker_starts_again() {
    let state_dir = temporary("mcp-state");
    let pidfile = temporary("spawner");
    let mut broker = Broker::start(&state_dir).await;
    let create = misbehaving(&unique_name("spawner"), "spawner", &pidfile);
    let server =
        broker.client.create_mcp_server(call(&admin(), create)).await.unwrap().into_inner().mcp_server.unwrap();
    let refresh = pb::RefreshMcpServerRequest { mcp_server_id: server.id };
    broker.client.refresh_mcp_server(call(&admin(), refresh)).await.unwrap();
    let [server_pid, grandchild] = read_pids(&pidfile)[..] else { panic!("two pids expected") };
    assert!(running(server_pid) && running(grandchild));
    let group_line = format!("group {server_pid} {}", start_time(server_pid).unwrap());
    assert!(Broker::ledgers(&state_dir).iter().any(|ledger| ledger.contains(&group_line)), "not recorded");

    assert_eq!(broker.signal("KILL").signal(), Some(9));
    // The server ignores SIGTERM and its stdin closing: only its parent-death signal ends it.
    eventually("the server outlived the broker", || async { !running(server_pid) }).await;
    // What it started is no child of the broker's: the next broker kills it.
    assert!(running(grandchild), "the grandchild is expected to survive until a broker starts again");
    let mut next = Broker::start(&state_dir).await;
    eventually("the server's child outlived the next broker's start", || async { !running(grandchild) }).await;
    assert!(!Broker::ledgers(&state_dir).iter().any(|ledger| ledger.contains("group")), "the old ledger stayed");

    // SIGTERM: the broker stops in order and takes its ledger with it.
    assert!(next.signal("TERM").success());
    assert!(Broker::ledgers(&state_dir).is_empty(), "{:?}", Broker::ledgers(&state_dir));
    std::fs::remove_dir(&state_dir).unwrap();
    std::fs::remove_file(pidfile).unwrap();
}

/// `sleep 600` leading a process group of its own.
fn own_group_sleeper() -> Child {
    Command::new("sleep").arg("600").process_group(0).spawn().unwrap()
}

#[tokio::test]
async fn a_starting_broker_kills_recorded_groups_of_a_dead_broker_and_no_other() {
    let state_dir = temporary("mcp-state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let (mut left, mut unrelated) = (own_group_sleeper(), own_group_sleeper());
    let left_started = start_time(left.id()).unwrap();
    let unrelated_started = start_time(unrelated.id()).unwrap();
    // A broker that no longer runs: this process's id with a start time it does not have.
    let ledger = format!(
        "owner {} 0\ngroup {} {left_started}\ngroup {} {}\n",
        std::process::id(),
        left.id(),
        unrelated.id(),
        unrelated_started + 1,
    );
    let dead = state_dir.join("dead-broker.groups");
    std::fs::write(&dead, ledger).unwrap();

    let mut broker = Broker::start(&state_dir).await;
    let status = left.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the recorded group was not killed: {status:?}");
    assert!(unrelated.try_wait().unwrap().is_none(), "a group whose start time differs was killed");
    assert!(!dead.exists(), "the dead broker's ledger was not removed");

    unrelated.kill().unwrap();
    unrelated.wait().unwrap();
    assert!(broker.signal("TERM").success());
    std::fs::remove_dir_all(&state_dir).unwrap();
}
