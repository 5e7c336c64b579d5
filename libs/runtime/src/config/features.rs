//! Feature flags (`FEATURE_*`). Each one switches something that exists today; flags of
//! the seed whose feature arrives with a later service (MCP hot reload, debug endpoints,
//! detailed metrics) are added with it, so setting one is never silently a no-op.

use super::vars::Vars;

/// Feature flags (`FEATURE_*`), all on by default.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)]
pub struct FeatureFlags {
    /// `FEATURE_ENABLE_CIRCUIT_BREAKERS`: false makes every client's breakers never open.
    pub enable_circuit_breakers: bool,
    /// `FEATURE_ENABLE_RETRIES`: false leaves every client one attempt per call.
    pub enable_retries: bool,
    /// `FEATURE_ENABLE_RATE_LIMITING`: false lets the gateway admit every request.
    pub enable_rate_limiting: bool,
    /// `FEATURE_ENABLE_WEBSOCKETS`: false removes the gateway's WebSocket endpoint.
    pub enable_websockets: bool,
    /// `FEATURE_ENABLE_STREAMING`: false makes the gateway refuse server-streaming RPCs
    /// (SSE and WebSocket subscriptions).
    pub enable_streaming: bool,
    /// `FEATURE_ENABLE_BULK_OPERATIONS`: false makes session-store refuse bulk creation
    /// and deletion.
    pub enable_bulk_operations: bool,
    /// `FEATURE_ENABLE_REQUEST_TRACING`: false turns the OTLP trace exporter off (see
    /// [`ObservabilityConfig::tracing_enabled`](super::ObservabilityConfig::tracing_enabled)).
    pub enable_request_tracing: bool,
    /// `FEATURE_ENABLE_FALLBACKS`: false turns every fallback off (today: llm-proxy's
    /// model chains).
    pub enable_fallbacks: bool,
    /// `FEATURE_ENABLE_PROVIDER_FALLBACK`: false makes llm-proxy try only the requested
    /// model.
    pub enable_provider_fallback: bool,
    /// `FEATURE_ENABLE_MULTIPLE_LLM_PROVIDERS`: false turns on only the provider of
    /// llm-proxy's default model.
    pub enable_multiple_llm_providers: bool,
}

impl FeatureFlags {
    pub(super) fn read(v: &mut Vars) -> Self {
        FeatureFlags {
            enable_circuit_breakers: v.get("FEATURE_ENABLE_CIRCUIT_BREAKERS", true),
            enable_retries: v.get("FEATURE_ENABLE_RETRIES", true),
            enable_rate_limiting: v.get("FEATURE_ENABLE_RATE_LIMITING", true),
            enable_websockets: v.get("FEATURE_ENABLE_WEBSOCKETS", true),
            enable_streaming: v.get("FEATURE_ENABLE_STREAMING", true),
            enable_bulk_operations: v.get("FEATURE_ENABLE_BULK_OPERATIONS", true),
            enable_request_tracing: v.get("FEATURE_ENABLE_REQUEST_TRACING", true),
            enable_fallbacks: v.get("FEATURE_ENABLE_FALLBACKS", true),
            enable_provider_fallback: v.get("FEATURE_ENABLE_PROVIDER_FALLBACK", true),
            enable_multiple_llm_providers: v.get("FEATURE_ENABLE_MULTIPLE_LLM_PROVIDERS", true),
        }
    }
}
