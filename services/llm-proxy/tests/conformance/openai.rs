//! The Chat Completions family: OpenAI, Azure OpenAI and an OpenAI-compatible server
//! (fixtures shaped like llama.cpp's server and vLLM), one provider type in three flavours.

use std::sync::Arc;

use agentmesh_llm_proxy::provider::Provider;
use agentmesh_llm_proxy::provider::openai::ChatCompletions;
use wiremock::Request;

use crate::Subject;
use crate::support::KEY;

/// OpenAI: Bearer key, model in the body.
pub const OPENAI: Subject = Subject {
    name: "openai",
    model: "gpt-4o",
    provider: openai,
    unary_path: "/v1/chat/completions",
    stream_path: "/v1/chat/completions",
    check_request: bearer_key,
    splits_tool_arguments: true,
};

/// Azure OpenAI: `api-key` header, deployment in the path, `api-version` in the query.
pub const AZURE: Subject = Subject {
    name: "azure",
    model: "gpt-4o",
    provider: azure,
    unary_path: "/openai/deployments/gpt-4o/chat/completions",
    stream_path: "/openai/deployments/gpt-4o/chat/completions",
    check_request: azure_key_and_version,
    splits_tool_arguments: true,
};

/// An OpenAI-compatible server with a key configured.
pub const COMPATIBLE: Subject = Subject {
    name: "compatible",
    model: "qwen2.5-7b-instruct",
    provider: compatible,
    unary_path: "/v1/chat/completions",
    stream_path: "/v1/chat/completions",
    check_request: bearer_key,
    splits_tool_arguments: true,
};

fn openai(base_url: &str) -> Arc<dyn Provider> {
    Arc::new(ChatCompletions::openai(format!("{base_url}/v1")))
}

fn azure(base_url: &str) -> Arc<dyn Provider> {
    Arc::new(ChatCompletions::azure(base_url, "2024-10-21"))
}

fn compatible(base_url: &str) -> Arc<dyn Provider> {
    Arc::new(ChatCompletions::compatible("local", format!("{base_url}/v1")))
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|value| value.to_str().ok())
}

fn bearer_key(request: &Request, _streamed: bool) {
    assert_eq!(header(request, "authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(header(request, "api-key"), None);
}

fn azure_key_and_version(request: &Request, _streamed: bool) {
    assert_eq!(header(request, "api-key"), Some(KEY));
    assert_eq!(header(request, "authorization"), None, "Azure keys go in api-key, not Authorization");
    let query: Vec<(String, String)> =
        request.url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    assert_eq!(query, [("api-version".to_owned(), "2024-10-21".to_owned())]);
}
