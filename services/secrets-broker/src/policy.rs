//! Who may read and who may rotate which secret: rules from configuration
//! (`SECRET_READ_POLICY`, `SECRET_ROTATE_POLICY`), checked against the caller's verified
//! identity (its actor token, ARCHITECTURE §8). Without rules, development and tests allow
//! every service this broker serves and production allows none, so a forgotten rule fails
//! closed where it matters.
//!
//! The rule syntax is `service=pattern,pattern;service=pattern`, where a pattern is a
//! secret name, a prefix ending in `*`, or `*` for all:
//!
//! ```
//! use agentmesh_secrets_broker::policy::AccessRules;
//!
//! let rules = AccessRules::parse("llm-proxy=openai-api-key,anthropic-*; mcp-broker=mcp-*").unwrap();
//! assert!(rules.allows("llm-proxy", "anthropic-api-key"));
//! assert!(!rules.allows("llm-proxy", "mcp-github-token"));
//! assert!(!rules.allows("agent-orchestrator", "openai-api-key"));
//! ```

use std::collections::BTreeMap;

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::auth::keys::service_named;

/// Secret-name patterns by calling service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    by_service: BTreeMap<String, Vec<Pattern>>,
}

/// One secret-name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Every name.
    Any,
    /// Names starting with this.
    Prefix(String),
    /// Exactly this name.
    Exact(String),
}

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
            Self::Exact(exact) => name == exact,
        }
    }
}

impl AccessRules {
    /// Parses `service=pattern,...;service=pattern,...`; the message says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_service: BTreeMap<String, Vec<Pattern>> = BTreeMap::new();
        for rule in text.split(';').map(str::trim).filter(|rule| !rule.is_empty()) {
            let Some((service, patterns)) = rule.split_once('=') else {
                return Err(format!("rule {rule:?} is not service=pattern,pattern"));
            };
            let service = service.trim();
            if service_named(service).is_none() {
                return Err(format!("{service:?} is not a service of the mesh"));
            }
            let entry = by_service.entry(service.to_owned()).or_default();
            for pattern in patterns.split(',').map(str::trim).filter(|pattern| !pattern.is_empty()) {
                entry.push(Self::pattern(pattern)?);
            }
        }
        Ok(Self { by_service })
    }

    fn pattern(text: &str) -> Result<Pattern, String> {
        let (stem, wildcard) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if !stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("pattern {text:?} may hold only letters, digits and '-', with one trailing '*'"));
        }
        Ok(match (stem.is_empty(), wildcard) {
            (true, true) => Pattern::Any,
            (false, true) => Pattern::Prefix(stem.to_owned()),
            (_, false) => Pattern::Exact(stem.to_owned()),
        })
    }

    /// Whether `service` may access secret `name`.
    pub fn allows(&self, service: &str, name: &str) -> bool {
        self.by_service.get(service).is_some_and(|patterns| patterns.iter().any(|pattern| pattern.matches(name)))
    }
}

/// The rules in force for one operation: configured ones, or the environment's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessPolicy {
    /// Every caller the broker serves may (development and tests without rules).
    AllowAll,
    /// As the rules say (none at all in production without rules).
    Rules(AccessRules),
}

impl AccessPolicy {
    /// `configured` rules, else allow-all outside production and deny-all in it.
    pub fn new(configured: Option<AccessRules>, production: bool) -> Self {
        match configured {
            Some(rules) => Self::Rules(rules),
            None if production => Self::Rules(AccessRules::default()),
            None => Self::AllowAll,
        }
    }

    /// Whether `caller` may access secret `name`. A call with no verified calling service
    /// is allowed only by [`AccessPolicy::AllowAll`].
    pub fn allows(&self, caller: Option<ServiceName>, name: &str) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Rules(rules) => caller.is_some_and(|caller| rules.allows(caller.as_str(), name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_exact_names_prefixes_and_everything() {
        let rules = AccessRules::parse("llm-proxy=openai-api-key, google-*;mcp-broker=*").unwrap();
        assert!(rules.allows("llm-proxy", "openai-api-key"));
        assert!(!rules.allows("llm-proxy", "openai-api-key-2"));
        assert!(rules.allows("llm-proxy", "google-api-key"));
        assert!(!rules.allows("llm-proxy", "jwt-secret-key"));
        assert!(rules.allows("mcp-broker", "jwt-secret-key"));
        assert!(!rules.allows("gateway", "openai-api-key"));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        assert!(AccessRules::parse("llm-proxy").unwrap_err().contains("service=pattern"));
        assert!(AccessRules::parse("nobody=openai-api-key").unwrap_err().contains("not a service"));
        assert!(AccessRules::parse("llm-proxy=open*ai").unwrap_err().contains("trailing"));
        assert!(AccessRules::parse("llm-proxy=a/b").is_err());
    }

    #[test]
    fn production_without_rules_denies_and_development_allows() {
        let production = AccessPolicy::new(None, true);
        assert!(!production.allows(Some(ServiceName::LlmProxy), "openai-api-key"));
        let development = AccessPolicy::new(None, false);
        assert!(development.allows(Some(ServiceName::LlmProxy), "openai-api-key"));
        assert!(development.allows(None, "openai-api-key"));
        let configured = AccessPolicy::new(Some(AccessRules::parse("llm-proxy=openai-*").unwrap()), false);
        assert!(configured.allows(Some(ServiceName::LlmProxy), "openai-api-key"));
        assert!(!configured.allows(Some(ServiceName::McpBroker), "openai-api-key"));
        assert!(!configured.allows(None, "openai-api-key"));
    }
}
