//! Rate limits (`RATE_LIMIT_*`): per-tier and per-endpoint budgets, LLM and WebSocket
//! limits, and where shared counters live in Redis.

use std::time::Duration;

use super::vars::Vars;

/// Rate limits (`RATE_LIMIT_*`), requests per minute unless named otherwise.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// `RATE_LIMIT_API_DEFAULT_LIMIT`: anonymous callers.
    pub api_default_limit: u32,
    /// `RATE_LIMIT_API_AUTHENTICATED_LIMIT`.
    pub api_authenticated_limit: u32,
    /// `RATE_LIMIT_API_PREMIUM_LIMIT`.
    pub api_premium_limit: u32,
    /// `RATE_LIMIT_CREATE_SESSION_LIMIT`: the seed's `10/minute` on session creation.
    pub create_session_limit: u32,
    /// `RATE_LIMIT_EXECUTE_AGENT_LIMIT`: the seed's `5/minute` on agent execution.
    pub execute_agent_limit: u32,
    /// `RATE_LIMIT_LLM_REQUESTS_PER_MINUTE`.
    pub llm_requests_per_minute: u32,
    /// `RATE_LIMIT_LLM_TOKENS_PER_MINUTE`.
    pub llm_tokens_per_minute: u32,
    /// `RATE_LIMIT_WEBSOCKET_CONNECTIONS_PER_IP`.
    pub websocket_connections_per_ip: u32,
    /// `RATE_LIMIT_WEBSOCKET_MESSAGES_PER_MINUTE`.
    pub websocket_messages_per_minute: u32,
    /// `RATE_LIMIT_REDIS_PREFIX`: prepended to every rate-limit key in Redis (default
    /// [`DEFAULT_RATE_LIMIT_REDIS_PREFIX`]); replicas enforcing one limit share it, and a
    /// distinct prefix keeps deployments (or tests) sharing one Redis apart.
    pub redis_prefix: String,
    /// `RATE_LIMIT_REDIS_TIMEOUT`: longest one rate-limit check waits for Redis before it
    /// fails open (default [`DEFAULT_RATE_LIMIT_REDIS_TIMEOUT`]).
    pub redis_timeout: Duration,
}

/// Default `RATE_LIMIT_REDIS_PREFIX`: the key prefix of production deployments.
pub const DEFAULT_RATE_LIMIT_REDIS_PREFIX: &str = "agentmesh:ratelimit:";

/// Default `RATE_LIMIT_REDIS_TIMEOUT`: short, because every request waits for the check.
pub const DEFAULT_RATE_LIMIT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

impl RateLimitConfig {
    pub(super) fn read(v: &mut Vars) -> Self {
        let config = RateLimitConfig {
            api_default_limit: v.get("RATE_LIMIT_API_DEFAULT_LIMIT", 100),
            api_authenticated_limit: v.get("RATE_LIMIT_API_AUTHENTICATED_LIMIT", 1000),
            api_premium_limit: v.get("RATE_LIMIT_API_PREMIUM_LIMIT", 5000),
            create_session_limit: v.get("RATE_LIMIT_CREATE_SESSION_LIMIT", 10),
            execute_agent_limit: v.get("RATE_LIMIT_EXECUTE_AGENT_LIMIT", 5),
            llm_requests_per_minute: v.get("RATE_LIMIT_LLM_REQUESTS_PER_MINUTE", 60),
            llm_tokens_per_minute: v.get("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", 50_000),
            websocket_connections_per_ip: v.get("RATE_LIMIT_WEBSOCKET_CONNECTIONS_PER_IP", 10),
            websocket_messages_per_minute: v.get("RATE_LIMIT_WEBSOCKET_MESSAGES_PER_MINUTE", 1000),
            redis_prefix: v.get("RATE_LIMIT_REDIS_PREFIX", DEFAULT_RATE_LIMIT_REDIS_PREFIX.to_owned()),
            redis_timeout: v.get("RATE_LIMIT_REDIS_TIMEOUT", DEFAULT_RATE_LIMIT_REDIS_TIMEOUT),
        };
        if config.redis_timeout.is_zero() {
            v.issue("RATE_LIMIT_REDIS_TIMEOUT", "must be positive (a zero timeout fails every check open)");
        }
        config
    }
}
