//! Requests- and tokens-per-minute limits per provider (the seed's 60 and 50,000,
//! `RATE_LIMIT_LLM_*`), in this process or shared by every replica through Redis.
//!
//! A call is admitted against both limits before it is sent: one request, and an estimate
//! of its tokens (prompt estimate plus `max_tokens`). Once its usage is known the estimate
//! is settled to the actual count, so a budget holds to what providers really counted.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::agentmesh::common::v1::{content_part, embedded_resource};
use agentmesh_proto::agentmesh::llm::v1::ChatRequest;
use agentmesh_ratelimit::{Limit, RateLimitError, RateLimiter};
use agentmesh_runtime::{ApiError, ErrorCode};

/// The limits of every provider.
#[derive(Clone)]
pub struct Limits {
    limiter: Option<Arc<dyn RateLimiter>>,
    requests: Limit,
    tokens: Limit,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("enabled", &self.limiter.is_some())
            .field("requests", &self.requests)
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// What one admitted call holds, to settle once its usage is known.
#[derive(Debug, Clone)]
pub struct Admission {
    provider: String,
    estimated_tokens: u32,
}

impl Admission {
    /// The tokens the call was admitted for.
    pub fn estimated_tokens(&self) -> u32 {
        self.estimated_tokens
    }
}

impl Limits {
    /// `requests_per_minute` and `tokens_per_minute` per provider, counted by `limiter`;
    /// `None` limits nothing (`FEATURE_ENABLE_RATE_LIMITING=false`).
    pub fn new(limiter: Option<Arc<dyn RateLimiter>>, requests_per_minute: u32, tokens_per_minute: u32) -> Self {
        Self { limiter, requests: Limit::per_minute(requests_per_minute), tokens: Limit::per_minute(tokens_per_minute) }
    }

    /// Admits one call of `estimated_tokens` to `provider`, or says when to retry.
    pub async fn admit(&self, provider: &str, estimated_tokens: u32) -> Result<Admission, ApiError> {
        let admission = Admission { provider: provider.to_owned(), estimated_tokens };
        let Some(limiter) = &self.limiter else { return Ok(admission) };
        let requests =
            limiter.check_cost(&requests_key(provider), self.requests, 1).await.map_err(|e| refused(provider, &e))?;
        if !requests.allowed {
            return Err(rate_limited(provider, "requests", requests.retry_after));
        }
        let tokens = limiter
            .check_cost(&tokens_key(provider), self.tokens, estimated_tokens)
            .await
            .map_err(|e| refused(provider, &e));
        let refusal = match tokens {
            Ok(decision) if decision.allowed => return Ok(admission),
            Ok(decision) => rate_limited(provider, "tokens", decision.retry_after),
            Err(error) => error,
        };
        // The request was counted but will not be sent: give it back.
        if let Err(error) = limiter.adjust(&requests_key(provider), self.requests, -1).await {
            tracing::warn!(%error, provider, "request count not refunded");
        }
        Err(refusal)
    }

    /// Settles `admission` to the `actual_tokens` the provider counted (0 when the call
    /// failed before using any).
    pub async fn settle(&self, admission: &Admission, actual_tokens: u64) {
        let Some(limiter) = &self.limiter else { return };
        let key = tokens_key(&admission.provider);
        if let Err(error) = limiter.settle(&key, self.tokens, admission.estimated_tokens, actual_tokens).await {
            tracing::warn!(%error, provider = admission.provider, "token usage not settled");
        }
    }
}

fn requests_key(provider: &str) -> String {
    format!("llm:{provider}:requests")
}

fn tokens_key(provider: &str) -> String {
    format!("llm:{provider}:tokens")
}

fn rate_limited(provider: &str, what: &str, retry_after: Option<Duration>) -> ApiError {
    let mut error =
        ApiError::new(ErrorCode::RateLimit, format!("LLM {what}-per-minute limit reached for provider {provider}"))
            .with_detail("provider", provider)
            .with_detail("limit", format!("{what}_per_minute"));
    if let Some(after) = retry_after {
        error = error.with_retry_after(after);
    }
    error
}

/// A cost the limit can never admit (a request whose estimate exceeds the whole budget).
fn refused(provider: &str, error: &RateLimitError) -> ApiError {
    match error {
        RateLimitError::CostExceedsLimit { cost, quota } => ApiError::new(
            ErrorCode::Validation,
            format!(
                "the request may use {cost} tokens, more than provider {provider}'s whole budget of {quota} per minute; lower max_tokens"
            ),
        ),
        other => {
            tracing::warn!(error = %other, provider, "rate limit not checked");
            ApiError::internal()
        }
    }
}

/// Tokens a request may use: its prompt (about four characters per token, images and audio
/// a flat 1,000) plus the answer's `max_tokens`.
pub fn estimate_tokens(request: &ChatRequest, max_tokens: u32) -> u32 {
    let mut characters = 0usize;
    let mut images = 0usize;
    for message in &request.messages {
        characters += message.content.len() + 8;
        for call in &message.tool_calls {
            characters += call.name.len() + call.arguments_json.len();
        }
        for part in &message.parts {
            match &part.part {
                Some(content_part::Part::Text(text)) => characters += text.len(),
                Some(content_part::Part::ResourceLink(link)) => characters += link.uri.len() + link.name.len() + 16,
                Some(content_part::Part::Resource(resource)) => match &resource.contents {
                    Some(embedded_resource::Contents::Text(text)) => characters += text.len() + resource.uri.len(),
                    _ => images += 1,
                },
                Some(content_part::Part::Image(_) | content_part::Part::Audio(_)) => images += 1,
                None => {}
            }
        }
    }
    for tool in &request.tools {
        characters += tool.name.len() + tool.description.len() + 200;
    }
    let prompt = characters.div_ceil(4) + images * 1000;
    u32::try_from(prompt).unwrap_or(u32::MAX).saturating_add(max_tokens)
}
