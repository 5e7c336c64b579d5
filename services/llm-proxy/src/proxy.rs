//! The proxy: one request's way through the providers. For each target of its chain (the
//! model, then its fallbacks) it checks the rate limits, gets the key, and calls the
//! provider under that target's resilience policy — retries with `Retry-After`, a breaker
//! per `provider/model`, a first-token timeout per attempt — and falls back to the next
//! target when a provider fails or its breaker is open. Once a stream has sent its first
//! token there is no retry and no fallback: a failure ends the stream with an error event
//! and the partial answer stays as sent. Every call is accounted ([`crate::usage`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_proto::agentmesh::common::v1::{ExternalServiceType, Usage};
use agentmesh_proto::agentmesh::llm::v1::{
    ChatRequest, ChatResponse, ContentDelta, FinishReason, StreamChatResponse, StreamFinish, stream_chat_response,
};
use agentmesh_resilience::{Outcome, Preset, Resilience, ResilienceError};
use agentmesh_runtime::config::Secret;
use agentmesh_runtime::{ApiError, Dependency, DependencyHealth, ErrorCode};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::assemble::Assembler;
use crate::catalog::Catalog;
use crate::keys::Keys;
use crate::limits::{Admission, Limits, estimate_tokens};
use crate::provider::{Completion, Delta, DeltaStream, ProviderError, ProviderRequest, merge_usage};
use crate::usage::{Attribution, CallRecord, FALLBACKS_COUNTER, UsageRecorder};
use crate::{catalog::Target, rules};

/// Timeouts and defaults of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `max_tokens` sent when a request sets none.
    pub default_max_tokens: u32,
    /// Longest wait for a stream's first token, per attempt.
    pub first_token_timeout: Duration,
    /// Longest a whole stream may last.
    pub stream_timeout: Duration,
    /// Resilience of every `provider/model` target.
    pub preset: Preset,
}

/// The proxy. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Proxy {
    catalog: Catalog,
    keys: Keys,
    limits: Limits,
    usage: UsageRecorder,
    policies: Policies,
    options: ProxyOptions,
}

/// How one target failed, and whether the next one may be tried.
struct Failure {
    error: ApiError,
    /// False for the caller's own mistakes, which every target would refuse alike.
    falls_back: bool,
}

impl Proxy {
    /// A proxy over `catalog`'s providers.
    pub fn new(catalog: Catalog, keys: Keys, limits: Limits, usage: UsageRecorder, options: ProxyOptions) -> Self {
        let policies = Policies { preset: options.preset.clone(), by_target: Mutex::default(), health: None };
        Self { catalog, keys, limits, usage, policies, options }
    }

    /// Reports every target's breaker in `health` (as `<provider>/<model>`), from first use.
    #[must_use]
    pub fn reporting_to(mut self, health: DependencyHealth) -> Self {
        self.policies.health = Some(health);
        self
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The providers' keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The breaker state of `target` (`provider/model`), for tests and health output.
    pub fn policy(&self, target: &str) -> Resilience {
        self.policies.get(target)
    }

    fn max_tokens(&self, request: &ChatRequest) -> u32 {
        request
            .max_tokens
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| *m > 0)
            .unwrap_or(self.options.default_max_tokens)
    }

