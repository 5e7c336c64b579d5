//! Issue 15's crash tests over the real binaries: the orchestrator executing a run is
//! killed with SIGKILL and started again, and the run resumes from its last checkpoint on
//! the new process: its stream, reconnected through the gateway with `Last-Event-ID`,
//! continues without gaps or repeats, announces `step_restarted`, and ends `completed`; the
//! session holds every message once, nothing duplicated and nothing half-written. Killed
//! twice over: while the model streams its answer, and while a tool of the MCP reference
//! server runs (after the model's step was checkpointed). And around those:
//!
//! - killed while the run waits for approval of a tool call (`requires_action`): the new
//!   orchestrator leaves it waiting, since nobody executes a waiting run and it holds no
//!   lease to lose; approved there, the tool runs and the run completes, its stream going
//!   on after the `interrupt` and its session holding each message once;
//! - two orchestrator replicas on one database and one stream, each behind a gateway of
//!   its own: a run the first executes streams from the second event for event (live and
//!   replayed), and its record reads the same through both;
//! - taken over when it cannot go on, because its agent was deleted while no orchestrator
//!   ran, or because it has outlived `AGENT_MAX_RUN_DURATION`: it fails with that reason
//!   (not an internal error), its stream going on to a `run_completed` that says `failed`,
//!   its session holding the user's message once and no half answer;
//! - cancelled while its replica is down and before any other takes it over: the
//!   orchestrator serving its stream writes the `run_completed` that says `cancelled`
//!   (once the dead replica's turn to do so has passed), so the stream ends.
//!
//! Every service runs as its own process (gateway, session-store, llm-proxy with the
//! scripted model streaming one word per 50 ms, mcp-broker, agent-orchestrator) on
//! PostgreSQL, in a database the test creates and drops, and on NATS, in a stream and
//! under a subject root of its own (deleted at the end): run output on JetStream is what
//! lets the restarted orchestrator, another replica, and the gateway, pick the stream up
//! where it stopped. The run lease is 2 s (`AGENT_RUN_LEASE`), so the new process takes the
//! run over soon.
//!
//! Without PostgreSQL or NATS (or, for the tool runs, the MCP reference server of
//! `tests/mcp/install.sh`) a test skips with a one-line reason, unless
//! `AGENTMESH_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentmesh_e2e::mcp::{HttpPeer, everything, register_everything};
use agentmesh_e2e::rest::{Rest, SseEvent, names, parse_sse};
use agentmesh_e2e::{NO_RATE_LIMITS, Process, TestStream, free_port, wait_http, wait_serving};
use agentmesh_testkit::postgres::PgDatabase;
use agentmesh_testkit::{Service, require};
use reqwest::{Method, Response};
use serde_json::{Value, json};
use sqlx::Connection as _;

const ALICE: &str = "sk-e2e-crash-0123456789abcdefghijklmnopqrstuvw";
/// `AGENT_RUN_LEASE`: how long a dead orchestrator's runs stay claimed, and how often the
/// orchestrators look for abandoned runs.
const LEASE: Duration = Duration::from_secs(2);
/// How many times a run's record is read while waiting for it to change, 50 ms apart.
const RECORD_POLLS: u32 = 200;

/// The mesh as separate processes; the orchestrator can be killed and started again, and
/// more replicas of it started beside it.
struct Mesh {
    api: Rest,
    env: Vec<(&'static str, String)>,
    orchestrator_port: u16,
    orchestrator: Option<Process>,
    _services: Vec<Process>,
    _stream: TestStream,
    database: PgDatabase,
}

impl std::ops::Deref for Mesh {
    type Target = Rest;

