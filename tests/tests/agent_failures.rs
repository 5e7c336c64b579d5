//! Failures a run survives, end to end through the real `agentmesh up` binary, with a
//! fake OpenAI-compatible provider served by this test (axum) and registered in llm-proxy
//! as `fake` (`LLM_OPENAI_COMPATIBLE`). The fake's model name picks how it misbehaves:
//!
//! - `fake/down500`, `fake/down503`: every call fails with that HTTP status before any
//!   token, so llm-proxy falls back to the agent's fallback model (`scripted/echo`);
//! - `fake/cut`: a stream that sends some text and half a tool call, then drops the
//!   connection; `fake/broken`: the same, then an error event inside the stream;
//!   `fake/cutcall`: half a tool call and no text, then the connection drops. llm-proxy
//!   reports each as a `finish` with an error after the answer started, and the
//!   orchestrator reruns the step on the fallback model after a `step_restarted` event;
//! - `fake/nul`: answers with NUL characters in its text, which the run keeps as U+FFFD
//!   (session-store refuses NUL, PostgreSQL cannot store it), in its stream and session alike;
//! - `fake/loop`: asks for a tool on every call (the tool does not exist, so each call
//!   comes back as a tool error and the model asks again), reporting 50 tokens per call,
//!   so only `max_steps` or `token_budget` stops the run.
//!
//! Also: stream clients that never read, or read one event and stop, do not hold the run
//! up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentmesh_e2e::{ALICE, Mesh, SseEvent, names, serve_fake_provider};
use agentmesh_testkit::{REQUIRE_SERVICES_ENV, services_required, unique_name};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// The model every agent here falls back to.
const FALLBACK: &str = "scripted/echo";
/// The text `fake/cut` and `fake/broken` send before they fail.
const PARTIAL: [&str; 3] = ["This partial ", "answer never ", "ends"];
/// The fake's pause before each stream frame.
const FRAME_PAUSE: Duration = Duration::from_millis(5);
/// What `fake/nul` answers, in two frames: text with NUL characters in it.
const NUL_ANSWER: [&str; 2] = ["before\u{0}", "\u{0}after"];
/// The tokens `fake/loop` reports per call (prompt, completion).
const LOOP_USAGE: (u64, u64) = (40, 10);

// ---------------------------------------------------------------------------------------
// The fake provider

/// The fake provider: counts its calls, to give each tool call of `fake/loop` its own id.
#[derive(Default)]
struct Fake {
    calls: AtomicU64,
}

/// One `data:` frame of a `chat.completion.chunk`.
fn chunk(choices: Value, usage: Value) -> Result<Bytes, std::io::Error> {
    let chunk = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_765_000_000, "model": "m",
        "choices": choices, "usage": usage,
    });
    Ok(Bytes::from(format!("data: {chunk}\n\n")))
}

fn delta(delta: Value, finish: Value) -> Value {
    json!([{"index": 0, "delta": delta, "finish_reason": finish}])
}

/// The start of a failing stream: a role chunk, `text`, and the first half of a tool
/// call's arguments.
fn partial_answer(text: &[&str]) -> Vec<Result<Bytes, std::io::Error>> {
    let mut frames = vec![chunk(delta(json!({"role": "assistant", "content": ""}), Value::Null), Value::Null)];
    frames.extend(text.iter().map(|text| chunk(delta(json!({"content": text}), Value::Null), Value::Null)));
    let half_call = json!({"tool_calls": [{
        "index": 0, "id": "call_half", "type": "function",
        "function": {"name": "lookup", "arguments": "{\"query\": \"par"},
    }]});
    frames.push(chunk(delta(half_call, Value::Null), Value::Null));
    frames
}

/// `frames` as a `text/event-stream`, each after a short pause: the server writes out what
/// came before it, so the frames before an error reach llm-proxy before the connection
/// drops.
fn event_stream(frames: Vec<Result<Bytes, std::io::Error>>) -> Response {
    let paced = futures::stream::iter(frames).then(|frame| async {
        tokio::time::sleep(FRAME_PAUSE).await;
        frame
    });
    Response::builder().header(CONTENT_TYPE, "text/event-stream").body(Body::from_stream(paced)).unwrap()
}

