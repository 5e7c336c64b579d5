//! The Anthropic Messages API subject.

use std::sync::Arc;

use agentmesh_llm_proxy::provider::Provider;
use agentmesh_llm_proxy::provider::anthropic::Anthropic;
use wiremock::Request;

use crate::{Subject, support};

/// Anthropic, pointed at the fake server.
pub const SUBJECT: Subject = Subject {
    name: "anthropic",
    model: "claude-sonnet-4-5",
    provider: |base_url| Arc::new(Anthropic::new(base_url)) as Arc<dyn Provider>,
    unary_path: "/v1/messages",
    stream_path: "/v1/messages",
    check_request,
    splits_tool_arguments: true,
};

/// The key travels in `x-api-key`, the API version is pinned, and streams ask for SSE in the body.
fn check_request(request: &Request, streamed: bool) {
    let header = |name: &str| request.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    assert_eq!(header("x-api-key").as_deref(), Some(support::KEY), "the key in x-api-key");
    assert!(header("authorization").is_none(), "no bearer token");
    assert_eq!(header("anthropic-version").as_deref(), Some("2023-06-01"), "the pinned API version");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
    if streamed {
        assert_eq!(body["stream"], true, "a streamed call sets stream");
    } else {
        assert!(body.get("stream").is_none_or(|stream| stream == false), "a unary call does not stream");
    }
}
