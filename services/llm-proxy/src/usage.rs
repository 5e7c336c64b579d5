//! What every call used and cost: the `agentmesh.llm.usage` event (for accounting and
//! quotas), the cost from the configured price table, and the Prometheus metrics SREs
//! watch (tokens, latency, time to first token, errors by provider and reason).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::{Event, Publisher};
use agentmesh_proto::agentmesh::common::v1::Usage;
use agentmesh_proto::agentmesh::events::v1::LlmUsage;
use agentmesh_runtime::RequestContext;
use prost::Message as _;

use crate::settings::Price;

/// CloudEvents `source` of the usage events.
const SOURCE: &str = "agentmesh/llm-proxy";

/// Counter of tokens, labels `provider`, `model`, `kind` (`prompt`, `completion`,
/// `cached_prompt`, `cache_creation`, `reasoning`).
pub const TOKENS_COUNTER: &str = "agentmesh_llm_tokens_total";
/// Histogram of whole-call latency in seconds, labels `provider`, `model`, `outcome`.
pub const LATENCY_HISTOGRAM: &str = "agentmesh_llm_request_duration_seconds";
/// Histogram of time to the first streamed delta in seconds, labels `provider`, `model`.
pub const FIRST_TOKEN_HISTOGRAM: &str = "agentmesh_llm_time_to_first_token_seconds";
/// Histogram of each priced call's cost in USD, labels `provider`, `model`: its `_sum` is
/// the money spent (`LLM_PRICES`).
pub const COST_HISTOGRAM: &str = "agentmesh_llm_cost_usd";
/// Counter of failed calls, labels `provider`, `model`, `reason` (an error code).
pub const ERRORS_COUNTER: &str = "agentmesh_llm_errors_total";
/// Counter of fallbacks, labels `from`, `to` (`provider/model`).
pub const FALLBACKS_COUNTER: &str = "agentmesh_llm_fallbacks_total";

/// Who a call is attributed to: from the signed principal, never from the request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// The user.
    pub user_id: String,
    /// The tenant; empty in single-tenant deployments.
    pub tenant_id: String,
    /// The run the principal was minted for.
    pub run_id: Option<String>,
}

impl Attribution {
    /// The attribution of the request being served.
    pub fn current() -> Self {
        let Some(context) = RequestContext::current() else { return Self::default() };
        let (user_id, tenant_id) = context.principal.map(|p| (p.user_id, p.tenant_id)).unwrap_or_default();
        Self { user_id, tenant_id, run_id: context.run }
    }
}

/// One finished call, as accounted.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// The provider that answered (or failed last).
    pub provider: String,
    /// `provider/model` that answered.
    pub model: String,
    /// `provider/model` asked for, when a fallback answered.
    pub requested_model: Option<String>,
    /// Tokens used (zero when the provider reported none).
    pub usage: Usage,
    /// The whole call.
    pub latency: Duration,
    /// Until the first delta, for streams.
    pub first_token: Option<Duration>,
    /// Whether it was streamed.
    pub streamed: bool,
    /// `ok`, or the error code it ended with.
    pub outcome: String,
    /// The caller.
    pub attribution: Attribution,
    /// The request's free-form metadata.
    pub metadata: Option<prost_types::Struct>,
}

/// Accounts calls: prices them, counts them in metrics and publishes usage events.
#[derive(Clone)]
pub struct UsageRecorder {
    publisher: Option<Arc<dyn Publisher>>,
    prices: Arc<BTreeMap<String, Price>>,
}

impl std::fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageRecorder").field("prices", &self.prices.len()).finish_non_exhaustive()
    }
}

impl UsageRecorder {
    /// A recorder publishing to `publisher` (none: metrics only) with `prices`.
    pub fn new(publisher: Option<Arc<dyn Publisher>>, prices: BTreeMap<String, Price>) -> Self {
        Self { publisher, prices: Arc::new(prices) }
    }

