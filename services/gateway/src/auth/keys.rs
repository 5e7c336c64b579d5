//! API keys: generation, hashing, records and scopes.
//!
//! # Format and storage
//!
//! A key is `SECURITY_API_KEY_PREFIX` (`sk-`) followed by `SECURITY_API_KEY_LENGTH` (at
//! least 32) characters drawn uniformly from the 64-character URL-safe alphabet
//! `A-Z a-z 0-9 - _` with the operating system's CSPRNG: 6 bits per character, at least
//! 192 bits in all. Only the SHA-256 of the full key is stored. A fast, unsalted hash is
//! the right tool here: salting and slow hashing protect *low-entropy* secrets (passwords)
//! against guessing, and a 192-bit random key cannot be guessed whatever the hash costs;
//! a fast hash also lets the key be found by its hash in one indexed lookup. The first
//! characters (the prefix plus [`VISIBLE_RANDOM_CHARS`] random ones, e.g. `sk-3f9aQ_x1`)
//! are kept in clear so people can recognise a key in listings; they reveal 48 of the
//! 192+ bits.
//!
//! # Scopes
//!
//! A key created without scopes gets [`default_scopes`]: every scope the contract's
//! methods require (`sessions:read`, `agents:execute`, ...) except the key-administration
//! ones (`api_keys:read`, `api_keys:write`), which must be granted explicitly. `*` grants
//! everything. Static development keys (`SECURITY_API_KEYS`) get `*`.

use std::fmt;
use std::sync::LazyLock;

use agentmesh_proto::options::method_rules;
use agentmesh_runtime::auth::{Principal, Tier};
use agentmesh_runtime::config::{SecurityConfig, StaticApiKey};
use chrono::{DateTime, Utc};
use rand::TryRng as _;
use rand::rngs::{SysError, SysRng};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::store::{ApiKeyStore, StoreError};

/// Random characters of a key shown in listings, after the configured prefix.
pub const VISIBLE_RANDOM_CHARS: usize = 8;

/// Fewest random characters a generated key has, whatever the configuration says.
pub const MIN_RANDOM_CHARS: usize = 32;

/// The scope granting every other scope.
pub const WILDCARD_SCOPE: &str = "*";

/// Scopes with this prefix administer keys and are never granted by default.
pub const ADMIN_SCOPE_PREFIX: &str = "api_keys:";

/// Longest scope name (the contract's `max_length`).
pub const MAX_SCOPE_LENGTH: usize = 100;

/// 64 symbols, so `byte & 63` picks one uniformly.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// SHA-256 of a full key: what the stores keep and look keys up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of `key`.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// A hash read back from storage.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares in constant time (no early exit on the first differing byte).
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(***)")
    }
}

/// The full text of a key; `Debug` hides it. Shown once, then dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecret(String);

impl KeySecret {
    /// The key itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(***)")
    }
}

/// A newly generated key, before it is stored.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The full key, to show once.
    pub secret: KeySecret,
    /// Its hash, to store.
    pub hash: KeyHash,
    /// Its visible prefix, to store.
    pub prefix: String,
}

/// How keys look (`SECURITY_API_KEY_PREFIX`, `SECURITY_API_KEY_LENGTH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    /// Text every key starts with, `sk-` by default.
    pub prefix: String,
    /// Random characters after the prefix (at least [`MIN_RANDOM_CHARS`] are generated).
    pub length: usize,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self { prefix: "sk-".to_owned(), length: MIN_RANDOM_CHARS }
    }
}

impl KeySettings {
    /// The configured settings.
    pub fn from_config(security: &SecurityConfig) -> Self {
        Self { prefix: security.api_key_prefix.clone(), length: security.api_key_length }
    }

    /// A new random key from the operating system's CSPRNG.
    pub fn generate(&self) -> Result<GeneratedKey, KeyError> {
        let mut bytes = vec![0u8; self.length.max(MIN_RANDOM_CHARS)];
        SysRng.try_fill_bytes(&mut bytes).map_err(KeyError::Random)?;
        let mut key = String::with_capacity(self.prefix.len() + bytes.len());
        key.push_str(&self.prefix);
        key.extend(bytes.iter().map(|b| char::from(ALPHABET[usize::from(b & 63)])));
        bytes.fill(0);
        let hash = KeyHash::of(&key);
        let prefix = self.visible_prefix(&key);
        Ok(GeneratedKey { secret: KeySecret(key), hash, prefix })
    }

