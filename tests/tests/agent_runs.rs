//! Agents and runs end to end through the real `agentmesh up` binary: the scripted model
//! asks for a tool, the real MCP reference server (`@modelcontextprotocol/server-everything`,
//! streamable HTTP) runs `get-sum`, and the model answers with the result. Then: the
//! session's messages in order, the run's SSE stream in sequence, reconnection by
//! `Last-Event-ID` and by repeating the execute with its `Idempotency-Key` (no second run),
//! approval and rejection of a tool call, cancel mid-stream, a tool server that is down,
//! isolation between users, the session concurrency policies, `stream: true` refused by
//! `/execute`, and a stream asked for after its output expired.
//!
//! The MCP reference server is installed by `tests/mcp/install.sh`; without it each test
//! skips with a one-line reason, unless `AGENTMESH_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentmesh_e2e::mcp::{HttpPeer, everything, register_everything};
use agentmesh_e2e::{ALICE, BOB, Mesh, names, parse_sse};
use reqwest::Method;
use serde_json::{Value, json};

/// `agentmesh up` with the reference server registered as `everything`, and the server
/// (killed when dropped).
async fn start() -> Option<(Mesh, HttpPeer)> {
    let entry = everything()?;
    let mcp = HttpPeer::everything(&entry).await;
    let mesh = Mesh::up(&[("LLM_SCRIPTED_DELAY", "0.02".to_owned())]).await.unwrap();
    register_everything(&mesh, ALICE, mcp.port(), "get-sum").await;
    Some((mesh, mcp))
}

const GET_SUM: &str = "/tool everything_get-sum {\"a\": 2, \"b\": 3}";

#[tokio::test]
async fn a_tool_round_trip_persists_in_order_streams_in_sequence_and_resumes_without_a_second_run() {
    let Some((mesh, _server)) = start().await else { return };
    let session = mesh.session(ALICE).await;
    let agent =
        mesh.agent(ALICE, json!({"name": "adder", "system_prompt": "Add.", "tools": ["everything_get-sum"]})).await;

    // Unary: the model asks for the tool, the real server adds, the model answers.
    let execute = json!({"session_id": session, "message": GET_SUM});
    let (status, answer) =
        mesh.json(ALICE, Method::POST, &format!("/api/v1/agents/{agent}/execute"), Some(execute)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "completed");
    let content = answer["content"].as_str().unwrap();
    assert!(content.contains("The sum of 2 and 3 is 5"), "{content}");
    assert_eq!(answer["tool_calls"][0]["name"], "everything_get-sum");
    assert_eq!(answer["tool_calls"][0]["arguments"], json!({"a": 2, "b": 3}));
    assert!(answer["execution_time_ms"].as_i64().unwrap() >= 0);
    let run_id = answer["run_id"].as_str().unwrap().to_owned();

    // The session: user, assistant with the call, tool result, final answer; each reply
    // linked to the message before it.
    let messages = mesh.messages(ALICE, &session).await;
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"], "{messages:#?}");
    assert_eq!(messages[1]["tool_calls"][0]["name"], "everything_get-sum");
    assert_eq!(messages[2]["tool_call_id"], messages[1]["tool_calls"][0]["id"]);
    assert!(messages[2]["content"].as_str().unwrap().contains("5"));
    assert_eq!(messages[3]["id"], answer["message_id"]);
    for pair in messages.windows(2) {
        assert_eq!(pair[1]["parent_message_id"], pair[0]["id"]);
    }

    // The run's stream: every event, numbered 1, 2, 3... without gaps, ending the run.
    let events = mesh.sse(ALICE, &format!("/api/v1/runs/{run_id}/stream"), None, &[]).await;
    let sequences: Vec<u64> = events.iter().map(|event| event.id.unwrap()).collect();
    assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>());
    let kinds = names(&events);
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(events[0].data["run_started"]["user_message_id"], messages[0]["id"], "the persisted user message");
    assert_eq!(kinds.last(), Some(&"run_completed"));
    for expected in ["tool_call", "tool_result", "message", "token", "usage"] {
        assert!(kinds.contains(&expected), "{expected} missing from {kinds:?}");
    }
    let call = events.iter().find(|event| event.name == "tool_call").unwrap();
    let arguments: Value = serde_json::from_str(call.data["tool_call"]["arguments_json"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"a": 2, "b": 3}));

    // Reconnecting after event 3 gives exactly the rest.
    let rest = mesh.sse(ALICE, &format!("/api/v1/runs/{run_id}/stream"), None, &[("Last-Event-ID", "3")]).await;
    assert_eq!(rest.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(), sequences[3..].to_vec());

    // Resuming at or past the last event (the client has it all) ends at once with nothing,
    // up to the largest sequence a client can send.
    let (last, max) = (sequences.last().unwrap().to_string(), u64::MAX.to_string());
    let stream = format!("/api/v1/runs/{run_id}/stream");
    let beyond = format!("{stream}?from_sequence={max}");
    for (path, resume) in [(&stream, last.as_str()), (&stream, max.as_str()), (&beyond, "0")] {
        let headers = [("Last-Event-ID", resume)];
        let reading = tokio::time::timeout(Duration::from_secs(10), mesh.sse(ALICE, path, None, &headers)).await;
        let events = reading.unwrap_or_else(|_| panic!("{path} after {resume} did not end"));
        assert!(events.is_empty(), "{path} after {resume}: {events:?}");
    }

    // A streamed execute with an idempotency key, then the same POST again resuming after
    // event 2: the same run, no gaps or repeats, and no second run.
    let body = json!({"session_id": session, "message": GET_SUM});
    let path = format!("/api/v1/agents/{agent}/execute/stream");
    let first = mesh.sse(ALICE, &path, Some(body.clone()), &[("Idempotency-Key", "e2e-stream-1")]).await;
    let first_run = first[0].data["run_id"].clone();
    let again =
        mesh.sse(ALICE, &path, Some(body), &[("Idempotency-Key", "e2e-stream-1"), ("Last-Event-ID", "2")]).await;
    assert_eq!(again[0].data["run_id"], first_run);
    assert_eq!(
        again.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(),
        first.iter().skip(2).map(|e| e.id.unwrap()).collect::<Vec<_>>()
    );
    let (status, runs) = mesh.json(ALICE, Method::GET, &format!("/api/v1/sessions/{session}/runs"), None).await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs.as_array().unwrap().len(), 2, "one unary run and one streamed run: {runs}");
}

