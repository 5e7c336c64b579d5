//! The whole mesh as one `agentmesh up` process (its REST API through [`Rest`]), and a fake
//! OpenAI-compatible provider for llm-proxy to call, so every test (and bench) of agents
//! and runs talks to them the same way.
//!
//! The helpers are for tests: a call that cannot be made, or an answer that is not what
//! every caller needs (a created session or agent), panics with the request that failed.

use std::ops::Deref;

use axum::routing::MethodRouter;
use serde_json::{Value, json};

use crate::rest::Rest;
use crate::{HarnessError, NO_RATE_LIMITS, Process, free_port, wait_http};

/// Alice's API key (`premium` tier).
pub const ALICE: &str = "sk-e2e-alice-0123456789abcdefghijklmnopqrstuv";
/// Bob's API key (`premium` tier).
pub const BOB: &str = "sk-e2e-bob-0123456789abcdefghijklmnopqrstuvwxy";

/// `agentmesh up` on a free loopback port, with Alice and Bob as users and rate limits far
/// above anything a test does; its REST API through [`Rest`] (`Deref`).
pub struct Mesh {
    rest: Rest,
    _process: Process,
}

impl Mesh {
    /// Starts the mesh with `env` added to (or overriding) the test defaults, and waits
    /// until the gateway answers its health check.
    ///
    /// The gateway's port is found free before the process binds it, so another test's
    /// listener can take it in between: a start that fails only because the port was
    /// taken is tried again on another port.
    pub async fn up(env: &[(&str, String)]) -> Result<Mesh, HarnessError> {
        let mut settings = vec![
            ("SECURITY_API_KEYS", format!("{ALICE}=alice:premium,{BOB}=bob:premium")),
            ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned()),
        ];
        settings.extend(NO_RATE_LIMITS.iter().map(|(name, value)| (*name, (*value).to_owned())));
        settings.extend(env.iter().cloned());
        let mut attempts_left = 3;
        loop {
            let port = free_port()?;
            let mut process = Process::spawn("agentmesh", &["up", "--http", &format!("127.0.0.1:{port}")], &settings)?;
            let base = format!("http://127.0.0.1:{port}");
            match wait_http(&mut process, &format!("{base}/api/v1/health")).await {
                Ok(()) => return Ok(Mesh { rest: Rest::new(base), _process: process }),
                Err(HarnessError::Exited { stderr, .. })
                    if attempts_left > 1 && stderr.contains("Address already in use") =>
                {
                    attempts_left -= 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl Deref for Mesh {
    type Target = Rest;

    fn deref(&self) -> &Rest {
        &self.rest
    }
}

/// Serves a fake OpenAI-compatible provider on a free loopback port: `chat` answers
/// `POST /v1/chat/completions`, and `GET /v1/models` lists `models` (llm-proxy reads the
/// list once at start-up). Returns its base URL (`…/v1`), for `LLM_OPENAI_COMPATIBLE`.
pub async fn serve_fake_provider(chat: MethodRouter, models: &[&str]) -> Result<String, HarnessError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_765_000_000, "owned_by": "agentmesh-e2e"}))
        .collect();
    let listing = json!({"object": "list", "data": data});
    let app = axum::Router::new()
        .route("/v1/chat/completions", chat)
        .route("/v1/models", axum::routing::get(move || std::future::ready(axum::Json(listing))));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}
