//! Security settings (`SECURITY_*`): the signing secret, token lifetimes, API key format,
//! CORS lists and static development keys, with the seed's production rules.

use std::time::Duration;

use super::environment::{Environment, Secret};
use super::vars::Vars;
use crate::auth::Tier;

/// The seed's development secret key; refused in production.
pub const DEV_SECRET_KEY: &str = "dev-secret-key-change-in-production-32chars";

/// Shortest acceptable `SECURITY_SECRET_KEY` (seed: `min_length=32`).
pub const MIN_SECRET_KEY_LEN: usize = 32;

/// Shortest random part (after the prefix) a `SECURITY_API_KEYS` key may have.
pub const MIN_STATIC_KEY_RANDOM_CHARS: usize = 32;

/// Security settings (`SECURITY_*`).
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// `SECURITY_SECRET_KEY`: signs the gateway's JWTs (principals between services are
    /// signed with each service's own Ed25519 key, see [`crate::auth`]).
    pub secret_key: Secret,
    /// `SECURITY_ALGORITHM`: JWT algorithm; only HS256 is supported.
    pub algorithm: String,
    /// `SECURITY_ACCESS_TOKEN_EXPIRE_MINUTES`.
    pub access_token_expire: Duration,
    /// `SECURITY_REFRESH_TOKEN_EXPIRE_DAYS`.
    pub refresh_token_expire: Duration,
    /// `SECURITY_API_KEY_LENGTH`: random characters after the prefix.
    pub api_key_length: usize,
    /// `SECURITY_API_KEY_PREFIX`.
    pub api_key_prefix: String,
    /// `SECURITY_CORS_ORIGINS`.
    pub cors_origins: Vec<String>,
    /// `SECURITY_CORS_METHODS`.
    pub cors_methods: Vec<String>,
    /// `SECURITY_CORS_HEADERS`.
    pub cors_headers: Vec<String>,
    /// `SECURITY_API_KEYS`: static development keys, `sk-…=user[:tier],…`; refused in
    /// production (they cannot be listed or revoked: use `agentmesh keys create` there).
    pub api_keys: Vec<StaticApiKey>,
}

/// One `SECURITY_API_KEYS` entry. `Debug` hides the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticApiKey {
    /// The full key, `sk-` followed by at least [`MIN_STATIC_KEY_RANDOM_CHARS`] characters.
    pub key: Secret,
    /// The user it authenticates as.
    pub user_id: String,
    /// Its tier (`default` unless given).
    pub tier: Tier,
}

impl SecurityConfig {
    pub(super) fn read(v: &mut Vars, environment: Environment) -> Self {
        let development = environment == Environment::Development;
        let secret_key = v.opt::<String>("SECURITY_SECRET_KEY").map(Secret::new);
        let secret_key = secret_key.unwrap_or_else(|| {
            if environment.is_strict() {
                v.issue("SECURITY_SECRET_KEY", "required outside development and testing");
            }
            Secret::new(DEV_SECRET_KEY)
        });
        let config = SecurityConfig {
            secret_key,
            algorithm: v.get("SECURITY_ALGORITHM", "HS256".to_owned()),
            access_token_expire: Duration::from_secs(60 * v.get("SECURITY_ACCESS_TOKEN_EXPIRE_MINUTES", 30u64)),
            refresh_token_expire: Duration::from_secs(86_400 * v.get("SECURITY_REFRESH_TOKEN_EXPIRE_DAYS", 7u64)),
            api_key_length: v.get("SECURITY_API_KEY_LENGTH", 32),
            api_key_prefix: v.get("SECURITY_API_KEY_PREFIX", "sk-".to_owned()),
            cors_origins: v.get("SECURITY_CORS_ORIGINS", default_cors_origins(development)),
            cors_methods: v.get("SECURITY_CORS_METHODS", strings(&["GET", "POST", "PUT", "DELETE"])),
            cors_headers: v.get("SECURITY_CORS_HEADERS", strings(&["*"])),
            api_keys: read_static_api_keys(v, environment == Environment::Production),
        };
        config.validate(v, environment);
        config
    }