    /// Whether `credential` is shaped like one of our keys (starts with the prefix), as
    /// opposed to a JWT.
    pub fn is_key(&self, credential: &str) -> bool {
        credential.starts_with(&self.prefix)
    }

    /// The part of `key` kept in clear.
    pub fn visible_prefix(&self, key: &str) -> String {
        let random: String = key.strip_prefix(&self.prefix).unwrap_or(key).chars().take(VISIBLE_RANDOM_CHARS).collect();
        format!("{}{random}", self.prefix)
    }
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("the system random number generator failed: {0}")]
    Random(#[source] SysError),
    /// A scope name is not acceptable.
    #[error("invalid scope {0:?}: use 1 to 100 characters from a-z 0-9 : _ . - (or `*` alone)")]
    InvalidScope(String),
    /// The user or tenant is not acceptable.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// `user_id`, `tenant_id` or `name`.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored key's metadata (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Unique id (UUID v7).
    pub id: Uuid,
    /// The visible start of the key, e.g. `sk-3f9aQ_x1`.
    pub prefix: String,
    /// The user the key authenticates as.
    pub user_id: String,
    /// That user's tenant; empty in single-tenant deployments.
    pub tenant_id: String,
    /// Rate-limit tier.
    pub tier: Tier,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// A label.
    pub name: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time; `None` while active.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last successful use, updated at most once per [`TOUCH_INTERVAL`](super::store::TOUCH_INTERVAL).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// Whether the key still authenticates.
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// The principal the key authenticates as.
    pub fn principal(&self) -> Principal {
        Principal {
            user_id: self.user_id.clone(),
            tenant_id: self.tenant_id.clone(),
            tier: self.tier,
            scopes: self.scopes.clone(),
        }
    }
}

/// What to create a key for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// The user, 1 to 255 characters.
    pub user_id: String,
    /// The tenant, at most 255 characters (empty: single tenant).
    pub tenant_id: String,
    /// Tier.
    pub tier: Tier,
    /// Scopes; empty means [`default_scopes`].
    pub scopes: Vec<String>,
    /// Optional label, at most 255 characters.
    pub name: Option<String>,
}

/// A created key: the secret (shown once) and the stored record.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The full key.
    pub secret: KeySecret,
    /// What was stored.
    pub record: ApiKeyRecord,
}

/// Generates, hashes and stores a key for `new` (scopes defaulted, deduplicated and
/// checked), created at `now`.
pub async fn create_key(
    store: &dyn ApiKeyStore,
    settings: &KeySettings,
    new: NewApiKey,
    now: DateTime<Utc>,
) -> Result<CreatedKey, KeyError> {
    check_text("user_id", &new.user_id, 1)?;
    check_text("tenant_id", &new.tenant_id, 0)?;
    if let Some(name) = &new.name {
        check_text("name", name, 0)?;
    }
    let scopes = normalize_scopes(new.scopes)?;
    let generated = settings.generate()?;
    let record = ApiKeyRecord {
        id: Uuid::now_v7(),
        prefix: generated.prefix,
        user_id: new.user_id,
        tenant_id: new.tenant_id,
        tier: new.tier,
        scopes,
        name: new.name,
        created_at: now,
        revoked_at: None,
        last_used_at: None,
    };
    store.insert(&record, &generated.hash).await?;
    Ok(CreatedKey { secret: generated.secret, record })
}

fn check_text(field: &'static str, value: &str, min: usize) -> Result<(), KeyError> {
    let length = value.chars().count();
    if length < min {
        return Err(KeyError::Invalid { field, reason: "must not be empty" });
    }
    if length > 255 {
        return Err(KeyError::Invalid { field, reason: "must be at most 255 characters" });
    }
    if value.chars().any(char::is_control) {
        return Err(KeyError::Invalid { field, reason: "must not contain control characters" });
    }
    Ok(())
}

