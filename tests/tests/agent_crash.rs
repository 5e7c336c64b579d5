//! Issue 15's crash test over the real binaries: the orchestrator executing a run is
//! killed with SIGKILL and started again, and the run resumes from its last checkpoint on
//! the new process: its stream, reconnected through the gateway with `Last-Event-ID`,
//! continues without gaps or repeats, announces `step_restarted`, and ends `completed`; the
//! session holds every message once, nothing duplicated and nothing half-written. Killed
//! twice over: while the model streams its answer, and while a tool of the MCP reference
//! server runs (after the model's step was checkpointed).
//!
//! Every service runs as its own process (gateway, session-store, llm-proxy with the
//! scripted model streaming one word per 50 ms, mcp-broker, agent-orchestrator) on
//! PostgreSQL, in a database the test creates and drops, and on NATS, in a stream and
//! under a subject root of its own (deleted at the end): run output on JetStream is what
//! lets the restarted orchestrator, and the gateway, pick the stream up where it stopped.
//! The run lease is 2 s (`AGENT_RUN_LEASE`), so the new process takes the run over soon.
//!
//! Without PostgreSQL or NATS (or, for the tool run, the MCP reference server of
//! `tests/mcp/install.sh`) a test skips with a one-line reason, unless
//! `AGENTMESH_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::mcp::{everything, register_everything, start_everything};
use agentmesh_e2e::rest::{Rest, SseEvent, names, parse_sse};
use agentmesh_e2e::{NO_RATE_LIMITS, Process, free_port, wait_http, wait_serving};
use agentmesh_events::{NatsBus, NatsConfig};
use agentmesh_testkit::postgres::PgDatabase;
use agentmesh_testkit::{Service, require, unique_name};
use reqwest::Method;
use serde_json::json;

const ALICE: &str = "sk-e2e-crash-0123456789abcdefghijklmnopqrstuvw";

/// The JetStream stream of one test, deleted when dropped (also when the test panics).
struct TestStream(NatsConfig);

impl Drop for TestStream {
    fn drop(&mut self) {
        let config = self.0.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async { NatsBus::connect(config).await?.delete_stream().await })
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("warning: could not delete the test stream {}: {deleted:?}", self.0.stream_name);
        }
    }
}

/// The mesh as separate processes; the orchestrator can be killed and started again.
struct Mesh {
    api: Rest,
    env: Vec<(&'static str, String)>,
    orchestrator_port: u16,
    orchestrator: Option<Process>,
    _services: Vec<Process>,
    _stream: TestStream,
    _database: PgDatabase,
}

impl std::ops::Deref for Mesh {
    type Target = Rest;

    fn deref(&self) -> &Rest {
        &self.api
    }
}

impl Mesh {
    async fn start() -> Option<Mesh> {
        let nats_url = require(Service::Nats).await?;
        let database = PgDatabase::create("agent_crash").await?;
        let stream = TestStream(NatsConfig {
            url: nats_url.clone(),
            stream_name: unique_name("agent_crash"),
            subject_root: unique_name("crash"),
            ..NatsConfig::default()
        });
        let [gateway, session_store, llm_proxy, mcp_broker, orchestrator] = [(); 5].map(|()| free_port().unwrap());
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let addr = |port: u16| format!("127.0.0.1:{port}");
        let mut env = vec![
            ("USE_DATABASE", "true".to_owned()),
            ("USE_MEMORY", "false".to_owned()),
            ("DB_URL", database.url().to_owned()),
            ("NATS_URL", nats_url),
            ("NATS_STREAM", stream.0.stream_name.clone()),
            ("NATS_SUBJECT_ROOT", stream.0.subject_root.clone()),
            ("HOST", "127.0.0.1".to_owned()),
            ("PORT", gateway.to_string()),
            ("SESSION_STORE_ADDR", addr(session_store)),
            ("SESSION_STORE_URL", url(session_store)),
            ("LLM_PROXY_ADDR", addr(llm_proxy)),
            ("LLM_PROXY_URL", url(llm_proxy)),
            ("MCP_BROKER_ADDR", addr(mcp_broker)),
            ("MCP_BROKER_URL", url(mcp_broker)),
            ("AGENT_ORCHESTRATOR_ADDR", addr(orchestrator)),
            ("AGENT_ORCHESTRATOR_URL", url(orchestrator)),
            ("SECURITY_API_KEYS", format!("{ALICE}=alice:premium")),
            ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned()),
            ("LLM_SCRIPTED_DELAY", "0.05".to_owned()),
            ("AGENT_RUN_LEASE", "2".to_owned()),
        ];
        env.extend(NO_RATE_LIMITS.map(|(name, value)| (name, value.to_owned())));
        let mut services = Vec::new();
        for (binary, port) in [
            ("agentmesh-session-store", session_store),
            ("agentmesh-llm-proxy", llm_proxy),
            ("agentmesh-mcp-broker", mcp_broker),
        ] {
            let mut process = Process::spawn(binary, &[], &env).unwrap();
            wait_serving(&mut process, port).await.unwrap();
            services.push(process);
        }
        let mut process = Process::spawn("agentmesh-gateway", &[], &env).unwrap();
        let api = Rest::new(url(gateway));
        wait_http(&mut process, &format!("{}/api/v1/health", api.base())).await.unwrap();
        services.push(process);
        let mut mesh = Mesh {
            api,
            env,
            orchestrator_port: orchestrator,
            orchestrator: None,
            _services: services,
            _stream: stream,
            _database: database,
        };
        mesh.start_orchestrator().await;
        Some(mesh)
    }