    fn deref(&self) -> &Rest {
        &self.api
    }
}

/// A second orchestrator replica on the mesh's database and stream, with a gateway of its
/// own in front of it: what is read through `api` is served by that replica.
struct Replica {
    api: Rest,
    _gateway: Process,
    _orchestrator: Process,
}

impl Mesh {
    async fn start() -> Option<Mesh> {
        let nats_url = require(Service::Nats).await?;
        let database = PgDatabase::create("agent_crash").await?;
        let stream = TestStream::new(&nats_url, "agent_crash");
        let [gateway, session_store, llm_proxy, mcp_broker, orchestrator] = [(); 5].map(|()| free_port().unwrap());
        let mut env = vec![
            ("USE_DATABASE", "true".to_owned()),
            ("USE_MEMORY", "false".to_owned()),
            ("DB_URL", database.url().to_owned()),
            ("NATS_URL", nats_url),
            ("NATS_STREAM", stream.config().stream_name.clone()),
            ("NATS_SUBJECT_ROOT", stream.config().subject_root.clone()),
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
            ("AGENT_RUN_LEASE", LEASE.as_secs().to_string()),
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
        let (process, api) = start_gateway(&env, gateway).await;
        services.push(process);
        let mut mesh = Mesh {
            api,
            env,
            orchestrator_port: orchestrator,
            orchestrator: None,
            _services: services,
            _stream: stream,
            database,
        };
        mesh.start_orchestrator().await;
        Some(mesh)
    }

    /// The mesh's settings with `overrides` replacing (or adding to) them.
    fn env_with(&self, overrides: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut env = self.env.clone();
        env.retain(|(name, _)| overrides.iter().all(|(overridden, _)| overridden != name));
        env.extend(overrides.iter().cloned());
        env
    }

    async fn start_orchestrator(&mut self) {
        self.start_orchestrator_with(&[]).await;
    }

    /// Starts the orchestrator with `overrides` to the mesh's settings.
    async fn start_orchestrator_with(&mut self, overrides: &[(&'static str, String)]) {
        let mut process = Process::spawn("agentmesh-agent-orchestrator", &[], &self.env_with(overrides)).unwrap();
        wait_serving(&mut process, self.orchestrator_port).await.unwrap();
        self.orchestrator = Some(process);
    }

    async fn kill_orchestrator(&mut self) {
        let status = self.orchestrator.take().unwrap().kill().await.unwrap();
        assert!(!status.success(), "killed, not exited: {status}");
    }

    /// Starts a second orchestrator, on ports of its own, and a gateway in front of it.
    async fn start_replica(&self) -> Replica {
        let [gateway, orchestrator] = [(); 2].map(|()| free_port().unwrap());
        let env = self.env_with(&[
            ("PORT", gateway.to_string()),
            ("AGENT_ORCHESTRATOR_ADDR", addr(orchestrator)),
            ("AGENT_ORCHESTRATOR_URL", url(orchestrator)),
        ]);
        let mut process = Process::spawn("agentmesh-agent-orchestrator", &[], &env).unwrap();
        wait_serving(&mut process, orchestrator).await.unwrap();
        let (gateway, api) = start_gateway(&env, gateway).await;
        Replica { api, _gateway: gateway, _orchestrator: process }
    }

    /// Extends the lease on `run` by an hour in the orchestrator's table, as if the
    /// replica that held it had asked for a long one: no other replica takes the run over
    /// while the test works on it.
    async fn extend_lease(&self, run: &str) {
        let sql = "UPDATE agent_orchestrator.runs SET lease_expires_at = now() + interval '1 hour' \
                   WHERE id = $1::uuid AND status = 'running'";
        self.change_one_row(sql, run).await;
    }

    /// Deletes `agent` from the orchestrator's table. Deleting an agent is the
    /// orchestrator's API, so a test that deletes one while no orchestrator runs goes to
    /// its database, as if another replica had deleted it meanwhile.
    async fn delete_agent_row(&self, agent: &str) {
        self.change_one_row("DELETE FROM agent_orchestrator.agents WHERE id = $1::uuid", agent).await;
    }

    /// Runs `sql` on the orchestrator's database with `id` as `$1`, and checks that it
    /// changed exactly one row.
    async fn change_one_row(&self, sql: &'static str, id: &str) {
        let mut connection = sqlx::PgConnection::connect(self.database.url()).await.unwrap();
        let changed = sqlx::query(sql).bind(id).execute(&mut connection).await.unwrap();
        assert_eq!(changed.rows_affected(), 1, "{sql} for {id}");
        connection.close().await.unwrap();
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Starts a gateway with `env` on `port`, and waits until it answers.
async fn start_gateway(env: &[(&'static str, String)], port: u16) -> (Process, Rest) {
    let mut process = Process::spawn("agentmesh-gateway", &[], env).unwrap();
    let api = Rest::new(url(port));
    wait_http(&mut process, &format!("{}/api/v1/health", api.base())).await.unwrap();
    (process, api)
}

/// The ids of `events` that carry one (a `stream_error` does not).
fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().filter_map(|event| event.id).collect()
}

/// How many of `events` are named `name`.
fn count(events: &[SseEvent], name: &str) -> usize {
    events.iter().filter(|event| event.name == name).count()
}

/// Everything a client can tell apart in `events`, to compare two reads of a stream.
fn contents(events: &[SseEvent]) -> Vec<(Option<u64>, &str, &Value)> {
    events.iter().map(|event| (event.id, event.name.as_str(), &event.data)).collect()
}

/// The run's record through `api` once `settled` holds for it (or as it is after
/// [`RECORD_POLLS`] reads).
async fn run_record(api: &Rest, run_id: &str, settled: impl Fn(&Value) -> bool) -> Value {
    let mut run = json!({});
    for _ in 0..RECORD_POLLS {
        let (status, now) = api.json(ALICE, Method::GET, &format!("/api/v1/runs/{run_id}"), None).await;
        assert_eq!(status, 200, "{now}");
        run = now;
        if settled(&run) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run
}

/// A background run whose stream a client follows through the gateway.
struct Followed {
    run_id: String,
    /// The stream's path.
    stream: String,
    response: Response,
    /// What the stream sent so far.
    seen: String,
}

/// Starts a background run of `agent` on `session` with `message`, and follows its stream
/// until `until` holds for the events seen.
async fn follow_run(
    mesh: &Mesh,
    session: &str,
    agent: &str,
    message: &str,
    until: impl Fn(&[SseEvent]) -> bool,
) -> Followed {
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
    Followed { run_id, stream, response, seen }
}

/// A run as its client saw it when its orchestrator was killed.
struct Killed {
    run_id: String,
    /// The stream's path.
    stream: String,
    /// What the killed orchestrator streamed.
    before: Vec<SseEvent>,
    /// The id of the last event of `before`.
    last_seen: u64,
}

/// Kills the orchestrator executing `followed`'s run and reads what its stream still
/// gives: events numbered 1, 2, 3... and no `run_completed`.
async fn kill_under(mesh: &mut Mesh, followed: Followed) -> Killed {
    let Followed { run_id, stream, mut response, mut seen } = followed;
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
    Killed { run_id, stream, before, last_seen }
}

/// The rest of `killed`'s stream, read through the gateway after `Last-Event-ID`: every
/// event numbered, on from the last one seen without a gap or a repeat, up to one
/// `run_completed`, the last event. Reading the whole stream again gives the same ids.
async fn rest_of_stream(mesh: &Mesh, killed: &Killed) -> Vec<SseEvent> {
    let last_seen = killed.last_seen;
    let after = mesh.sse(ALICE, &killed.stream, None, &[("Last-Event-ID", &last_seen.to_string())]).await;
    let kinds = names(&after);
    let after_ids = ids(&after);
    assert_eq!(after_ids.len(), after.len(), "every resumed event is numbered: {kinds:?}");
    assert_eq!(after_ids, (last_seen + 1..=last_seen + after.len() as u64).collect::<Vec<_>>(), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run_completed"), "{kinds:?}");
    assert_eq!(count(&after, "run_completed"), 1, "{kinds:?}");

    // The whole stream, read again from the start, is the same events, numbered 1, 2, 3...
    let replay = mesh.sse(ALICE, &killed.stream, None, &[]).await;
    let expected: Vec<u64> = ids(&killed.before).into_iter().chain(after_ids).collect();
    assert_eq!(ids(&replay), expected);
    after
}

/// The `run_completed` event's status and error (`null` without one).
fn run_completed(events: &[SseEvent]) -> (&Value, &Value) {
    let completed = &events.last().unwrap().data["run_completed"];
    (&completed["status"], &completed["error"])
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
    run: Value,
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
    let followed = follow_run(mesh, session, agent, message, until).await;
    let killed = kill_under(mesh, followed).await;

    // A new orchestrator takes the run over once the dead one's lease has run out; the
    // client reconnects through the gateway where it stopped.
    mesh.start_orchestrator().await;
    let after = rest_of_stream(mesh, &killed).await;
    let kinds = names(&after);
    assert_eq!(count(&after, "step_restarted"), 1, "{kinds:?}");
    assert_eq!(run_completed(&after).0, "completed", "{kinds:?}");

    // The record follows the stream's last event.
    let run = run_record(mesh, &killed.run_id, |run| run["status"] != "running").await;
    assert_eq!(run["status"], "completed", "{run}");
    let (status, runs) = mesh.json(ALICE, Method::GET, &format!("/api/v1/sessions/{session}/runs"), None).await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "no second run: {runs}");
    Crashed { run_id: killed.run_id, before: killed.before, after, run }
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
    let server = HttpPeer::everything(&entry).await;
    register_everything(&mesh, ALICE, server.port(), "trigger-long-running-operation").await;
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

#[tokio::test]
async fn a_run_waiting_for_approval_outlives_its_orchestrator_and_completes_when_approved_on_the_next() {
    let Some(entry) = everything() else { return };
    let Some(mut mesh) = Mesh::start().await else { return };
    let server = HttpPeer::everything(&entry).await;
    register_everything(&mesh, ALICE, server.port(), "get-sum").await;
    let session = mesh.session(ALICE).await;
    let tool = "everything_get-sum";
    let agent = mesh.agent(ALICE, json!({"name": "careful", "tools": [tool], "approval": {"tools": [tool]}})).await;
    let message = format!("/tool {tool} {{\"a\": 2, \"b\": 3}}");
    let followed = follow_run(&mesh, &session, &agent, &message, |seen| count(seen, "interrupt") == 1).await;
    // The interrupt is published just before the record says the run waits: killed only
    // once it does.
    let waiting = run_record(&mesh, &followed.run_id, |run| run["status"] != "running").await;
    assert_eq!(waiting["status"], "requires_action", "{waiting}");
    let killed = kill_under(&mut mesh, followed).await;
    let numbered: Vec<&SseEvent> = killed.before.iter().filter(|event| event.id.is_some()).collect();
    assert_eq!(numbered.last().unwrap().name, "interrupt", "{:?}", names(&killed.before));

    // The new orchestrator looks for abandoned runs as it starts and then every lease; by
    // a lease after its start the dead one's lease is over too and it has looked twice.
    // The run waits still: nobody executes a run waiting for a human.
    mesh.start_orchestrator().await;
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    let (status, still) = mesh.json(ALICE, Method::GET, &format!("/api/v1/runs/{}", killed.run_id), None).await;
    assert_eq!(status, 200, "{still}");
    assert_eq!(still["status"], "requires_action", "{still}");
    assert_eq!(still["pending_tool_calls"][0]["name"], tool, "{still}");

    // The client is back on the stream, waiting, when the approval comes (half a second
    // after it reconnects; approved before that, the rest is replayed the same way).
    let approve = format!("/api/v1/runs/{}/approve", killed.run_id);
    let approving = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        mesh.json(ALICE, Method::POST, &approve, Some(json!({}))).await
    };
    let (after, (status, approved)) = tokio::join!(rest_of_stream(&mesh, &killed), approving);
    assert_eq!(status, 200, "{approved}");
    let kinds = names(&after);
    assert_eq!(run_completed(&after).0, "completed", "{kinds:?}");
    assert_eq!(count(&after, "tool_result"), 1, "{kinds:?}");
    assert_eq!(count(&after, "step_restarted"), 0, "resumed by the approval, not recovered: {kinds:?}");
    assert_eq!(count(&after, "interrupt"), 0, "{kinds:?}");
    let run = run_record(&mesh, &killed.run_id, |run| run["status"] != "running").await;
    assert_eq!(run["status"], "completed", "{run}");

    // The session holds each message once, in order, each linked to the one before.
    let messages = mesh.messages(ALICE, &session).await;
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"], "{messages:#?}");
    assert_eq!(messages[0]["content"], message.as_str());
    assert_eq!(messages[1]["tool_calls"][0]["name"], tool);
    assert_eq!(messages[2]["tool_call_id"], messages[1]["tool_calls"][0]["id"]);
    let answer = messages[3]["content"].as_str().unwrap();
    assert!(answer.contains("The sum of 2 and 3 is 5"), "{answer}");
    assert_eq!(messages[3]["id"], run["response_message_id"], "{run}");
    for pair in messages.windows(2) {
        assert_eq!(pair[1]["parent_message_id"], pair[0]["id"]);
    }
}

#[tokio::test]
async fn a_run_one_orchestrator_replica_executes_streams_and_reads_the_same_from_another() {
    let Some(mesh) = Mesh::start().await else { return };
    let replica = mesh.start_replica().await;
    let session = mesh.session(ALICE).await;
    let agent = mesh.agent(ALICE, json!({"name": "talker"})).await;
    let message = (1..=30).map(|word| format!("w{word}")).collect::<Vec<_>>().join(" ");
    let body = json!({"session_id": session, "message": message});
    let (status, run) = mesh.json(ALICE, Method::POST, &format!("/api/v1/agents/{agent}/runs"), Some(body)).await;
    assert_eq!(status, 202, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let stream = format!("/api/v1/runs/{run_id}/stream");

    // Both read while the first replica executes the run (30 words at 50 ms each): the
    // second follows it on the event bus.
    let (executing, other) =
        tokio::join!(mesh.sse(ALICE, &stream, None, &[]), replica.api.sse(ALICE, &stream, None, &[]));
    let kinds = names(&executing);
    assert_eq!(ids(&executing), (1..=executing.len() as u64).collect::<Vec<_>>(), "{kinds:?}");
    for expected in ["run_started", "message", "token", "usage"] {
        assert!(kinds.contains(&expected), "{expected} missing from {kinds:?}");
    }
    assert_eq!(kinds.last(), Some(&"run_completed"), "{kinds:?}");
    assert_eq!(run_completed(&executing).0, "completed", "{kinds:?}");
    assert_eq!(contents(&other), contents(&executing));

    // Once the run has ended, the second replica replays it from the bus, whole or after
    // an event.
    let replayed = replica.api.sse(ALICE, &stream, None, &[]).await;
    assert_eq!(contents(&replayed), contents(&executing));
    let resumed = replica.api.sse(ALICE, &stream, None, &[("Last-Event-ID", "3")]).await;
    assert_eq!(contents(&resumed), contents(&executing[3..]));

    let record = run_record(&mesh, &run_id, |run| run["status"] != "running").await;
    assert_eq!(record["status"], "completed", "{record}");
    let (status, through_other) = replica.api.json(ALICE, Method::GET, &format!("/api/v1/runs/{run_id}"), None).await;
    assert_eq!(status, 200, "{through_other}");
    assert_eq!(through_other, record);
}

/// A run of a new agent killed while the model streams its answer, before any step was
/// checkpointed: the session, the agent, the user's message, and the run as its client saw
/// it.
async fn kill_mid_answer(mesh: &mut Mesh) -> (String, String, String, Killed) {
    let session = mesh.session(ALICE).await;
    let agent = mesh.agent(ALICE, json!({"name": "talker"})).await;
    let message = (1..=100).map(|word| format!("w{word}")).collect::<Vec<_>>().join(" ");
    let followed = follow_run(mesh, &session, &agent, &message, |seen| count(seen, "token") >= 2).await;
    let killed = kill_under(mesh, followed).await;
    (session, agent, message, killed)
}

/// Checks that the orchestrator started after `killed` failed the run with an error of
/// `code`, in its stream and in its record, and that the session holds `message` once and
/// nothing else; returns the error's message.
async fn failed_on_recovery(mesh: &Mesh, session: &str, message: &str, killed: &Killed, code: &str) -> String {
    let after = rest_of_stream(mesh, killed).await;
    let kinds = names(&after);
    let (status, error) = run_completed(&after);
    assert_eq!(status, "failed", "{kinds:?}");
    assert_eq!(error["code"], code, "{error}");
    assert_eq!(count(&after, "error"), 1, "{kinds:?}");
    assert_eq!(count(&after, "token"), 0, "the step never ran again: {kinds:?}");
    assert_eq!(count(&after, "step_restarted"), 0, "no step is announced that will not run: {kinds:?}");

    let run = run_record(mesh, &killed.run_id, |run| run["status"] != "running").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], code, "{run}");
    assert_eq!(run["error"]["message"], error["message"], "{run}");

    let messages = mesh.messages(ALICE, session).await;
    let summary: Vec<(&str, &str)> =
        messages.iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
    assert_eq!(summary, [("user", message)], "no half answer");
    error["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_run_taken_over_after_its_agent_was_deleted_fails_saying_so_and_leaves_no_half_answer() {
    let Some(mut mesh) = Mesh::start().await else { return };
    let (session, agent, message, killed) = kill_mid_answer(&mut mesh).await;
    // Deleted while no orchestrator runs (the agents API is the orchestrator's, down now):
    // the next one finds the run, but not its agent.
    mesh.delete_agent_row(&agent).await;
    mesh.start_orchestrator().await;
    let reason = failed_on_recovery(&mesh, &session, &message, &killed, "not_found").await;
    assert_eq!(reason, format!("the run's agent {agent} was deleted"));
}

#[tokio::test]
async fn a_run_taken_over_after_its_maximum_duration_fails_with_a_timeout() {
    let Some(mut mesh) = Mesh::start().await else { return };
    let (session, _, message, killed) = kill_mid_answer(&mut mesh).await;
    // The new orchestrator allows a run 1 s; this one, created before the kill, has lived
    // longer by the time it is taken over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    mesh.start_orchestrator_with(&[("AGENT_MAX_RUN_DURATION", "1".to_owned())]).await;
    let reason = failed_on_recovery(&mesh, &session, &message, &killed, "timeout_error").await;
    assert!(reason.contains("maximum duration"), "{reason}");
}

#[tokio::test]
async fn a_run_cancelled_while_the_replica_executing_it_is_down_still_ends_its_stream() {
    let Some(mut mesh) = Mesh::start().await else { return };
    let (session, _, message, killed) = kill_mid_answer(&mut mesh).await;
    // The next orchestrator does not take the run over (its dead replica's lease has an
    // hour to go), so the cancel is recorded in the store alone: nobody executes the run
    // to write its `run_completed`, and the orchestrator that serves the stream does.
    mesh.extend_lease(&killed.run_id).await;
    mesh.start_orchestrator().await;
    let cancel = format!("/api/v1/runs/{}/cancel", killed.run_id);
    let (status, run) = mesh.json(ALICE, Method::POST, &cancel, Some(json!({"reason": "replica gone"}))).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "cancelled", "{run}");

    let after = tokio::time::timeout(LEASE * 10, rest_of_stream(&mesh, &killed)).await.expect("the stream ends");
    let kinds = names(&after);
    let (status, error) = run_completed(&after);
    assert_eq!(status, "cancelled", "{kinds:?}");
    assert_eq!(error["message"], "replica gone", "{error}");
    assert_eq!(count(&after, "token"), 0, "nothing ran after the kill: {kinds:?}");

    // Read again later, the stream is the same: the end is written once.
    let replay = mesh.sse(ALICE, &killed.stream, None, &[]).await;
    assert_eq!(count(&replay, "run_completed"), 1, "{:?}", names(&replay));
    let messages = mesh.messages(ALICE, &session).await;
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user"], "{messages:#?}");
    assert_eq!(messages[0]["content"], message.as_str());
}
