//! Where the gateway takes a caller's address from when proxies sit in front of it
//! (`SECURITY_TRUSTED_PROXY_HOPS`, `SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS`). Per-IP limits
//! count by this address; behind a proxy or an Istio sidecar the socket peer is the proxy,
//! so every client would share one bucket. Trusting a header is only safe when a proxy that
//! sets it is always in front, so the default trusts none. Kept apart from the other
//! `SECURITY_*` settings because only the gateway reads it.

use super::vars::Vars;

/// Largest accepted `SECURITY_TRUSTED_PROXY_HOPS`: deeper proxy chains do not occur.
pub const MAX_TRUSTED_PROXY_HOPS: u32 = 16;

/// Which proxy header, if any, names the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientAddressConfig {
    /// `SECURITY_TRUSTED_PROXY_HOPS`: how many trusted proxies append to
    /// `X-Forwarded-For` in front of the gateway; the caller is the entry that many places
    /// from the right. 0 (the default) ignores the header.
    pub trusted_proxy_hops: u32,
    /// `SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS`: take the caller from Envoy's
    /// `x-envoy-external-address` instead (default false).
    pub trust_envoy_external_address: bool,
}

impl ClientAddressConfig {
    /// Reads and validates the two settings.
    pub(super) fn read(v: &mut Vars) -> Self {
        let config = Self {
            trusted_proxy_hops: v.get("SECURITY_TRUSTED_PROXY_HOPS", 0),
            trust_envoy_external_address: v.get("SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS", false),
        };
        if config.trusted_proxy_hops > MAX_TRUSTED_PROXY_HOPS {
            v.issue("SECURITY_TRUSTED_PROXY_HOPS", format!("must be at most {MAX_TRUSTED_PROXY_HOPS}"));
        }
        if config.trusted_proxy_hops > 0 && config.trust_envoy_external_address {
            v.issue(
                "SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS",
                "set it or SECURITY_TRUSTED_PROXY_HOPS, not both: one header names the caller",
            );
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<ClientAddressConfig, ConfigError> {
        let env = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::load(None, env).map(|config| config.client_address)
    }

    fn issues(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        load(pairs).unwrap_err().issues.into_iter().map(|issue| (issue.variable, issue.message)).collect()
    }

    #[test]
    fn default_trusts_no_header() {
        assert_eq!(load(&[]).unwrap(), ClientAddressConfig::default());
        assert_eq!(load(&[]).unwrap().trusted_proxy_hops, 0);
    }

    #[test]
    fn hops_and_envoy_are_read() {
        assert_eq!(load(&[("SECURITY_TRUSTED_PROXY_HOPS", "2")]).unwrap().trusted_proxy_hops, 2);
        assert!(load(&[("SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS", "true")]).unwrap().trust_envoy_external_address);
    }

    #[test]
    fn bad_values_are_named() {
        let bad = issues(&[("SECURITY_TRUSTED_PROXY_HOPS", "-1"), ("SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS", "maybe")]);
        let variables: Vec<&str> = bad.iter().map(|(variable, _)| variable.as_str()).collect();
        assert_eq!(variables, ["SECURITY_TRUSTED_PROXY_HOPS", "SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS"]);
        assert_eq!(
            issues(&[("SECURITY_TRUSTED_PROXY_HOPS", "17")]),
            [("SECURITY_TRUSTED_PROXY_HOPS".to_owned(), "must be at most 16".to_owned())]
        );
        let both = issues(&[("SECURITY_TRUSTED_PROXY_HOPS", "1"), ("SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS", "true")]);
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].0, "SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS");
    }
}
