//! Which limits a request must pass (seed `RateLimitSettings`, ARCHITECTURE §8).
//!
//! Every request passes its caller's **tier** limit — `RATE_LIMIT_API_DEFAULT_LIMIT` (100),
//! `…_AUTHENTICATED_LIMIT` (1,000) or `…_PREMIUM_LIMIT` (5,000) per minute — and, when its
//! route names a `rate_limit_group` (`MethodRules` in `agentmesh/common/v1/options.proto`), that
//! **group**'s limit: `create_session` (`RATE_LIMIT_CREATE_SESSION_LIMIT`, 10/min) or
//! `execute_agent` (`RATE_LIMIT_EXECUTE_AGENT_LIMIT`, 5/min). Unknown groups add nothing.
//!
//! Keys: `tier:<subject>` and `group:<group>:<subject>`, where the subject is
//! `user:<tenant>:<user>` for an authenticated principal (`%` and `:` escaped, so no two
//! principals share a key) and `ip:<address>` for anonymous callers at the default tier.
//! IPv4-mapped IPv6 addresses count as their IPv4 address, and other IPv6 addresses by
//! their /64 prefix, the smallest block a single host is normally given (a host can use
//! any of its 2^64 addresses, so per-address keys would not limit it at all).
//!
//! [`RateLimitPolicy::enforce`] checks the group first and stops at the first denial, so a
//! refused request uses up no tier quota. It returns the tightest decision (the denial, or
//! the allowed decision with the fewest remaining requests), so the headers describe the
//! limit the caller will hit first. With `FEATURE_ENABLE_RATE_LIMITING=false` nothing is
//! checked and every request is allowed with `limit` = the tier limit.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use agentmesh_runtime::Config;
use agentmesh_runtime::auth::{Principal, Tier};
use agentmesh_runtime::config::RateLimitConfig;

use super::{DECISIONS_COUNTER, Decision, Limit, RateLimitError, RateLimiter};

/// The window of every configured limit: the seed's limits are per minute.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The route group of session creation.
pub const CREATE_SESSION_GROUP: &str = "create_session";

/// The route group of agent execution.
pub const EXECUTE_AGENT_GROUP: &str = "execute_agent";

/// What a check limits, the `scope` label of the decisions metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The caller's tier limit.
    Tier,
    /// A route group's limit.
    Group,
}

impl Scope {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tier => "tier",
            Self::Group => "group",
        }
    }
}

/// Maps requests to the rate limits they must pass.
#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    config: RateLimitConfig,
    enabled: bool,
}

impl RateLimitPolicy {
    /// A policy from `RATE_LIMIT_*` settings; `enabled` is `FEATURE_ENABLE_RATE_LIMITING`.
    pub fn new(config: RateLimitConfig, enabled: bool) -> Self {
        Self { config, enabled }
    }

    /// A policy from the service configuration.
    pub fn from_config(config: &Config) -> Self {
        Self::new(config.rate_limit.clone(), config.features.enable_rate_limiting)
    }

    /// Whether limits are enforced at all.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The tier limit of `principal`; anonymous callers get the default tier's.
    pub fn tier_limit(&self, principal: Option<&Principal>) -> Limit {
        let requests = match principal.map_or(Tier::Default, |p| p.tier) {
            Tier::Default => self.config.api_default_limit,
            Tier::Authenticated => self.config.api_authenticated_limit,
            Tier::Premium => self.config.api_premium_limit,
        };
        Limit::new(requests, WINDOW)
    }

    /// The limit of a route group; `None` for groups without one.
    pub fn group_limit(&self, group: &str) -> Option<Limit> {
        let requests = match group {
            CREATE_SESSION_GROUP => self.config.create_session_limit,
            EXECUTE_AGENT_GROUP => self.config.execute_agent_limit,
            _ => return None,
        };
        Some(Limit::new(requests, WINDOW))
    }

    /// The checks a request must pass, `(key, limit)`, in the order they are enforced (group
    /// first); empty when rate limiting is disabled.
    pub fn checks(
        &self,
        principal: Option<&Principal>,
        client_ip: IpAddr,
        group: Option<&str>,
    ) -> Vec<(String, Limit)> {
        self.scoped_checks(principal, client_ip, group).into_iter().map(|(_, key, limit)| (key, limit)).collect()
    }