/// `scopes` sorted and deduplicated, or [`default_scopes`] when empty; each one checked.
pub fn normalize_scopes(scopes: Vec<String>) -> Result<Vec<String>, KeyError> {
    if scopes.is_empty() {
        return Ok(default_scopes().to_vec());
    }
    let mut scopes = scopes;
    if let Some(bad) = scopes.iter().find(|s| !is_valid_scope(s)) {
        return Err(KeyError::InvalidScope(bad.clone()));
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// `*`, or 1 to [`MAX_SCOPE_LENGTH`] characters from `a-z 0-9 : _ . -`.
pub fn is_valid_scope(scope: &str) -> bool {
    scope == WILDCARD_SCOPE
        || (!scope.is_empty()
            && scope.len() <= MAX_SCOPE_LENGTH
            && scope.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":_.-".contains(&b)))
}

static DEFAULT_SCOPES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut scopes: Vec<String> = agentmesh_proto::descriptor_pool()
        .services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .filter_map(|method| method_rules(&method))
        .flat_map(|rules| rules.required_scopes)
        .filter(|scope| !scope.starts_with(ADMIN_SCOPE_PREFIX))
        .collect();
    scopes.sort();
    scopes.dedup();
    scopes
});

/// The scopes a key gets when created without any: every scope a method of the contract
/// requires, except the key-administration scopes (`api_keys:*`).
pub fn default_scopes() -> &'static [String] {
    &DEFAULT_SCOPES
}

/// The static development keys of `SECURITY_API_KEYS`, held in memory only. They cannot
/// be listed or revoked (restart without them instead) and are refused in production.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys {
    entries: Vec<(KeyHash, ApiKeyRecord)>,
}

impl StaticKeys {
    /// Records for `keys`: tenant empty, scope `*`, created at `now`, and an id derived
    /// from the key's hash so it is stable across restarts (refresh tokens refer to it).
    pub fn new(keys: &[StaticApiKey], settings: &KeySettings, now: DateTime<Utc>) -> Self {
        let entries = keys
            .iter()
            .map(|key| {
                let hash = KeyHash::of(key.key.expose());
                let id_bytes = Sha256::new().chain_update(b"agentmesh static key id").chain_update(hash.0).finalize();
                let mut id = [0u8; 16];
                id.copy_from_slice(&id_bytes[..16]);
                let record = ApiKeyRecord {
                    id: uuid::Builder::from_random_bytes(id).into_uuid(),
                    prefix: settings.visible_prefix(key.key.expose()),
                    user_id: key.user_id.clone(),
                    tenant_id: String::new(),
                    tier: key.tier,
                    scopes: vec![WILDCARD_SCOPE.to_owned()],
                    name: Some("SECURITY_API_KEYS".to_owned()),
                    created_at: now,
                    revoked_at: None,
                    last_used_at: None,
                };
                (hash, record)
            })
            .collect();
        Self { entries }
    }

    /// The key with `hash`. Every entry is compared, in constant time, whatever matches.
    pub fn find(&self, hash: &KeyHash) -> Option<&ApiKeyRecord> {
        let mut found = None;
        for (candidate, record) in &self.entries {
            if candidate.ct_eq(hash) {
                found = Some(record);
            }
        }
        found
    }

