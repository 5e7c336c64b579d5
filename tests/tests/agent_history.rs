//! What the model sees of a session, end to end through the real `agentmesh up` binary:
//! the agent's system prompt, then the session's latest messages within the agent's
//! history window (`model_config.history_messages`), oldest first, ending with the message
//! that started the run; a run's own answer is history for the next run. The model is a
//! fake OpenAI-compatible provider served by this test (`fake/context`) that answers with
//! the conversation it was sent, one `role: content` line per message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::{ALICE, Mesh, serve_fake_provider};
use agentmesh_testkit::{REQUIRE_SERVICES_ENV, services_required, unique_name};
use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use reqwest::Method;
use serde_json::{Value, json};

/// One `data:` frame of a `chat.completion.chunk` with `delta` and `finish`.
fn frame(delta: Value, finish: Value) -> Bytes {
    let chunk = json!({
        "id": "chatcmpl-context", "object": "chat.completion.chunk", "created": 1_765_000_000, "model": "context",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    Bytes::from(format!("data: {chunk}\n\n"))
}

/// `POST /v1/chat/completions` (streamed): the answer lists the messages received.
async fn context(body: axum::Json<Value>) -> Response {
    let seen: Vec<String> = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|message| {
            format!("{}: {}", message["role"].as_str().unwrap_or("?"), message["content"].as_str().unwrap_or(""))
        })
        .collect();
    let frames = [
        frame(json!({"role": "assistant", "content": seen.join("\n")}), Value::Null),
        frame(json!({}), json!("stop")),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ];
    let stream = futures::stream::iter(frames.map(Ok::<_, std::io::Error>));
    Response::builder().header(CONTENT_TYPE, "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

async fn start() -> Option<Mesh> {
    let fake = serve_fake_provider(axum::routing::post(context), &["context"]).await.unwrap();
    match Mesh::up(&[("LLM_OPENAI_COMPATIBLE", format!("fake={fake}"))]).await {
        Ok(mesh) => Some(mesh),
        Err(error) => {
            assert!(!services_required(), "agentmesh up failed with {REQUIRE_SERVICES_ENV}=1: {error}");
            eprintln!("skipped: agentmesh up failed: {error}");
            None
        }
    }
}

/// Executes `agent` on `session` with `message`; returns the answer's content.
async fn execute(mesh: &Mesh, agent: &str, session: &str, message: &str) -> String {
    let body = json!({"session_id": session, "message": message});
    let (status, answer) = mesh.json(ALICE, Method::POST, &format!("/api/v1/agents/{agent}/execute"), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer["content"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_model_sees_the_system_prompt_and_the_latest_window_of_the_session_in_order() {
    let Some(mesh) = start().await else { return };
    let agent = mesh
        .agent(
            ALICE,
            json!({
                "name": unique_name("historian"),
                "system_prompt": "Be brief.",
                "model_config": {"model": "fake/context", "history_messages": 3},
            }),
        )
        .await;
    let session = mesh.session(ALICE).await;
    for (role, content) in [("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")] {
        let body = json!({"role": role, "content": content});
        let (status, created) =
            mesh.json(ALICE, Method::POST, &format!("/api/v1/sessions/{session}/messages"), Some(body)).await;
        assert_eq!(status, 201, "{created}");
    }

    // A window of 3: the two latest earlier messages, then the run's own.
    let first = execute(&mesh, &agent, &session, "now").await;
    assert_eq!(first, "system: Be brief.\nuser: u2\nassistant: a2\nuser: now");

    // The first run's answer is history for the next.
    let second = execute(&mesh, &agent, &session, "again").await;
    assert_eq!(second, format!("system: Be brief.\nuser: now\nassistant: {first}\nuser: again"));

    let contents: Vec<Value> = mesh.messages(ALICE, &session).await.iter().map(|m| m["content"].clone()).collect();
    assert_eq!(
        contents,
        [json!("u1"), json!("a1"), json!("u2"), json!("a2"), json!("now"), json!(first), json!("again"), json!(second)]
    );
}