fn failure(status: StatusCode) -> Response {
    let body = json!({"error": {"message": "the fake provider is down", "type": "server_error"}});
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// `POST /v1/chat/completions`, streamed (the orchestrator always streams).
async fn chat_completions(State(fake): State<Arc<Fake>>, body: axum::Json<Value>) -> Response {
    match body["model"].as_str().unwrap_or_default() {
        "down500" => failure(StatusCode::INTERNAL_SERVER_ERROR),
        "down503" => failure(StatusCode::SERVICE_UNAVAILABLE),
        model @ ("cut" | "cutcall") => {
            let mut frames = partial_answer(if model == "cut" { &PARTIAL } else { &[] });
            frames.push(Err(std::io::Error::other("the fake provider dropped the connection")));
            event_stream(frames)
        }
        "broken" => {
            let mut frames = partial_answer(&PARTIAL);
            let error = json!({"error": {"message": "overloaded mid-answer", "code": 503}});
            frames.push(Ok(Bytes::from(format!("data: {error}\n\n"))));
            event_stream(frames)
        }
        "loop" => {
            let call = fake.calls.fetch_add(1, Ordering::Relaxed);
            let ask = json!({"role": "assistant", "tool_calls": [{
                "index": 0, "id": format!("call_loop_{call}"), "type": "function",
                "function": {"name": "lookup", "arguments": "{}"},
            }]});
            let (prompt, completion) = LOOP_USAGE;
            let usage =
                json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
            event_stream(vec![
                chunk(delta(ask, Value::Null), Value::Null),
                chunk(delta(json!({}), json!("tool_calls")), Value::Null),
                chunk(json!([]), usage),
                Ok(Bytes::from_static(b"data: [DONE]\n\n")),
            ])
        }
        "nul" => event_stream(vec![
            chunk(delta(json!({"role": "assistant", "content": NUL_ANSWER[0]}), Value::Null), Value::Null),
            chunk(delta(json!({"content": NUL_ANSWER[1]}), Value::Null), Value::Null),
            chunk(delta(json!({}), json!("stop")), Value::Null),
            Ok(Bytes::from_static(b"data: [DONE]\n\n")),
        ]),
        other => failure(if other.is_empty() { StatusCode::BAD_REQUEST } else { StatusCode::NOT_FOUND }),
    }
}

// ---------------------------------------------------------------------------------------
// The mesh

/// `agentmesh up` with the fake provider registered, and the scripted model answering
/// without delay. `None` (after a one-line reason) when the mesh's services are not
/// required and it cannot start.
async fn start() -> Option<Mesh> {
    let chat = axum::routing::post(chat_completions).with_state(Arc::new(Fake::default()));
    let models = ["down500", "down503", "cut", "cutcall", "broken", "loop", "nul"];
    let fake = serve_fake_provider(chat, &models).await.unwrap();
    let env = [
        ("LLM_OPENAI_COMPATIBLE", format!("fake={fake}")),
        ("LLM_SCRIPTED", "on".to_owned()),
        ("LLM_SCRIPTED_DELAY", "0".to_owned()),
        // Long answers in the slow-client test.
        ("SESSION_MAX_CONTENT_LENGTH", "1000000".to_owned()),
    ];
    match Mesh::up(&env).await {
        Ok(mesh) => Some(mesh),
        Err(error) => {
            assert!(!services_required(), "agentmesh up failed with {REQUIRE_SERVICES_ENV}=1: {error}");
            eprintln!("skipped: agentmesh up failed: {error}");
            None
        }
    }
}

/// An agent on `model` that falls back to the scripted model.
async fn agent_on(mesh: &Mesh, model: &str, settings: Value) -> String {
    let mut model_config = json!({"model": model, "fallback_models": [FALLBACK]});
    if let (Some(config), Value::Object(extra)) = (model_config.as_object_mut(), settings) {
        config.extend(extra);
    }
    mesh.agent(ALICE, json!({"name": unique_name("on-fake"), "model_config": model_config})).await
}

/// Polls the run until it reaches a final status (a bounded poll, not a timed assertion).
async fn final_run(mesh: &Mesh, run_id: &str) -> Value {
    for _ in 0..1200 {
        let (status, run) = mesh.json(ALICE, Method::GET, &format!("/api/v1/runs/{run_id}"), None).await;
        assert_eq!(status, 200, "{run}");
        if matches!(run["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {run_id} did not finish");
}

/// The streamed execute of `message`: its events, and the run's id.
async fn execute_stream(mesh: &Mesh, agent: &str, session: &str, message: &str) -> (Vec<SseEvent>, String) {
    let body = json!({"session_id": session, "message": message});
    let events = mesh.sse(ALICE, &format!("/api/v1/agents/{agent}/execute/stream"), Some(body), &[]).await;
    let run_id = events[0].data["run_id"].as_str().unwrap().to_owned();
    (events, run_id)
}

/// The text a client that honours `step_restarted` shows: each step's tokens after the
/// step's last restart.
fn shown_text(events: &[SseEvent]) -> String {
    let mut shown: Vec<(u64, String)> = Vec::new();
    for event in events {
        match event.name.as_str() {
            "token" => shown.push((
                event.data["token"]["step"].as_u64().unwrap(),
                event.data["token"]["text"].as_str().unwrap().to_owned(),
            )),
            "step_restarted" => {
                let step = event.data["step_restarted"]["step"].as_u64().unwrap();
                shown.retain(|(of, _)| *of != step);
            }
            _ => {}
        }
    }
    shown.into_iter().map(|(_, text)| text).collect()
}

/// The session's assistant messages.
async fn answers(mesh: &Mesh, session: &str) -> Vec<Value> {
    mesh.messages(ALICE, session).await.into_iter().filter(|message| message["role"] == "assistant").collect()
}

// ---------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn a_provider_failing_before_its_first_token_falls_back_and_the_run_completes() {
    let Some(mesh) = start().await else { return };
    for model in ["fake/down500", "fake/down503"] {
        let agent = agent_on(&mesh, model, json!({})).await;
        let session = mesh.session(ALICE).await;

        let execute = json!({"session_id": session, "message": "are you there"});
        let (status, answer) =
            mesh.json(ALICE, Method::POST, &format!("/api/v1/agents/{agent}/execute"), Some(execute)).await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(answer["status"], "completed", "{model}: {answer}");
        assert_eq!(answer["content"], "You said: are you there", "{model}: {answer}");

        // Streamed: no step restarts (no token was sent before the fallback), one answer.
        let (events, run_id) = execute_stream(&mesh, &agent, &session, "still there").await;
        let kinds = names(&events);
        assert!(!kinds.contains(&"step_restarted"), "{model}: {kinds:?}");
        assert_eq!(shown_text(&events), "You said: still there", "{model}");
        assert_eq!(final_run(&mesh, &run_id).await["status"], "completed");
        let contents: Vec<Value> = answers(&mesh, &session).await.iter().map(|m| m["content"].clone()).collect();
        assert_eq!(contents, [json!("You said: are you there"), json!("You said: still there")], "{model}");
    }
}

#[tokio::test]
async fn a_provider_failing_mid_stream_restarts_the_step_on_the_fallback_with_one_clean_answer() {
    let Some(mesh) = start().await else { return };
    for (model, partial) in
        [("fake/cut", PARTIAL.concat()), ("fake/broken", PARTIAL.concat()), ("fake/cutcall", String::new())]
    {
        let agent = agent_on(&mesh, model, json!({})).await;
        let session = mesh.session(ALICE).await;
        let (events, run_id) = execute_stream(&mesh, &agent, &session, "tell me everything").await;
        let kinds = names(&events);
        assert_eq!(kinds.last(), Some(&"run_completed"), "{model}: {kinds:?}");
        assert_eq!(events.last().unwrap().data["run_completed"]["status"], "completed", "{model}");

        // The partial text was streamed, then the step restarted on the fallback model.
        let restart_at = kinds
            .iter()
            .rposition(|kind| *kind == "step_restarted")
            .unwrap_or_else(|| panic!("{model}: no step_restarted in {kinds:?}"));
        let restarted = &events[restart_at].data["step_restarted"];
        assert_eq!(restarted["model"], FALLBACK, "{model}: {restarted}");
        let step = restarted["step"].as_u64().unwrap();
        let before: String = events[..restart_at]
            .iter()
            .filter(|event| event.name == "token")
            .map(|event| event.data["token"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(before, partial, "{model}: the partial tokens reach the client first");

        // A client that discards the step's earlier tokens shows exactly the answer.
        let after: String = events[restart_at..]
            .iter()
            .filter(|event| event.name == "token" && event.data["token"]["step"] == step)
            .map(|event| event.data["token"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(after, "You said: tell me everything", "{model}");
        assert_eq!(shown_text(&events), after, "{model}");

        // No half-written tool call was ever announced.
        assert!(!kinds.contains(&"tool_call"), "{model}: {kinds:?}");

        // The session holds one answer, the complete one.
        let run = final_run(&mesh, &run_id).await;
        assert_eq!(run["status"], "completed", "{model}: {run}");
        let held = answers(&mesh, &session).await;
        assert_eq!(held.len(), 1, "{model}: {held:#?}");
        assert_eq!(held[0]["content"], after, "{model}");
        assert!(held[0]["tool_calls"].as_array().is_none_or(Vec::is_empty), "{model}: {held:#?}");
        let message_event = events.iter().rfind(|event| event.name == "message").unwrap();
        assert_eq!(message_event.data["message"]["content"], after, "{model}");
    }
}

#[tokio::test]
async fn stream_clients_that_stop_reading_do_not_hold_the_run_up() {
    let Some(mesh) = start().await else { return };
    let agent = agent_on(&mesh, FALLBACK, json!({"max_tokens": 100_000})).await;
    let session = mesh.session(ALICE).await;
    // About 200 KB of answer, streamed to each client several times over (tokens, the
    // message, the completion): far more than the socket buffers of a client that does
    // not read.
    let message = "word ".repeat(40_000);
    let body = json!({"session_id": session, "message": message}).to_string();

    // Client 1 starts the run over a socket with a tiny receive buffer and never reads.
    let address = mesh.base().trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut silent = socket.connect(address).await.unwrap();
    let request = format!(
        "POST /api/v1/agents/{agent}/execute/stream HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {ALICE}\r\n\
         Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    silent.write_all(request.as_bytes()).await.unwrap();

    // The run it started.
    let mut run_id = None;
    for _ in 0..1200 {
        let (status, runs) = mesh.json(ALICE, Method::GET, &format!("/api/v1/sessions/{session}/runs"), None).await;
        assert_eq!(status, 200, "{runs}");
        if let Some(id) = runs[0]["id"].as_str() {
            run_id = Some(id.to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run_id = run_id.expect("the streamed execute started a run");

    // Client 2 follows the run's stream, reads one chunk, and stops reading.
    let mut follower = mesh.call(ALICE, Method::GET, &format!("/api/v1/runs/{run_id}/stream"), None).await;
    assert_eq!(follower.status(), 200);
    assert!(!follower.chunk().await.unwrap().unwrap().is_empty());

    let run = final_run(&mesh, &run_id).await;
    assert_eq!(run["status"], "completed", "{run}");
    let held = answers(&mesh, &session).await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["content"].as_str().unwrap().len(), "You said: ".len() + message.trim_end().len());
    drop((silent, follower));
}

#[tokio::test]
async fn a_run_that_loops_on_tools_fails_at_its_step_limit_or_its_token_budget() {
    let Some(mesh) = start().await else { return };
    let (prompt, completion) = LOOP_USAGE;
    for (settings, code, says) in [
        (json!({"max_steps": 5}), "timeout_error", "limit of 5 steps"),
        (
            json!({"max_steps": 100, "token_budget": 2 * (prompt + completion)}),
            "rate_limit_error",
            "token budget of 100",
        ),
    ] {
        let agent = agent_on(&mesh, "fake/loop", settings.clone()).await;
        let session = mesh.session(ALICE).await;
        let (status, run) = mesh
            .json(
                ALICE,
                Method::POST,
                &format!("/api/v1/agents/{agent}/runs"),
                Some(json!({"session_id": session, "message": "look it up"})),
            )
            .await;
        assert_eq!(status, 202, "{run}");
        let run_id = run["id"].as_str().unwrap().to_owned();
        let run = final_run(&mesh, &run_id).await;
        assert_eq!(run["status"], "failed", "{settings}: {run}");
        assert_eq!(run["error"]["code"], code, "{settings}: {run}");
        let message = run["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{settings}: {message}");

        // The stream ends with the same failure; every tool round trip was kept.
        let events = mesh.sse(ALICE, &format!("/api/v1/runs/{run_id}/stream"), None, &[]).await;
        let completed = &events.last().unwrap().data["run_completed"];
        assert_eq!(completed["status"], "failed", "{settings}: {completed}");
        assert_eq!(completed["error"]["message"], message, "{settings}");
        let roles: Vec<String> =
            mesh.messages(ALICE, &session).await.iter().map(|m| m["role"].as_str().unwrap().to_owned()).collect();
        assert_eq!(roles[0], "user");
        assert!(roles.len() > 2, "{settings}: {roles:?}");
    }
}

#[tokio::test]
async fn a_model_answering_with_nul_characters_still_completes_with_them_replaced() {
    let Some(mesh) = start().await else { return };
    let agent = agent_on(&mesh, "fake/nul", json!({})).await;
    let session = mesh.session(ALICE).await;
    let expected = NUL_ANSWER.concat().replace('\0', "\u{FFFD}");

    let execute = json!({"session_id": session, "message": "say something odd"});
    let (status, answer) =
        mesh.json(ALICE, Method::POST, &format!("/api/v1/agents/{agent}/execute"), Some(execute)).await;
    assert_eq!((status, answer["content"].as_str()), (200, Some(expected.as_str())), "{answer}");

    let (events, run_id) = execute_stream(&mesh, &agent, &session, "again").await;
    assert_eq!(shown_text(&events), expected);
    assert_eq!(final_run(&mesh, &run_id).await["status"], "completed");
    let contents: Vec<Value> = answers(&mesh, &session).await.iter().map(|m| m["content"].clone()).collect();
    assert_eq!(contents, [json!(expected), json!(expected)]);
}
