//! Provider API keys: read from secrets-broker by the seed's secret names
//! (`openai-api-key`, …), or in development from the providers' own environment variables,
//! cached for a while and read again after a 401 — so a rotated key is used without a
//! restart. Keys are [`Secret`]s: their `Debug` never shows them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_runtime::config::Secret;
use agentmesh_runtime::secrets::SecretReader;
use tokio::time::Instant;

use crate::provider::{BUILT_IN, Provider, ProviderError};
use crate::settings::{KeySource, LlmSettings};

/// A key read from secrets-broker and when.
#[derive(Clone)]
struct Cached {
    key: Option<Secret>,
    read_at: Instant,
}

/// The keys of every provider.
pub struct Keys {
    source: KeySource,
    /// Development keys from the environment, by provider name.
    environment: BTreeMap<String, Secret>,
    broker: Option<Arc<dyn SecretReader>>,
    refresh: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("source", &self.source)
            .field("environment", &self.environment.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys as `settings` say, reading secrets with `broker` when there is one.
    pub fn new(settings: &LlmSettings, broker: Option<Arc<dyn SecretReader>>) -> Self {
        let mut environment = BTreeMap::new();
        if settings.key_source != KeySource::SecretsBroker {
            let pairs = [
                ("openai", &settings.openai.env_key),
                ("anthropic", &settings.anthropic.env_key),
                ("gemini", &settings.gemini.env_key),
                ("azure", &settings.azure.env_key),
            ];
            for (provider, key) in pairs {
                if let Some(key) = key {
                    environment.insert(provider.to_owned(), key.clone());
                }
            }
        }
        let broker = if settings.key_source == KeySource::Environment { None } else { broker };
        Self {
            source: settings.key_source,
            environment,
            broker,
            refresh: settings.key_refresh_interval,
            cache: Mutex::default(),
        }
    }

    /// Exactly `keys` by provider name and no secrets-broker (tests, benchmarks).
    pub fn fixed(keys: BTreeMap<String, Secret>) -> Self {
        Self {
            source: KeySource::Environment,
            environment: keys,
            broker: None,
            refresh: Duration::MAX,
            cache: Mutex::default(),
        }
    }

    /// The key `provider` needs: `Ok(None)` for providers without keys (and compatible
    /// servers without one); [`ProviderError::MissingKey`] when a built-in provider has none.
    pub async fn key_for(&self, provider: &dyn Provider) -> Result<Option<Secret>, ProviderError> {
        let Some(secret) = provider.key_secret() else { return Ok(None) };
        if let Some(key) = self.environment.get(provider.name()) {
            return Ok(Some(key.clone()));
        }
        let key = match &self.broker {
            Some(broker) => self.read_from_broker(broker.as_ref(), secret).await,
            None => None,
        };
        let required = BUILT_IN.contains(&provider.name());
        match key {
            Some(key) => Ok(Some(key)),
            None if required => Err(ProviderError::MissingKey { secret: secret.to_owned() }),
            None => Ok(None),
        }
    }

    /// Forgets the cached key of `provider` after the provider refused it (401), so the
    /// next call reads the current one. Returns whether a fresh read can differ (keys from
    /// the environment cannot change).
    pub fn invalidate(&self, provider: &dyn Provider) -> bool {
        let Some(secret) = provider.key_secret() else { return false };
        if self.environment.contains_key(provider.name()) || self.broker.is_none() {
            return false;
        }
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).remove(secret).is_some()
    }

    /// The cached key while fresh, else a new read. A failed read keeps the last key known
    /// (or none) for another interval, so an unreachable secrets-broker is not asked on
    /// every call.
    async fn read_from_broker(&self, broker: &dyn SecretReader, secret: &str) -> Option<Secret> {
        let cached = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(secret).cloned();
        if let Some(cached) = &cached
            && cached.read_at.elapsed() < self.refresh
        {
            return cached.key.clone();
        }
        let key = match broker.read(secret).await {
            // A key file's trailing newline is not part of the key.
            Ok(key) => key.map(|key| Secret::new(key.expose().trim())),
            Err(error) => {
                tracing::warn!(%error, secret, "provider key not read; using the last one known");
                cached.and_then(|cached| cached.key)
            }
        };
        let entry = Cached { key: key.clone(), read_at: Instant::now() };
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(secret.to_owned(), entry);
        key
    }
}
