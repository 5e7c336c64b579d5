//! Provider API keys: read from secrets-broker by the seed's secret names
//! (`openai-api-key`, …), or in development from the providers' own environment variables,
//! cached for a while, dropped as soon as secrets-broker announces a new version
//! ([`Keys::follow_changes`]) and read again after a 401 — so a rotated key is used without
//! a restart, and the old one is not sent once the change is known. Keys are [`Secret`]s:
//! their `Debug` never shows them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_runtime::config::Secret;
use agentmesh_runtime::secrets::{SecretNotice, SecretReader};
use futures::StreamExt as _;
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
    cache: Arc<KeyCache>,
}

/// Keys read from secrets-broker, shared with the task following their changes.
#[derive(Default)]
struct KeyCache {
    keys: Mutex<HashMap<String, Cached>>,
    /// Bumped by every change heard: a read that started before one is not cached.
    epoch: AtomicU64,
}

impl KeyCache {
    fn forget(&self, secret: Option<&str>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        match secret {
            Some(secret) => {
                keys.remove(secret);
            }
            None => keys.clear(),
        }
    }
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
            cache: Arc::default(),
        }
    }

    /// Exactly `keys` by provider name and no secrets-broker (tests, benchmarks).
    pub fn fixed(keys: BTreeMap<String, Secret>) -> Self {
        Self {
            source: KeySource::Environment,
            environment: keys,
            broker: None,
            refresh: Duration::MAX,
            cache: Arc::default(),
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
        self.cache.keys.lock().unwrap_or_else(PoisonError::into_inner).remove(secret).is_some()
    }

    /// The task that drops a cached key as soon as secrets-broker announces a change to
    /// it (and every key when the watch was re-established); `None` when keys do not come
    /// from secrets-broker. Runs for as long as it is polled.
    pub fn follow_changes(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let mut notices = self.broker.as_ref()?.watch("")?;
        let cache = self.cache.clone();
        Some(async move {
            while let Some(notice) = notices.next().await {
                match notice {
                    SecretNotice::Changed(secret) => {
                        tracing::info!(secret, "provider key changed; the next call reads it");
                        cache.forget(Some(&secret));
                    }
                    SecretNotice::Resync => cache.forget(None),
                }
            }
        })
    }

    /// The cached key while fresh, else a new read. A failed read keeps the last key known
    /// (or none) for another interval, so an unreachable secrets-broker is not asked on
    /// every call.
    async fn read_from_broker(&self, broker: &dyn SecretReader, secret: &str) -> Option<Secret> {
        let cached = self.cache.keys.lock().unwrap_or_else(PoisonError::into_inner).get(secret).cloned();
        if let Some(cached) = &cached
            && cached.read_at.elapsed() < self.refresh
        {
            return cached.key.clone();
        }
        // A change heard while reading may mean the value read is already the old one:
        // read once more, and cache only a read no change overtook.
        let mut key = None;
        for _ in 0..2 {
            let epoch = self.cache.epoch.load(Ordering::SeqCst);
            key = match broker.read(secret).await {
                // A key file's trailing newline is not part of the key.
                Ok(key) => key.map(|key| Secret::new(key.expose().trim())),
                Err(error) => {
                    tracing::warn!(%error, secret, "provider key not read; using the last one known");
                    cached.as_ref().and_then(|cached| cached.key.clone())
                }
            };
            if self.cache.epoch.load(Ordering::SeqCst) == epoch {
                let entry = Cached { key: key.clone(), read_at: Instant::now() };
                self.cache.keys.lock().unwrap_or_else(PoisonError::into_inner).insert(secret.to_owned(), entry);
                break;
            }
        }
        key
    }
}