    /// Runs one unary completion through the chain.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, ApiError> {
        rules::check(&request)?;
        let chain = self.catalog.chain(&request.model, &request.fallback_models)?;
        let mut journey = Journey::start(chain, request.metadata.clone(), false);
        let max_tokens = self.max_tokens(&request);
        let estimate = estimate_tokens(&request, max_tokens);
        let mut last = None;
        for target in journey.chain.clone() {
            match self.chat_once(&target, &request, max_tokens, estimate).await {
                Ok(completion) => {
                    let mut usage = completion.usage.unwrap_or_default();
                    usage.cost_usd = self.usage.cost(&target.full_name, &usage);
                    journey.record(&self.usage, &target, usage, None, "ok");
                    return Ok(ChatResponse {
                        id: completion.id,
                        model: target.full_name.clone(),
                        provider: target.provider.name().to_owned(),
                        message: Some(completion.message),
                        finish_reason: completion.finish.reason as i32,
                        usage: Some(usage),
                        provider_finish_reason: completion.finish.raw,
                        fallbacks_tried: journey.tried,
                    });
                }
                Err(failure) => last = Some(journey.failed(&self.usage, &target, failure)?),
            }
        }
        Err(last.unwrap_or_else(ApiError::internal))
    }

    /// One target of a unary call.
    async fn chat_once(
        &self,
        target: &Target,
        request: &ChatRequest,
        max_tokens: u32,
        estimate: u32,
    ) -> Result<Completion, Failure> {
        let admission = self.admit(target, estimate).await?;
        let policy = self.policies.get(&target.full_name);
        let result = self
            .with_key(target, &policy, |key| async move {
                let call = ProviderRequest { model: &target.model, request, max_tokens, key: key.as_ref() };
                target.provider.chat(call).await
            })
            .await;
        let used = result.as_ref().ok().and_then(|c| c.usage.as_ref()).map_or(0, total_tokens);
        self.limits.settle(&admission, used).await;
        result.map_err(|error| failure(target, error))
    }

    /// Starts one streamed completion through the chain: returns once a target has sent its
    /// first token (or every target failed), then forwards the rest from a task.
    pub async fn stream(
        self: &Arc<Self>,
        request: ChatRequest,
    ) -> Result<mpsc::Receiver<StreamChatResponse>, ApiError> {
        rules::check(&request)?;
        let chain = self.catalog.chain(&request.model, &request.fallback_models)?;
        let mut journey = Journey::start(chain, request.metadata.clone(), true);
        let max_tokens = self.max_tokens(&request);
        let estimate = estimate_tokens(&request, max_tokens);
        let mut last = None;
        for target in journey.chain.clone() {
            match self.stream_once(&target, &request, max_tokens, estimate).await {
                Ok((admission, buffered, rest)) => {
                    let (sender, receiver) = mpsc::channel(64);
                    let first_token = journey.started.elapsed();
                    let forward = Forward { proxy: self.clone(), target, journey, admission, first_token, sender };
                    let context = agentmesh_runtime::RequestContext::current().unwrap_or_default();
                    tokio::spawn(context.scope(forward.run(buffered, rest)));
                    return Ok(receiver);
                }
                Err(failure) => last = Some(journey.failed(&self.usage, &target, failure)?),
            }
        }
        Err(last.unwrap_or_else(ApiError::internal))
    }

    /// One target of a stream, up to its first token: the deltas before it and the rest.
    async fn stream_once(
        &self,
        target: &Target,
        request: &ChatRequest,
        max_tokens: u32,
        estimate: u32,
    ) -> Result<(Admission, Vec<Delta>, DeltaStream), Failure> {
        let admission = self.admit(target, estimate).await?;
        let policy = self.policies.get(&target.full_name);
        let first_token_timeout = self.options.first_token_timeout;
        let result = self
            .with_key(target, &policy, |key| async move {
                let call = ProviderRequest { model: &target.model, request, max_tokens, key: key.as_ref() };
                let first = async {
                    let mut stream = target.provider.stream(call).await?;
                    let mut buffered = Vec::new();
                    loop {
                        match stream.next().await {
                            Some(Ok(delta)) => {
                                let content = matches!(delta, Delta::Text(_) | Delta::ToolCall(_) | Delta::Finish(_));
                                buffered.push(delta);
                                if content {
                                    return Ok((buffered, stream));
                                }
                            }
                            Some(Err(error)) => return Err(error),
                            None => return Err(ProviderError::Truncated),
                        }
                    }
                };
                tokio::time::timeout(first_token_timeout, first)
                    .await
                    .unwrap_or(Err(ProviderError::Timeout(first_token_timeout)))
            })
            .await;
        match result {
            Ok((buffered, rest)) => Ok((admission, buffered, rest)),
            Err(error) => {
                self.limits.settle(&admission, 0).await;
                Err(failure(target, error))
            }
        }
    }

    async fn admit(&self, target: &Target, estimate: u32) -> Result<Admission, Failure> {
        self.limits.admit(target.provider.name(), estimate).await.map_err(|error| Failure {
            // A budget another target does not share: the next one may answer.
            falls_back: error.code == ErrorCode::RateLimit,
            error,
        })
    }

    /// Calls `op` with the provider's key under `policy`; a 401 with a key that may have
    /// been rotated is tried once more with a fresh read of the key.
    async fn with_key<T, F, Fut>(
        &self,
        target: &Target,
        policy: &Resilience,
        op: F,
    ) -> Result<T, ResilienceError<ProviderError>>
    where
        F: Fn(Option<Secret>) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let classify = |result: &Result<T, ProviderError>| match result {
            Ok(_) => Outcome::Success,
            Err(error) => error.outcome(),
        };
        let key = self.keys.key_for(target.provider.as_ref()).await.map_err(ResilienceError::Inner)?;
        let result = policy.call(&classify, || op(key.clone())).await;
        let refused = matches!(&result, Err(ResilienceError::Inner(ProviderError::Status { status: 401, .. })));
        if refused && self.keys.invalidate(target.provider.as_ref()) {
            let fresh = self.keys.key_for(target.provider.as_ref()).await.map_err(ResilienceError::Inner)?;
            if fresh.as_ref().map(Secret::expose) != key.as_ref().map(Secret::expose) {
                tracing::info!(
                    provider = target.provider.name(),
                    "provider key rotated; calling again with the new key"
                );
                return policy.call(&classify, || op(fresh.clone())).await;
            }
        }
        result
    }
}