    /// Runs the request's checks against `limiter` and returns the tightest decision: the
    /// first denial (later checks are skipped, so a refused request spends no quota there),
    /// else the allowed decision with the fewest remaining requests. Records
    /// `agentmesh_ratelimit_decisions_total` per check.
    pub async fn enforce(
        &self,
        limiter: &dyn RateLimiter,
        principal: Option<&Principal>,
        client_ip: IpAddr,
        group: Option<&str>,
    ) -> Result<Decision, RateLimitError> {
        let tier_limit = self.tier_limit(principal);
        let mut tightest: Option<Decision> = None;
        for (scope, key, limit) in self.scoped_checks(principal, client_ip, group) {
            let decision = limiter.check(&key, limit).await?;
            let result = if decision.allowed { "allowed" } else { "limited" };
            metrics::counter!(DECISIONS_COUNTER, "result" => result, "scope" => scope.as_str()).increment(1);
            if !decision.allowed {
                return Ok(decision);
            }
            if tightest.is_none_or(|current| decision.is_tighter_than(&current)) {
                tightest = Some(decision);
            }
        }
        Ok(tightest.unwrap_or_else(|| Decision::unrestricted(tier_limit.quota)))
    }

    fn scoped_checks(
        &self,
        principal: Option<&Principal>,
        client_ip: IpAddr,
        group: Option<&str>,
    ) -> Vec<(Scope, String, Limit)> {
        if !self.enabled {
            return Vec::new();
        }
        let subject = subject(principal, client_ip);
        let mut checks = Vec::with_capacity(2);
        if let Some((group, limit)) = group.and_then(|group| Some((group, self.group_limit(group)?))) {
            checks.push((Scope::Group, format!("group:{}:{subject}", escape(group)), limit));
        }
        checks.push((Scope::Tier, format!("tier:{subject}"), self.tier_limit(principal)));
        checks
    }
}

/// Who the limits count against.
fn subject(principal: Option<&Principal>, client_ip: IpAddr) -> String {
    match principal {
        Some(principal) => format!("user:{}:{}", escape(&principal.tenant_id), escape(&principal.user_id)),
        None => format!("ip:{}", ip_subject(client_ip)),
    }
}