    /// The seed's `ConfigurationValidator` rules for security.
    fn validate(&self, v: &mut Vars, environment: Environment) {
        let strict = environment.is_strict();
        let key = self.secret_key.expose();
        let key_reported = v.issues.iter().any(|i| i.variable == "SECURITY_SECRET_KEY");
        if key_reported {
            // Already missing or unreadable; one message per variable is enough.
        } else if key.chars().count() < MIN_SECRET_KEY_LEN {
            v.issue("SECURITY_SECRET_KEY", format!("must be at least {MIN_SECRET_KEY_LEN} characters long"));
        } else if strict && key == DEV_SECRET_KEY {
            v.issue("SECURITY_SECRET_KEY", "the development default is refused in production and staging");
        } else if strict && distinct_chars(key) < 10 {
            v.issue("SECURITY_SECRET_KEY", "too weak: use a random value (e.g. `openssl rand -base64 48`)");
        }
        if !self.algorithm.eq_ignore_ascii_case("HS256") {
            v.issue("SECURITY_ALGORITHM", "only HS256 is supported");
        }
        if self.api_key_length < 32 {
            v.issue("SECURITY_API_KEY_LENGTH", "must be at least 32");
        }
        if strict && self.cors_origins.iter().any(|o| o == "*") {
            v.issue("SECURITY_CORS_ORIGINS", "`*` is refused in production and staging: list the allowed origins");
        }
    }
}

/// Parses `SECURITY_API_KEYS` (`sk-…=user[:tier]`, comma-separated). Issues name the
/// entry by its position only: an entry may hold a key, which must never be echoed.
fn read_static_api_keys(v: &mut Vars, production: bool) -> Vec<StaticApiKey> {
    const VAR: &str = "SECURITY_API_KEYS";
    let Some(raw) = v.raw(VAR).map(str::to_owned) else { return Vec::new() };
    if production {
        v.issue(VAR, "static keys are refused in production: create keys with `agentmesh keys create`");
        return Vec::new();
    }
    let prefix = v.raw("SECURITY_API_KEY_PREFIX").unwrap_or("sk-").trim().to_owned();
    let mut keys: Vec<StaticApiKey> = Vec::new();
    for (index, entry) in raw.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let n = index + 1;
        let Some((key, owner)) = entry.split_once('=') else {
            v.issue(VAR, format!("entry {n}: expected {prefix}…=user[:tier]"));
            continue;
        };
        let (key, owner) = (key.trim(), owner.trim());
        let random = key.strip_prefix(prefix.as_str()).unwrap_or_default();
        if random.chars().count() < MIN_STATIC_KEY_RANDOM_CHARS
            || !random.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            let message = format!(
                "entry {n}: the key must be {prefix} followed by at least {MIN_STATIC_KEY_RANDOM_CHARS} \
                 characters from A-Z a-z 0-9 - _"
            );
            v.issue(VAR, message);
            continue;
        }
        let (user_id, tier) = match owner.rsplit_once(':') {
            None => (owner, Some(Tier::Default)),
            Some((user, tier)) => (user.trim(), Tier::parse(tier.trim())),
        };
        let Some(tier) = tier else {
            v.issue(VAR, format!("entry {n}: unknown tier: expected default, authenticated or premium"));
            continue;
        };
        if user_id.is_empty() {
            v.issue(VAR, format!("entry {n}: the user is missing"));
        } else if keys.iter().any(|k| k.key.expose() == key) {
            v.issue(VAR, format!("entry {n}: the same key is listed twice"));
        } else {
            keys.push(StaticApiKey { key: Secret::new(key), user_id: user_id.to_owned(), tier });
        }
    }
    keys
}

fn default_cors_origins(development: bool) -> Vec<String> {
    if development {
        strings(&["http://localhost:3000", "http://localhost:3001"])
    } else {
        strings(&["http://localhost:3000"])
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn distinct_chars(s: &str) -> usize {
    let mut chars: Vec<char> = s.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    chars.len()
}