    /// The cost of `usage` on `model` (`provider/model`), when its price is configured.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        let price = self.prices.get(model)?;
        let cached = usage.cached_prompt_tokens.clamp(0, usage.prompt_tokens.max(0));
        #[allow(clippy::cast_precision_loss)]
        let dollars = (usage.prompt_tokens - cached) as f64 * price.prompt
            + cached as f64 * price.cached_prompt
            + usage.completion_tokens as f64 * price.completion;
        Some(dollars / 1_000_000.0)
    }

    /// Counts `record` in the metrics and publishes its usage event (in the background: the
    /// caller's answer does not wait for the bus).
    pub fn record(&self, record: CallRecord) {
        let labels = [("provider", record.provider.clone()), ("model", record.model.clone())];
        let usage = &record.usage;
        for (kind, count) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached_prompt", usage.cached_prompt_tokens),
            ("cache_creation", usage.cache_creation_tokens),
            ("reasoning", usage.reasoning_tokens),
        ] {
            if count > 0 {
                let mut labels = labels.to_vec();
                labels.push(("kind", kind.to_owned()));
                metrics::counter!(TOKENS_COUNTER, &labels).increment(u64::try_from(count).unwrap_or(0));
            }
        }
        let mut with_outcome = labels.to_vec();
        with_outcome.push(("outcome", record.outcome.clone()));
        metrics::histogram!(LATENCY_HISTOGRAM, &with_outcome).record(record.latency.as_secs_f64());
        if let Some(first) = record.first_token {
            metrics::histogram!(FIRST_TOKEN_HISTOGRAM, &labels).record(first.as_secs_f64());
        }
        // A histogram, so that its `_sum` is the money spent in USD (counters are integers).
        if let Some(cost) = usage.cost_usd {
            metrics::histogram!(COST_HISTOGRAM, &labels).record(cost);
        }
        if record.outcome != "ok" {
            let mut with_reason = labels.to_vec();
            with_reason.push(("reason", record.outcome.clone()));
            metrics::counter!(ERRORS_COUNTER, &with_reason).increment(1);
        }
        let Some(publisher) = self.publisher.clone() else { return };
        let event = usage_event(&record);
        tokio::spawn(async move {
            if let Err(error) = publisher.publish(event).await {
                metrics::counter!("agentmesh_events_publish_failures_total", "source" => SOURCE).increment(1);
                tracing::warn!(%error, "LLM usage event not published");
            }
        });
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The `agentmesh.llm.usage` event of `record`.
fn usage_event(record: &CallRecord) -> Event {
    let usage = &record.usage;
    let payload = LlmUsage {
        provider: record.provider.clone(),
        model: record.model.clone(),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.total_tokens,
        latency_ms: millis(record.latency),
        run_id: record.attribution.run_id.clone(),
        user_id: record.attribution.user_id.clone(),
        tenant_id: record.attribution.tenant_id.clone(),
        cost_usd: usage.cost_usd,
        cached_prompt_tokens: usage.cached_prompt_tokens,
        cache_creation_tokens: usage.cache_creation_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        time_to_first_token_ms: record.first_token.map(millis),
        streamed: record.streamed,
        outcome: record.outcome.clone(),
        requested_model: record.requested_model.clone(),
        metadata: record.metadata.clone(),
    };
    let essential = || {
        let mut builder = Event::builder("llm.usage", SOURCE, "agentmesh.llm.usage")
            .data_schema("agentmesh.events.v1.LlmUsage")
            .data(payload.encode_to_vec());
        if let Some(run) = &record.attribution.run_id {
            builder = builder.subject(run.clone());
        }
        builder
    };
    let mut builder = essential();
    if !record.attribution.tenant_id.is_empty() {
        builder = builder.tenant(record.attribution.tenant_id.clone());
    }
    if let Some(context) = RequestContext::current() {
        builder = builder.correlation_id(context.correlation_id);
        if let Some(actor) = context.actor {
            builder = builder.actor(actor.as_str());
        }
    }
    builder.build().or_else(|_| essential().build()).unwrap_or_else(|error| {
        tracing::warn!(%error, "usage event built without its run subject");
        Event::builder("llm.usage", SOURCE, "agentmesh.llm.usage")
            .data_schema("agentmesh.events.v1.LlmUsage")
            .data(payload.encode_to_vec())
            .build()
            .unwrap_or_else(|error| unreachable!("constant event attributes are valid: {error}"))
    })
}