#[tokio::test]
async fn a_tool_needing_approval_waits_then_runs_when_approved_and_is_skipped_when_rejected() {
    let Some((mesh, _server)) = start().await else { return };
    let agent = mesh
        .agent(
            ALICE,
            json!({"name": "careful", "tools": ["everything_get-sum"], "approval": {"tools": ["everything_get-sum"]}}),
        )
        .await;

    for (decision, expected) in [("approve", "The sum of 2 and 3 is 5"), ("reject", "failed")] {
        let session = mesh.session(ALICE).await;
        let execute = json!({"session_id": session, "message": GET_SUM});
        let (status, waiting) =
            mesh.json(ALICE, Method::POST, &format!("/api/v1/agents/{agent}/execute"), Some(execute)).await;
        assert_eq!(status, 200, "{waiting}");
        assert_eq!(waiting["status"], "requires_action");
        assert_eq!(waiting["tool_calls"][0]["status"], "pending");
        let run_id = waiting["run_id"].as_str().unwrap().to_owned();
        let (_, run) = mesh.json(ALICE, Method::GET, &format!("/api/v1/runs/{run_id}"), None).await;
        assert_eq!(run["status"], "requires_action");
        assert_eq!(run["pending_tool_calls"][0]["name"], "everything_get-sum");
        let (_, agent_now) = mesh.json(ALICE, Method::GET, &format!("/api/v1/agents/{agent}"), None).await;
        assert_eq!(agent_now["status"], "waiting");

        let (status, resumed) =
            mesh.json(ALICE, Method::POST, &format!("/api/v1/runs/{run_id}/{decision}"), Some(json!({}))).await;
        assert_eq!(status, 200, "{resumed}");
        let events = mesh.sse(ALICE, &format!("/api/v1/runs/{run_id}/stream"), None, &[]).await;
        let kinds = names(&events);
        assert!(kinds.contains(&"interrupt"), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"run_completed"));
        let sequences: Vec<u64> = events.iter().map(|event| event.id.unwrap()).collect();
        assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>());
        let (_, run) = mesh.json(ALICE, Method::GET, &format!("/api/v1/runs/{run_id}"), None).await;
        assert_eq!(run["status"], "completed", "{run}");
        let messages = mesh.messages(ALICE, &session).await;
        let last = messages.last().unwrap()["content"].as_str().unwrap().to_owned();
        assert!(last.contains(expected), "{decision}: {last}");
        let (status, again) =
            mesh.json(ALICE, Method::POST, &format!("/api/v1/runs/{run_id}/approve"), Some(json!({}))).await;
        assert_eq!((status, again["code"].clone()), (409, json!("conflict")), "{again}");
    }
}

