//! Retry, circuit breaker, bulkhead and timeout settings for each class of dependency
//! (`RETRY_<CLASS>_*`, `CIRCUIT_<CLASS>_*`, `BULKHEAD_<CLASS>_*`, `TIMEOUT_<CLASS>`), on top
//! of `agentmesh-resilience`'s presets, which hold the seed's numbers.

use std::time::Duration;

use agentmesh_resilience::{BreakerConfig, Preset, RetryPolicy};

use super::features::FeatureFlags;
use super::vars::Vars;

/// Retry, breaker, bulkhead and timeout settings for each class of dependency.
#[derive(Debug, Clone)]
pub struct ResilienceSettings {
    /// LLM providers (`RETRY_LLM_*`, `CIRCUIT_LLM_*`).
    pub llm: Preset,
    /// PostgreSQL and Redis (`RETRY_DB_*`, `CIRCUIT_DB_*`).
    pub database: Preset,
    /// MCP servers (`RETRY_MCP_*`, `CIRCUIT_MCP_*`).
    pub mcp: Preset,
    /// Secret stores (`RETRY_SECRET_*`, `CIRCUIT_SECRET_*`).
    pub secret: Preset,
    /// Service-to-service gRPC (`RETRY_INTERNAL_*`, `CIRCUIT_INTERNAL_*`).
    pub internal: Preset,
}

impl ResilienceSettings {
    /// Reads every class, then applies `FEATURE_ENABLE_RETRIES` and
    /// `FEATURE_ENABLE_CIRCUIT_BREAKERS`.
    pub(super) fn read(v: &mut Vars, features: &FeatureFlags) -> Self {
        let mut settings = ResilienceSettings {
            llm: read_preset(v, "LLM", Preset::llm()),
            database: read_preset(v, "DB", Preset::database()),
            mcp: read_preset(v, "MCP", Preset::mcp()),
            secret: read_preset(v, "SECRET", Preset::secret()),
            internal: read_preset(v, "INTERNAL", Preset::internal()),
        };
        settings.apply_feature_flags(features);
        settings
    }

    /// `FEATURE_ENABLE_RETRIES=false` leaves one attempt per call and
    /// `FEATURE_ENABLE_CIRCUIT_BREAKERS=false` makes breakers never open, for every client.
    fn apply_feature_flags(&mut self, features: &FeatureFlags) {
        for preset in [&mut self.llm, &mut self.database, &mut self.mcp, &mut self.secret, &mut self.internal] {
            if !features.enable_retries {
                preset.retry.max_attempts = 1;
            }
            if !features.enable_circuit_breakers {
                preset.breaker.failure_threshold = u32::MAX;
                preset.breaker.failure_rate = None;
            }
        }
    }
}

/// Overlays `RETRY_<CLASS>_*`, `CIRCUIT_<CLASS>_*`, `BULKHEAD_<CLASS>_*` and
/// `TIMEOUT_<CLASS>` on a preset's defaults.
fn read_preset(v: &mut Vars, class: &str, defaults: Preset) -> Preset {
    let retry = &defaults.retry;
    let max_attempts: u32 = v.get(&format!("RETRY_{class}_MAX_ATTEMPTS"), retry.max_attempts);
    if max_attempts == 0 {
        v.issue(&format!("RETRY_{class}_MAX_ATTEMPTS"), "must be at least 1 (1 means no retries)");
    }
    let multiplier: f64 = v.get(&format!("RETRY_{class}_MULTIPLIER"), retry.multiplier);
    if multiplier < 1.0 {
        v.issue(&format!("RETRY_{class}_MULTIPLIER"), "must be at least 1.0");
    }
    let retry = RetryPolicy {
        max_attempts: max_attempts.max(1),
        base_delay: v.get(&format!("RETRY_{class}_BASE_DELAY"), retry.base_delay),
        max_delay: v.get(&format!("RETRY_{class}_MAX_DELAY"), retry.max_delay),
        multiplier: multiplier.max(1.0),
        jitter: v.get(&format!("RETRY_{class}_JITTER"), retry.jitter),
    };
    let threshold: u32 = v.get(&format!("CIRCUIT_{class}_FAILURE_THRESHOLD"), defaults.breaker.failure_threshold);
    if threshold == 0 {
        v.issue(&format!("CIRCUIT_{class}_FAILURE_THRESHOLD"), "must be at least 1");
    }
    let breaker = BreakerConfig {
        failure_threshold: threshold.max(1),
        recovery_timeout: v.get(&format!("CIRCUIT_{class}_RECOVERY_TIMEOUT"), defaults.breaker.recovery_timeout),
        ..defaults.breaker
    };
    let max_concurrency: usize = v.get(&format!("BULKHEAD_{class}_MAX_CONCURRENCY"), defaults.max_concurrency);
    if max_concurrency == 0 {
        v.issue(&format!("BULKHEAD_{class}_MAX_CONCURRENCY"), "must be at least 1");
    }
    let timeout: Duration = v.get(&format!("TIMEOUT_{class}"), defaults.timeout);
    if timeout.is_zero() {
        v.issue(&format!("TIMEOUT_{class}"), "must be positive");
    }
    Preset {
        retry,
        breaker,
        timeout: if timeout.is_zero() { defaults.timeout } else { timeout },
        max_concurrency: max_concurrency.max(1),
        max_queue_wait: v.get(&format!("BULKHEAD_{class}_QUEUE_WAIT"), defaults.max_queue_wait),
        ..defaults
    }
}