/// The address an anonymous caller is counted by: IPv4 as is (also when IPv4-mapped),
/// IPv6 by its /64.
fn ip_subject(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("{}/64", Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// Escapes the key separator (and the escape character) in one key component.
fn escape(component: &str) -> String {
    component.replace('%', "%25").replace(':', "%3A")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use agentmesh_runtime::config::{DEFAULT_RATE_LIMIT_REDIS_PREFIX, DEFAULT_RATE_LIMIT_REDIS_TIMEOUT};

    use super::*;
    use crate::ratelimit::MemoryRateLimiter;

    fn config() -> RateLimitConfig {
        RateLimitConfig {
            api_default_limit: 100,
            api_authenticated_limit: 1_000,
            api_premium_limit: 5_000,
            create_session_limit: 10,
            execute_agent_limit: 5,
            llm_requests_per_minute: 60,
            llm_tokens_per_minute: 50_000,
            websocket_connections_per_ip: 10,
            websocket_messages_per_minute: 1_000,
            redis_prefix: DEFAULT_RATE_LIMIT_REDIS_PREFIX.to_owned(),
            redis_timeout: DEFAULT_RATE_LIMIT_REDIS_TIMEOUT,
        }
    }

    fn principal(tenant: &str, user: &str, tier: Tier) -> Principal {
        Principal { user_id: user.to_owned(), tenant_id: tenant.to_owned(), tier, scopes: Vec::new() }
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    #[test]
    fn tier_limits_follow_the_seed() {
        let policy = RateLimitPolicy::new(config(), true);
        assert_eq!(policy.tier_limit(None), Limit::per_minute(100));
        for (tier, requests) in [(Tier::Default, 100), (Tier::Authenticated, 1_000), (Tier::Premium, 5_000)] {
            assert_eq!(policy.tier_limit(Some(&principal("t", "u", tier))), Limit::per_minute(requests));
        }
        assert_eq!(policy.group_limit(CREATE_SESSION_GROUP), Some(Limit::per_minute(10)));
        assert_eq!(policy.group_limit(EXECUTE_AGENT_GROUP), Some(Limit::per_minute(5)));
        assert_eq!(policy.group_limit("list_sessions"), None);
    }

    #[test]
    fn checks_key_by_principal_or_ip_and_add_known_groups() {
        let policy = RateLimitPolicy::new(config(), true);
        let user = principal("acme", "alice", Tier::Premium);
        assert_eq!(
            policy.checks(Some(&user), IP, None),
            vec![("tier:user:acme:alice".to_owned(), Limit::per_minute(5_000))]
        );
        assert_eq!(
            policy.checks(None, IP, Some(EXECUTE_AGENT_GROUP)),
            vec![
                ("group:execute_agent:ip:203.0.113.7".to_owned(), Limit::per_minute(5)),
                ("tier:ip:203.0.113.7".to_owned(), Limit::per_minute(100)),
            ]
        );
        assert_eq!(
            policy.checks(Some(&user), IP, Some(CREATE_SESSION_GROUP))[0],
            ("group:create_session:user:acme:alice".to_owned(), Limit::per_minute(10))
        );
        assert_eq!(
            policy.checks(None, IP, Some("unknown")),
            vec![("tier:ip:203.0.113.7".to_owned(), Limit::per_minute(100))]
        );
    }

    #[test]
    fn principals_never_share_keys() {
        let policy = RateLimitPolicy::new(config(), true);
        let a = policy.checks(Some(&principal("a:b", "c", Tier::Default)), IP, None);
        let b = policy.checks(Some(&principal("a", "b:c", Tier::Default)), IP, None);
        assert_ne!(a, b);
        assert_eq!(a[0].0, "tier:user:a%3Ab:c");
        let c = policy.checks(Some(&principal("a%3Ab", "c", Tier::Default)), IP, None);
        assert_ne!(a, c);
    }

    #[test]
    fn ipv6_callers_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let policy = RateLimitPolicy::new(config(), true);
        let key = |ip: &str| policy.checks(None, ip.parse().unwrap(), None).remove(0).0;
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "tier:ip:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), key("2001:db8:1:2:aaaa::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:203.0.113.7"), "tier:ip:203.0.113.7");
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_checks_nothing_and_reports_the_tier_limit() {
        let policy = RateLimitPolicy::new(config(), false);
        let user = principal("t", "u", Tier::Authenticated);
        assert!(policy.checks(Some(&user), IP, Some(EXECUTE_AGENT_GROUP)).is_empty());
        let limiter = MemoryRateLimiter::new();
        for _ in 0..20 {
            let decision = policy.enforce(&limiter, Some(&user), IP, Some(EXECUTE_AGENT_GROUP)).await.unwrap();
            assert_eq!(decision, Decision::unrestricted(1_000));
        }
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn enforce_returns_the_tightest_decision() {
        let policy = RateLimitPolicy::new(config(), true);
        let limiter = MemoryRateLimiter::new();
        let user = principal("t", "u", Tier::Default);

        // Group 5/min is tighter than the tier's 100/min: its numbers go in the headers.
        for remaining in (0..5).rev() {
            let decision = policy.enforce(&limiter, Some(&user), IP, Some(EXECUTE_AGENT_GROUP)).await.unwrap();
            assert!(decision.allowed);
            assert_eq!((decision.limit, decision.remaining), (5, remaining));
        }
        let denied = policy.enforce(&limiter, Some(&user), IP, Some(EXECUTE_AGENT_GROUP)).await.unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.limit, 5);
        assert_eq!(denied.retry_after, Some(Duration::from_secs(12)));

        // The refused request cost no tier quota: 5 of 100 used.
        let plain = policy.enforce(&limiter, Some(&user), IP, None).await.unwrap();
        assert_eq!((plain.allowed, plain.limit, plain.remaining), (true, 100, 94));
        // Other groups and other callers are unaffected.
        let create = policy.enforce(&limiter, Some(&user), IP, Some(CREATE_SESSION_GROUP)).await.unwrap();
        assert_eq!((create.allowed, create.limit, create.remaining), (true, 10, 9));
        let anonymous = policy.enforce(&limiter, None, IP, Some(EXECUTE_AGENT_GROUP)).await.unwrap();
        assert_eq!((anonymous.allowed, anonymous.remaining), (true, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn enforce_reports_the_tier_when_it_is_the_tighter() {
        let mut small_tier = config();
        small_tier.api_default_limit = 3;
        let policy = RateLimitPolicy::new(small_tier, true);
        let limiter = MemoryRateLimiter::new();
        let first = policy.enforce(&limiter, None, IP, Some(CREATE_SESSION_GROUP)).await.unwrap();
        assert_eq!((first.limit, first.remaining), (3, 2));
        policy.enforce(&limiter, None, IP, None).await.unwrap();
        policy.enforce(&limiter, None, IP, None).await.unwrap();
        let denied = policy.enforce(&limiter, None, IP, Some(CREATE_SESSION_GROUP)).await.unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.limit, 3, "denied by the tier");
    }
}