#[tokio::test]
async fn cancel_mid_stream_stops_the_run_and_leaves_consistent_messages() {
    let Some((mesh, _server)) = start().await else { return };
    let session = mesh.session(ALICE).await;
    let agent = mesh.agent(ALICE, json!({"name": "talker"})).await;
    let long = "word ".repeat(400);
    let (status, run) = mesh
        .json(
            ALICE,
            Method::POST,
            &format!("/api/v1/agents/{agent}/runs"),
            Some(json!({"session_id": session, "message": long})),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    // Wait until tokens flow (the scripted model sends one word per 20 ms).
    let mut response = mesh.call(ALICE, Method::GET, &format!("/api/v1/runs/{run_id}/stream"), None).await;
    let mut seen = String::new();
    while !seen.contains("event: token") {
        seen.push_str(&String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()));
    }
    let (status, cancelled) = mesh
        .json(ALICE, Method::POST, &format!("/api/v1/runs/{run_id}/cancel"), Some(json!({"reason": "enough"})))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "cancel returns once the run has stopped");
    assert_eq!(cancelled["metadata"]["cancel_reason"], "enough");
    while let Some(chunk) = response.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events = parse_sse(&seen);
    assert_eq!(events.last().unwrap().name, "run_completed");
    assert_eq!(events.last().unwrap().data["run_completed"]["status"], "cancelled");
    // The session holds the user's message and nothing half-written.
    let messages = mesh.messages(ALICE, &session).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0]["role"], "user");
}

#[tokio::test]
async fn a_tool_server_that_is_down_becomes_a_tool_error_the_model_answers() {
    let Some((mesh, mut server)) = start().await else { return };
    let session = mesh.session(ALICE).await;
    let agent = mesh.agent(ALICE, json!({"name": "resilient", "tools": ["everything_get-sum"]})).await;
    server.stop().await;
    let execute = json!({"session_id": session, "message": GET_SUM});
    let (status, answer) =
        mesh.json(ALICE, Method::POST, &format!("/api/v1/agents/{agent}/execute"), Some(execute)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["tool_calls"][0]["is_error"], true, "{answer}");
    assert!(answer["content"].as_str().unwrap().contains("failed"), "{answer}");
    let roles: Vec<String> =
        mesh.messages(ALICE, &session).await.iter().map(|m| m["role"].as_str().unwrap().to_owned()).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
}