    /// The key with `id`.
    pub fn get(&self, id: Uuid) -> Option<&ApiKeyRecord> {
        self.entries.iter().map(|(_, record)| record).find(|record| record.id == id)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use agentmesh_runtime::config::Secret;

    use super::*;

    #[test]
    fn keys_have_the_prefix_the_length_and_the_url_safe_alphabet() {
        let settings = KeySettings { prefix: "sk-".into(), length: 40 };
        let key = settings.generate().unwrap();
        let text = key.secret.expose();
        assert!(text.starts_with("sk-"));
        assert_eq!(text.len(), 43);
        assert!(text[3..].bytes().all(|b| ALPHABET.contains(&b)), "{text}");
        assert_eq!(key.prefix, &text[..3 + VISIBLE_RANDOM_CHARS]);
        assert_eq!(key.hash, KeyHash::of(text));
        assert!(!format!("{key:?}").contains(text), "Debug must hide the key");
        let short = KeySettings { prefix: "sk-".into(), length: 8 }.generate().unwrap();
        assert_eq!(short.secret.expose().len(), 3 + MIN_RANDOM_CHARS, "never fewer than 32 random characters");
    }

    #[test]
    fn keys_are_unique_and_their_characters_uniform() {
        let settings = KeySettings::default();
        let mut seen = HashSet::new();
        let mut counts: HashMap<u8, usize> = HashMap::new();
        let n = 2_000;
        for _ in 0..n {
            let key = settings.generate().unwrap();
            for b in key.secret.expose()[3..].bytes() {
                *counts.entry(b).or_default() += 1;
            }
            assert!(seen.insert(key.secret.expose().to_owned()));
        }
        // 64,000 characters over 64 symbols: 1,000 expected each. A chi-square statistic
        // for 63 degrees of freedom above 150 has a probability far below 1e-8.
        assert_eq!(counts.len(), 64, "every symbol appears");
        let expected = (n * MIN_RANDOM_CHARS) as f64 / 64.0;
        let chi2: f64 = counts.values().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
        assert!(chi2 < 150.0, "chi-square {chi2}");
    }

    #[test]
    fn hashes_are_sha256_of_the_full_key_and_compare_in_constant_time() {
        let hash = KeyHash::of("sk-abc");
        assert_eq!(
            hash.as_bytes()[..4],
            [0x14, 0x60, 0xdb, 0x1b][..],
            "echo -n sk-abc | sha256sum starts with 1460db1b"
        );
        assert!(hash.ct_eq(&KeyHash::of("sk-abc")));
        assert!(!hash.ct_eq(&KeyHash::of("sk-abd")));
        assert_eq!(KeyHash::from_slice(hash.as_bytes()), Some(hash));
        assert_eq!(KeyHash::from_slice(&[0; 31]), None);
        assert_eq!(format!("{hash:?}"), "KeyHash(***)");
    }

    #[test]
    fn default_scopes_are_the_contracts_non_admin_scopes() {
        let scopes = default_scopes();
        for expected in ["sessions:read", "sessions:write", "messages:write", "agents:execute", "runs:read"] {
            assert!(scopes.iter().any(|s| s == expected), "{expected} missing from {scopes:?}");
        }
        assert!(scopes.iter().all(|s| !s.starts_with(ADMIN_SCOPE_PREFIX) && s != WILDCARD_SCOPE));
        assert_eq!(normalize_scopes(vec![]).unwrap(), scopes);
        assert_eq!(normalize_scopes(vec!["b:x".into(), "a:y".into(), "b:x".into()]).unwrap(), ["a:y", "b:x"]);
        for bad in ["", "Sessions:Read", "a b", "x\n", &"a".repeat(101), "**"] {
            assert!(matches!(normalize_scopes(vec![bad.into()]), Err(KeyError::InvalidScope(_))), "{bad:?}");
        }
    }

    #[test]
    fn static_keys_are_found_by_hash_with_stable_ids() {
        let raw = format!("sk-{}", "x".repeat(32));
        let keys = [StaticApiKey { key: Secret::new(raw.clone()), user_id: "dev".into(), tier: Tier::Premium }];
        let settings = KeySettings::default();
        let a = StaticKeys::new(&keys, &settings, Utc::now());
        let b = StaticKeys::new(&keys, &settings, Utc::now());
        let record = a.find(&KeyHash::of(&raw)).unwrap();
        assert_eq!(record.id, b.find(&KeyHash::of(&raw)).unwrap().id);
        assert_eq!(
            (record.user_id.as_str(), record.tier, record.scopes.as_slice()),
            ("dev", Tier::Premium, &["*".to_owned()][..])
        );
        assert_eq!(record.prefix, "sk-xxxxxxxx");
        assert!(a.find(&KeyHash::of("sk-other")).is_none());
        assert_eq!(a.get(record.id), Some(record));
    }
}