/// One request on its way through its chain: what was tried, since when, for whom.
struct Journey {
    chain: Vec<Target>,
    tried: Vec<String>,
    started: Instant,
    attribution: Attribution,
    metadata: Option<prost_types::Struct>,
    streamed: bool,
}

impl Journey {
    fn start(chain: Vec<Target>, metadata: Option<prost_types::Struct>, streamed: bool) -> Self {
        let attribution = Attribution::current();
        Self { chain, tried: Vec::new(), started: Instant::now(), attribution, metadata, streamed }
    }

    /// Accounts `target`'s failure; the error to keep when the chain goes on, or to return
    /// at once when it stops.
    fn failed(&mut self, recorder: &UsageRecorder, target: &Target, failure: Failure) -> Result<ApiError, ApiError> {
        self.record(recorder, target, Usage::default(), None, failure.error.code.as_str());
        if !failure.falls_back {
            return Err(failure.error);
        }
        self.tried.push(target.full_name.clone());
        Ok(failure.error)
    }

    /// Accounts one call of `target` that ended with `outcome`.
    fn record(
        &self,
        recorder: &UsageRecorder,
        target: &Target,
        usage: Usage,
        first_token: Option<Duration>,
        outcome: &str,
    ) {
        let requested = &self.chain[0].full_name;
        let fell_back = target.full_name != *requested;
        if fell_back && outcome == "ok" {
            metrics::counter!(FALLBACKS_COUNTER, "from" => requested.clone(), "to" => target.full_name.clone())
                .increment(1);
        }
        recorder.record(CallRecord {
            provider: target.provider.name().to_owned(),
            model: target.full_name.clone(),
            requested_model: fell_back.then(|| requested.clone()),
            usage,
            latency: self.started.elapsed(),
            first_token,
            streamed: self.streamed,
            outcome: outcome.to_owned(),
            attribution: self.attribution.clone(),
            metadata: self.metadata.clone(),
        });
    }
}