    async fn start_orchestrator(&mut self) {
        let mut process = Process::spawn("agentmesh-agent-orchestrator", &[], &self.env).unwrap();
        wait_serving(&mut process, self.orchestrator_port).await.unwrap();
        self.orchestrator = Some(process);
    }

    async fn kill_orchestrator(&mut self) {
        let status = self.orchestrator.take().unwrap().kill().await.unwrap();
        assert!(!status.success(), "killed, not exited: {status}");
    }
}

/// The ids of `events` that carry one (a `stream_error` does not).
fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().filter_map(|event| event.id).collect()
}

/// How many of `events` are named `name`.
fn count(events: &[SseEvent], name: &str) -> usize {
    events.iter().filter(|event| event.name == name).count()
}

/// A run's stream on both sides of the crash.
struct Crashed {
    run_id: String,
    /// What the first orchestrator streamed before it was killed.
    before: Vec<SseEvent>,
    /// The rest, streamed through the gateway by the new orchestrator after
    /// `Last-Event-ID`.
    after: Vec<SseEvent>,
    /// The run's record once it ended.
    run: serde_json::Value,
}

/// Starts a background run of `agent` on `session` with `message`, follows its stream
/// until `until` holds for the events seen, kills the orchestrator, starts a new one, and
/// reads the rest of the stream where it stopped. Checks what holds for every crash: the
/// ids go on without gaps or repeats, the step in flight is announced as restarted, the
/// run completes once, and reading the whole stream again gives the same ids.
async fn crash_mid_run(
    mesh: &mut Mesh,
    session: &str,
    agent: &str,
    message: &str,
    until: impl Fn(&[SseEvent]) -> bool,
) -> Crashed {
    let body = json!({"session_id": session, "message": message});
    let (status, run) = mesh.json(ALICE, Method::POST, &format!("/api/v1/agents/{agent}/runs"), Some(body)).await;
    assert_eq!(status, 202, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let stream = format!("/api/v1/runs/{run_id}/stream");

    let mut response = mesh.call(ALICE, Method::GET, &stream, None).await;
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    while !until(&parse_sse(&seen)) {
        let Some(chunk) = response.chunk().await.unwrap() else {
            panic!("the stream ended before the crash point:\n{seen}");
        };
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    mesh.kill_orchestrator().await;
    // The gateway ends the stream (with a `stream_error`) once its upstream is gone.
    while let Ok(Some(chunk)) = response.chunk().await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let before = parse_sse(&seen);
    let seen_ids = ids(&before);
    assert_eq!(seen_ids, (1..=seen_ids.len() as u64).collect::<Vec<_>>(), "{:?}", names(&before));
    assert_eq!(count(&before, "run_completed"), 0, "{:?}", names(&before));
    let last_seen = *seen_ids.last().unwrap();

    // A new orchestrator takes the run over once the dead one's lease has run out; the
    // client reconnects through the gateway where it stopped.
    mesh.start_orchestrator().await;
    let after = mesh.sse(ALICE, &stream, None, &[("Last-Event-ID", &last_seen.to_string())]).await;
    let kinds = names(&after);
    let after_ids = ids(&after);
    assert_eq!(after_ids.len(), after.len(), "every resumed event is numbered: {kinds:?}");
    assert_eq!(after_ids, (last_seen + 1..=last_seen + after.len() as u64).collect::<Vec<_>>(), "{kinds:?}");
    assert_eq!(count(&after, "step_restarted"), 1, "{kinds:?}");
    let completed = after.last().unwrap();
    assert_eq!(completed.name, "run_completed", "{kinds:?}");
    assert_eq!(completed.data["run_completed"]["status"], "completed", "{:?}", completed.data);
    assert_eq!(count(&after, "run_completed"), 1, "{kinds:?}");

    // The whole stream, read again from the start, is the same events, numbered 1, 2, 3...
    let replay = mesh.sse(ALICE, &stream, None, &[]).await;
    let expected: Vec<u64> = seen_ids.iter().chain(&after_ids).copied().collect();
    assert_eq!(ids(&replay), expected);

    // The record follows the stream's last event.
    let mut run = json!({});
    for _ in 0..200 {
        let (status, now) = mesh.json(ALICE, Method::GET, &format!("/api/v1/runs/{run_id}"), None).await;
        assert_eq!(status, 200, "{now}");
        run = now;
        if run["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(run["status"], "completed", "{run}");
    let (status, runs) = mesh.json(ALICE, Method::GET, &format!("/api/v1/sessions/{session}/runs"), None).await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "no second run: {runs}");
    Crashed { run_id, before, after, run }
}

#[tokio::test]
async fn a_run_killed_while_the_model_streams_resumes_on_the_next_orchestrator_with_one_answer() {
    let Some(mut mesh) = Mesh::start().await else { return };
    let session = mesh.session(ALICE).await;
    let agent = mesh
        .agent(ALICE, json!({"name": "talker", "model_config": {"model": "scripted/echo", "max_tokens": 4000}}))
        .await;
    let message = (1..=100).map(|word| format!("w{word}")).collect::<Vec<_>>().join(" ");
    let crashed = crash_mid_run(&mut mesh, &session, &agent, &message, |seen| count(seen, "token") >= 2).await;
    assert!(count(&crashed.before, "token") >= 2, "{}", crashed.run_id);

    // A client that discards the restarted step's partial tokens has exactly one answer.
    let answer = format!("You said: {message}");
    let restarted = crashed.after.iter().position(|event| event.name == "step_restarted").unwrap();
    let streamed: String = crashed.after[restarted..]
        .iter()
        .filter(|event| event.name == "token")
        .map(|event| event.data["token"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, answer);

    // The session holds the question and the whole answer, once each.
    let messages = mesh.messages(ALICE, &session).await;
    let summary: Vec<(&str, &str)> =
        messages.iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
    assert_eq!(summary, [("user", message.as_str()), ("assistant", answer.as_str())]);
    assert_eq!(messages[1]["id"], crashed.run["response_message_id"], "{}", crashed.run);
    assert_eq!(messages[1]["parent_message_id"], messages[0]["id"]);
}

#[tokio::test]
async fn a_run_killed_during_a_tool_call_resumes_from_its_checkpoint_without_duplicate_messages() {
    let Some(entry) = everything() else { return };
    let Some(mut mesh) = Mesh::start().await else { return };
    let (_server, port) = start_everything(&entry).await;
    register_everything(&mesh, ALICE, port, "trigger-long-running-operation").await;
    let session = mesh.session(ALICE).await;
    let tool = "everything_trigger-long-running-operation";
    let agent = mesh.agent(ALICE, json!({"name": "worker", "tools": [tool]})).await;
    let message = format!("/tool {tool} {{\"duration\": 3, \"steps\": 3}}");
    // The second `message` event is the model's call, appended by the tool step just
    // before the tool runs (for 3 s): the model's step is checkpointed by then.
    let crashed = crash_mid_run(&mut mesh, &session, &agent, &message, |seen| count(seen, "message") >= 2).await;
    assert_eq!(
        count(&crashed.before, "tool_result"),
        0,
        "killed before the tool answered: {:?}",
        names(&crashed.before)
    );

    // The session holds each message once, in order, each linked to the one before.
    let messages = mesh.messages(ALICE, &session).await;
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"], "{messages:#?}");
    assert_eq!(messages[0]["content"], message.as_str());
    assert_eq!(messages[1]["tool_calls"][0]["name"], tool);
    assert_eq!(messages[2]["tool_call_id"], messages[1]["tool_calls"][0]["id"]);
    let last = messages[3]["content"].as_str().unwrap();
    assert!(last.starts_with(&format!("Tool {tool} returned")), "{last}");
    assert_eq!(messages[3]["id"], crashed.run["response_message_id"], "{}", crashed.run);
    for pair in messages.windows(2) {
        assert_eq!(pair[1]["parent_message_id"], pair[0]["id"]);
    }
}