#[tokio::test]
async fn other_users_runs_and_agents_are_not_found_a_thousand_times() {
    let Some((mesh, _server)) = start().await else { return };
    let session = mesh.session(ALICE).await;
    let agent = mesh.agent(ALICE, json!({"name": "private", "tools": ["everything_get-sum"]})).await;
    let (status, answer) = mesh
        .json(
            ALICE,
            Method::POST,
            &format!("/api/v1/agents/{agent}/execute"),
            Some(json!({"session_id": session, "message": "hello"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let run = answer["run_id"].as_str().unwrap().to_owned();
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/runs/{run}"), None),
        (Method::POST, format!("/api/v1/runs/{run}/cancel"), Some(json!({}))),
        (Method::POST, format!("/api/v1/runs/{run}/approve"), Some(json!({}))),
        (Method::POST, format!("/api/v1/runs/{run}/reject"), Some(json!({}))),
        (Method::GET, format!("/api/v1/runs/{run}/stream"), None),
        (Method::GET, format!("/api/v1/agents/{agent}"), None),
        (Method::PUT, format!("/api/v1/agents/{agent}"), Some(json!({"name": "mine"}))),
        (Method::DELETE, format!("/api/v1/agents/{agent}"), None),
        (
            Method::POST,
            format!("/api/v1/agents/{agent}/execute"),
            Some(json!({"session_id": session, "message": "hi"})),
        ),
        (Method::POST, format!("/api/v1/agents/{agent}/runs"), Some(json!({"session_id": session, "message": "hi"}))),
    ];
    for round in 0..100 {
        for (method, path, body) in &attempts {
            let response = mesh.call(BOB, method.clone(), path, body.clone()).await;
            assert_eq!(response.status(), 404, "round {round}: {method} {path}");
        }
    }
    let (status, agents) = mesh.json(BOB, Method::GET, "/api/v1/agents", None).await;
    assert_eq!((status, agents), (200, json!([])));
    let (_, still) = mesh.json(ALICE, Method::GET, &format!("/api/v1/runs/{run}"), None).await;
    assert_eq!(still["status"], "completed");
    let (_, agent_now) = mesh.json(ALICE, Method::GET, &format!("/api/v1/agents/{agent}"), None).await;
    assert_eq!(agent_now["name"], "private");
}

#[tokio::test]
async fn execute_refuses_to_stream_and_an_expired_stream_is_a_clear_error() {
    let settings = [("LLM_SCRIPTED_DELAY", "0.02".to_owned()), ("AGENT_OUTPUT_RETENTION", "1".to_owned())];
    let mesh = Mesh::up(&settings).await.unwrap();
    let session = mesh.session(ALICE).await;
    let agent = mesh.agent(ALICE, json!({"name": "brief"})).await;
    let path = format!("/api/v1/agents/{agent}/execute");
    let (status, refused) = mesh
        .json(ALICE, Method::POST, &path, Some(json!({"session_id": session, "message": "hi", "stream": true})))
        .await;
    assert_eq!((status, refused["code"].clone()), (422, json!("validation_error")), "{refused}");
    assert_eq!(refused["details"]["stream_endpoint"], format!("/api/v1/agents/{agent}/execute/stream"));
    assert!(mesh.messages(ALICE, &session).await.is_empty(), "a refused execute changes nothing");

    let (status, answer) =
        mesh.json(ALICE, Method::POST, &path, Some(json!({"session_id": session, "message": "hi"}))).await;
    assert_eq!(status, 200, "{answer}");
    let run = answer["run_id"].as_str().unwrap().to_owned();
    let (_, record) = mesh.json(ALICE, Method::GET, &format!("/api/v1/runs/{run}"), None).await;
    assert!(record["output_expires_at"].is_string(), "{record}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, expired) = mesh.json(ALICE, Method::GET, &format!("/api/v1/runs/{run}/stream"), None).await;
    assert_eq!((status, expired["code"].clone()), (404, json!("not_found")), "{expired}");
    assert!(expired["message"].as_str().unwrap().contains("no longer kept"), "{expired}");
}

#[tokio::test]
async fn a_busy_session_rejects_queues_or_interrupts_by_policy() {
    let mesh = Mesh::up(&[("LLM_SCRIPTED_DELAY", "0.02".to_owned())]).await.unwrap();
    let session = mesh.session(ALICE).await;
    let agent = mesh.agent(ALICE, json!({"name": "one-at-a-time"})).await;
    let runs = format!("/api/v1/agents/{agent}/runs");
    let long = "word ".repeat(300);
    let (status, first) =
        mesh.json(ALICE, Method::POST, &runs, Some(json!({"session_id": session, "message": long}))).await;
    assert_eq!(status, 202, "{first}");
    let first = first["id"].as_str().unwrap().to_owned();

    // reject (the default): 409 naming the run that holds the session
    let (status, refused) =
        mesh.json(ALICE, Method::POST, &runs, Some(json!({"session_id": session, "message": "me too"}))).await;
    assert_eq!((status, refused["details"]["run_id"].clone()), (409, json!(first)), "{refused}");

    // enqueue: queued behind the first, then run after it
    let body = json!({"session_id": session, "message": "after you", "concurrency": "enqueue"});
    let (status, queued) = mesh.json(ALICE, Method::POST, &runs, Some(body)).await;
    assert_eq!((status, queued["status"].clone()), (202, json!("queued")), "{queued}");
    let queued = queued["id"].as_str().unwrap().to_owned();

    // interrupt: the running one is cancelled, the new one runs; the queued one still waits
    let body = json!({"session_id": session, "message": "now", "concurrency": "interrupt"});
    let (status, urgent) = mesh.json(ALICE, Method::POST, &runs, Some(body)).await;
    assert_eq!(status, 202, "{urgent}");
    let urgent = urgent["id"].as_str().unwrap().to_owned();
    let (_, cancelled) = mesh.json(ALICE, Method::GET, &format!("/api/v1/runs/{first}"), None).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    // Both remaining runs end completed, the urgent one first (its stream ends before the
    // queued one's does).
    for run in [&urgent, &queued] {
        let events = mesh.sse(ALICE, &format!("/api/v1/runs/{run}/stream"), None, &[]).await;
        assert_eq!(events.last().unwrap().data["run_completed"]["status"], "completed", "{run}");
    }
    let messages = mesh.messages(ALICE, &session).await;
    let contents: Vec<&str> = messages.iter().map(|m| m["content"].as_str().unwrap()).collect();
    let urgent_at = contents.iter().position(|c| *c == "now").unwrap();
    let queued_at = contents.iter().position(|c| *c == "after you").unwrap();
    assert!(urgent_at < queued_at, "{contents:?}");
    assert_eq!(contents[urgent_at + 1], "You said: now");
    assert_eq!(contents[queued_at + 1], "You said: after you");
}