fn total_tokens(usage: &Usage) -> u64 {
    u64::try_from(usage.prompt_tokens.saturating_add(usage.completion_tokens)).unwrap_or(0)
}

/// The rest of a stream after its first token, forwarded to the caller.
struct Forward {
    proxy: Arc<Proxy>,
    target: Target,
    journey: Journey,
    admission: Admission,
    first_token: Duration,
    sender: mpsc::Sender<StreamChatResponse>,
}

impl Forward {
    fn message(&self, id: &str, event: stream_chat_response::Event) -> StreamChatResponse {
        StreamChatResponse {
            id: id.to_owned(),
            model: self.target.full_name.clone(),
            provider: self.target.provider.name().to_owned(),
            event: Some(event),
        }
    }

    /// Sends `event`; false when the caller has gone.
    async fn send(&self, id: &str, event: stream_chat_response::Event) -> bool {
        self.sender.send(self.message(id, event)).await.is_ok()
    }

    async fn run(self, buffered: Vec<Delta>, rest: DeltaStream) {
        let deadline = self.journey.started + self.proxy.options.stream_timeout;
        let mut deltas = futures::stream::iter(buffered.into_iter().map(Ok)).chain(rest);
        let mut id = format!("llm-{}", uuid::Uuid::new_v4().simple());
        let mut assembler = Assembler::default();
        let mut usage: Option<Usage> = None;
        let mut ending: Result<crate::provider::Finish, ProviderError> = Err(ProviderError::Truncated);
        loop {
            let next = match tokio::time::timeout_at(deadline, deltas.next()).await {
                Ok(next) => next,
                Err(_) => {
                    ending = Err(ProviderError::Timeout(self.proxy.options.stream_timeout));
                    break;
                }
            };
            let event = match next {
                None => break,
                Some(Err(error)) => {
                    ending = Err(error);
                    break;
                }
                Some(Ok(Delta::Id(provider_id))) => {
                    id = provider_id;
                    continue;
                }
                Some(Ok(Delta::Usage(reported))) => {
                    merge_usage(usage.get_or_insert_with(Usage::default), &reported);
                    continue;
                }
                Some(Ok(Delta::Finish(finish))) => {
                    ending = Ok(finish);
                    break;
                }
                Some(Ok(Delta::Text(text))) => {
                    assembler.text(&text);
                    stream_chat_response::Event::Content(ContentDelta { text })
                }
                Some(Ok(Delta::ToolCall(delta))) => {
                    assembler.tool_call(&delta);
                    stream_chat_response::Event::ToolCall(delta)
                }
            };
            if !self.send(&id, event).await {
                ending = Err(ProviderError::Transport("the caller went away".to_owned()));
                break;
            }
        }
        drop(deltas);
        let mut usage = usage.unwrap_or_default();
        usage.cost_usd = self.proxy.usage.cost(&self.target.full_name, &usage);
        self.proxy.limits.settle(&self.admission, total_tokens(&usage)).await;
        let (finish, outcome) = match ending {
            Ok(finish) => {
                let finish = StreamFinish {
                    finish_reason: finish.reason as i32,
                    provider_finish_reason: finish.raw,
                    message: Some(assembler.finish()),
                    error: None,
                    fallbacks_tried: self.journey.tried.clone(),
                };
                (finish, "ok".to_owned())
            }
            Err(error) => {
                let policy = self.proxy.policies.get(&self.target.full_name);
                if let Ok(permit) = policy.breaker().try_acquire() {
                    permit.record(error.outcome());
                }
                let api_error = failure(&self.target, ResilienceError::Inner(error)).error;
                let outcome = api_error.code.as_str().to_owned();
                let finish = StreamFinish {
                    finish_reason: FinishReason::Error as i32,
                    provider_finish_reason: String::new(),
                    message: Some(assembler.finish()),
                    error: Some(api_error.to_detail()),
                    fallbacks_tried: self.journey.tried.clone(),
                };
                (finish, outcome)
            }
        };
        if usage != Usage::default() {
            self.send(&id, stream_chat_response::Event::Usage(usage)).await;
        }
        self.send(&id, stream_chat_response::Event::Finish(finish)).await;
        self.journey.record(&self.proxy.usage, &self.target, usage, Some(self.first_token), &outcome);
    }
}

