//! One trait every LLM provider implements, so the proxy's routing, resilience, limits and
//! usage accounting are written once and each provider only translates the contract to its
//! wire format and back.
//!
//! A provider receives the contract's [`ChatRequest`] with the model already resolved (the
//! part after `provider/`) and returns either a whole [`Completion`] or a stream of
//! [`Delta`]s ending with [`Delta::Finish`]. It never retries, falls back, limits or
//! times out by itself: the proxy does, the same way for all of them.

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod parts;
pub mod scripted;

use std::fmt;
use std::time::Duration;

use agentmesh_proto::agentmesh::common::v1::Usage;
use agentmesh_proto::agentmesh::llm::v1::{ChatMessage, ChatRequest, FinishReason, ToolCallDelta};
use agentmesh_resilience::Outcome;
use agentmesh_runtime::config::Secret;
use futures::stream::BoxStream;

/// The built-in providers' names (compatible servers are named by configuration).
pub const BUILT_IN: &[&str] = &["openai", "azure", "anthropic", "gemini", "scripted"];

/// One call as a provider receives it.
#[derive(Debug, Clone, Copy)]
pub struct ProviderRequest<'a> {
    /// The model inside the provider (for `openai/gpt-4o`, `gpt-4o`; for Azure, the deployment).
    pub model: &'a str,
    /// The caller's request (its `model` field is the caller's spelling; use [`Self::model`]).
    pub request: &'a ChatRequest,
    /// Tokens the answer may take: the request's `max_tokens` or the configured default.
    pub max_tokens: u32,
    /// The API key, for providers that need one.
    pub key: Option<&'a Secret>,
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The provider's id of the completion (made up when it sends none).
    pub id: String,
    /// The assistant message: text and tool calls.
    pub message: ChatMessage,
    /// Why generation stopped.
    pub finish: Finish,
    /// Token usage, when the provider reports it.
    pub usage: Option<Usage>,
}

/// Why generation stopped, normalised and as the provider said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The contract's reason.
    pub reason: FinishReason,
    /// The provider's own word, for example `end_turn`.
    pub raw: String,
}

impl Finish {
    /// A finish with its normalised and raw reasons.
    pub fn new(reason: FinishReason, raw: impl Into<String>) -> Self {
        Self { reason, raw: raw.into() }
    }
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// The provider's id of the completion, once known (at most once, before any text).
    Id(String),
    /// Text to append to the answer.
    Text(String),
    /// A fragment of a tool call; fragments with the same index form one call, and the
    /// first fragment of a call carries its id and name.
    ToolCall(ToolCallDelta),
    /// Token usage (OpenAI sends it in a last chunk, Anthropic in pieces: the latest wins
    /// field by field, see [`merge_usage`]).
    Usage(Usage),
    /// The end of the answer; nothing follows.
    Finish(Finish),
}

/// A streamed answer; a stream that ends without [`Delta::Finish`] was cut off.
pub type DeltaStream = BoxStream<'static, Result<Delta, ProviderError>>;

/// An LLM provider.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// The provider's name: the `provider` of `provider/model` (`openai`, `anthropic`,
    /// `gemini`, `azure`, `scripted`, or a compatible server's configured name).
    fn name(&self) -> &str;

    /// The secret holding its API key (`openai-api-key`, ...), or `None` when it needs none.
    fn key_secret(&self) -> Option<&str>;

    /// Runs one completion and returns the whole answer.
    async fn chat(&self, request: ProviderRequest<'_>) -> Result<Completion, ProviderError>;

    /// The models the provider lists itself, for providers whose models nobody configured
    /// (OpenAI-compatible servers answer `GET /models`); empty when it cannot say.
    async fn discover_models(&self, _key: Option<&Secret>) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }

    /// Starts one streamed completion. Returns once the provider accepted the request (its
    /// HTTP status is known), so that a refused request is an error here, before any delta.
    async fn stream(&self, request: ProviderRequest<'_>) -> Result<DeltaStream, ProviderError>;
}

/// Why a provider call failed. Messages never contain the API key (see
/// [`http::redact`]) and are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with an HTTP error status.
    #[error("the provider answered HTTP {status}: {message}")]
    Status {
        /// The HTTP status (Anthropic's in-stream `overloaded_error` counts as 529).
        status: u16,
        /// The provider's `Retry-After` (or `retry-after-ms`).
        retry_after: Option<Duration>,
        /// The provider's error message.
        message: String,
    },
    /// No answer (or no first token) in time.
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed or broke.
    #[error("could not reach the provider: {0}")]
    Transport(String),
    /// The provider's answer is not what its API documents (bad JSON, malformed SSE).
    #[error("the provider's answer could not be read: {0}")]
    Malformed(String),
    /// The stream ended before the answer did.
    #[error("the provider's stream ended before the answer was complete")]
    Truncated,
    /// No API key is configured for the provider.
    #[error("no API key is configured (secret {secret})")]
    MissingKey {
        /// The secret's name.
        secret: String,
    },
    /// The request asks for something this provider cannot do.
    #[error("{0}")]
    Unsupported(String),
}

impl ProviderError {
    /// What the error says about the provider, for retries, the breaker and fallback:
    /// overload, outages and broken answers are retryable failures; rejected credentials,
    /// unknown models and a missing key are failures retrying cannot fix (fallback may);
    /// a bad request is the caller's, and the provider counts as healthy.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Status { status, retry_after, .. } => match status {
                408 | 409 | 425 | 429 | 500..=599 => Outcome::Failure { retryable: true, retry_after: *retry_after },
                401 | 403 | 404 => Outcome::FATAL,
                _ => Outcome::Success,
            },
            Self::Timeout(_) | Self::Transport(_) | Self::Malformed(_) | Self::Truncated => Outcome::RETRYABLE,
            Self::MissingKey { .. } => Outcome::FATAL,
            Self::Unsupported(_) => Outcome::Success,
        }
    }
}

/// Merges a later usage report into an earlier one: non-zero fields of `later` win
/// (Anthropic reports input tokens first and output tokens last), and the total is recomputed.
pub fn merge_usage(earlier: &mut Usage, later: &Usage) {
    let pick = |a: &mut i64, b: i64| {
        if b != 0 {
            *a = b;
        }
    };
    pick(&mut earlier.prompt_tokens, later.prompt_tokens);
    pick(&mut earlier.completion_tokens, later.completion_tokens);
    pick(&mut earlier.cached_prompt_tokens, later.cached_prompt_tokens);
    pick(&mut earlier.cache_creation_tokens, later.cache_creation_tokens);
    pick(&mut earlier.reasoning_tokens, later.reasoning_tokens);
    earlier.total_tokens = earlier.prompt_tokens + earlier.completion_tokens;
}

/// A made-up id for a tool call the provider sent without one (Gemini): unique within
/// the response, and recognisable.
pub fn made_up_tool_call_id(index: usize) -> String {
    format!("call_{}_{index}", uuid::Uuid::new_v4().simple())
}
