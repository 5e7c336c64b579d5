//! Gemini in the conformance suite: the Generative Language API (`v1beta`), its key in the
//! `x-goog-api-key` header and streams as server-sent events (`alt=sse`).

use std::sync::Arc;

use agentmesh_llm_proxy::provider::Provider;
use agentmesh_llm_proxy::provider::gemini::Gemini;
use wiremock::Request;

use crate::support::{KEY, Subject};

/// Gemini against the fake server.
pub const SUBJECT: Subject = Subject {
    name: "gemini",
    model: "gemini-2.5-flash",
    provider: |base_url| Arc::new(Gemini::new(base_url)) as Arc<dyn Provider>,
    unary_path: "/v1beta/models/gemini-2.5-flash:generateContent",
    stream_path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    check_request,
    splits_tool_arguments: false,
};

fn check_request(request: &Request, streamed: bool) {
    let key = request.headers.get("x-goog-api-key").and_then(|value| value.to_str().ok());
    assert_eq!(key, Some(KEY), "the key goes in x-goog-api-key");
    let query = request.url.query().unwrap_or_default();
    assert!(!query.split('&').any(|pair| pair.starts_with("key=")), "the key stays out of the URL: {query}");
    assert!(!request.url.as_str().contains(KEY), "the key stays out of the URL");
    let sse = query.split('&').any(|pair| pair == "alt=sse");
    assert_eq!(sse, streamed, "streams, and only streams, ask for alt=sse: {query}");
}