/// The resilience policy of every `provider/model` target, made on first use.
struct Policies {
    preset: Preset,
    by_target: Mutex<HashMap<String, Resilience>>,
    health: Option<DependencyHealth>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies").finish_non_exhaustive()
    }
}

impl Policies {
    fn get(&self, target: &str) -> Resilience {
        let mut by_target = self.by_target.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(policy) = by_target.get(target) {
            return policy.clone();
        }
        let policy = Resilience::new(target, &self.preset);
        if let Some(health) = &self.health {
            health.register(Dependency::new(target, ExternalServiceType::LlmProvider).with_resilience(&policy));
        }
        by_target.insert(target.to_owned(), policy.clone());
        policy
    }
}

/// What a failed target means for the caller: the error it gets, and whether the chain
/// goes on. Messages name the provider and never carry a key.
fn failure(target: &Target, error: ResilienceError<ProviderError>) -> Failure {
    let provider = target.provider.name();
    let model = &target.full_name;
    let external = |retryable: bool, message: String| {
        let mut error = ApiError::external_service(provider, "llm_provider", retryable);
        error.message = message;
        error.with_detail("model", model.as_str())
    };
    let (error, falls_back) = match error {
        ResilienceError::CircuitOpen { retry_after, .. } => {
            (ApiError::circuit_open(model, retry_after).with_detail("provider", provider), true)
        }
        ResilienceError::Timeout { after } => (ApiError::timeout(&format!("LLM call to {model}"), after), true),
        ResilienceError::BulkheadFull { .. } => (
            external(true, format!("too many calls in flight to {model}")).with_retry_after(Duration::from_secs(1)),
            true,
        ),
        ResilienceError::Inner(error) => match error {
            ProviderError::Status { status: 429, retry_after, message } => {
                let mut error =
                    ApiError::new(ErrorCode::RateLimit, format!("{provider} rate-limited the call: {message}"))
                        .with_detail("provider", provider)
                        .with_detail("model", model.as_str());
                error.retry_after = retry_after;
                (error, true)
            }
            ProviderError::Status { status: 401 | 403, .. } => {
                (external(false, format!("{provider} refused the configured credentials")), true)
            }
            ProviderError::Status { status: 404, message, .. } => {
                (external(false, format!("{provider} does not know model {model}: {message}")), true)
            }
            ProviderError::Status { status, message, .. } if (400..500).contains(&status) => (
                ApiError::new(ErrorCode::Validation, format!("{provider} rejected the request: {message}"))
                    .with_detail("provider", provider)
                    .with_detail("provider_status", status),
                false,
            ),
            ProviderError::Status { status, message, .. } => (
                external(true, format!("{provider} failed (HTTP {status}): {message}"))
                    .with_detail("provider_status", status),
                true,
            ),
            ProviderError::Timeout(after) => (ApiError::timeout(&format!("LLM call to {model}"), after), true),
            error @ (ProviderError::Transport(_) | ProviderError::Malformed(_) | ProviderError::Truncated) => {
                (external(true, format!("{provider}: {error}")), true)
            }
            ProviderError::MissingKey { secret } => {
                (external(false, format!("no API key is configured for {provider} (secret {secret})")), true)
            }
            ProviderError::Unsupported(message) => {
                (ApiError::new(ErrorCode::Validation, format!("{model} cannot take this request: {message}")), true)
            }
        },
    };
    Failure { error, falls_back }
}
