//! The broker's cache of secret values (the seed's `cache_ttl`, 300 s, and `auto_refresh`).
//!
//! - **Deduplicated**: concurrent lookups of one secret share one provider call.
//! - **Refreshed ahead**: with `auto_refresh`, a value in use is read again once
//!   [`REFRESH_AT`] of its TTL has passed, so callers do not wait for the provider when it
//!   expires.
//! - **Stale while the provider is down**: a value the provider can no longer give keeps
//!   being served until `stale_limit` past its TTL; "not found" is an answer, not an
//!   outage, and drops the value at once.
//! - **Guarded**: every provider call runs through the provider's resilience policy (the
//!   seed's secret retry preset and a breaker that the mesh's dependency health shows).
//! - **Invalidated** on a rotation, here or on any replica (`agentmesh.secret.rotated`), and
//!   on a change the provider reports. A refresh that finds a new current version (rotated
//!   in the provider's own console, say) reports it as a change, so watchers hear of it
//!   within one TTL.
//!
//! Versions asked for by identifier never change, so they are cached without refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_resilience::{Resilience, ResilienceError};
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::provider::{Change, ChangeKind, ProviderClassifier, ProviderError, SecretVersion, SharedProvider};

/// Share of the TTL after which a value in use is refreshed.
pub const REFRESH_AT: f64 = 0.8;

/// Changes buffered for a slow listener.
const CHANGE_BUFFER: usize = 256;

/// Why a value could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The provider answered with an error.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The provider's breaker is open.
    #[error("the secret provider's circuit breaker is open")]
    CircuitOpen {
        /// When it may close.
        retry_after: Duration,
    },
    /// The provider did not answer in time (all attempts).
    #[error("the secret provider did not answer within {after:?}")]
    Timeout {
        /// The deadline.
        after: Duration,
    },
    /// Too many provider calls were already waiting.
    #[error("too many concurrent secret provider calls")]
    Overloaded,
}

impl From<ResilienceError<ProviderError>> for FetchError {
    fn from(error: ResilienceError<ProviderError>) -> Self {
        match error {
            ResilienceError::Inner(error) => Self::Provider(error),
            ResilienceError::CircuitOpen { retry_after, .. } => Self::CircuitOpen { retry_after },
            ResilienceError::Timeout { after } => Self::Timeout { after },
            ResilienceError::BulkheadFull { .. } => Self::Overloaded,
        }
    }
}

impl FetchError {
    /// Whether the answer is that the secret (or version) does not exist.
    fn is_not_found(&self) -> bool {
        matches!(self, Self::Provider(ProviderError::NotFound { .. } | ProviderError::VersionNotFound { .. }))
    }

    /// Whether the provider could not be read at all (so a stale value may stand in).
    fn is_outage(&self) -> bool {
        match self {
            Self::Provider(error) => {
                matches!(
                    error,
                    ProviderError::Unavailable { .. }
                        | ProviderError::Throttled { .. }
                        | ProviderError::Unauthorized { .. }
                )
            }
            Self::CircuitOpen { .. } | Self::Timeout { .. } | Self::Overloaded => true,
        }
    }
}

/// A value served, and whether it came from the cache.
#[derive(Debug, Clone)]
pub struct Served {
    /// The secret.
    pub secret: Arc<SecretVersion>,
    /// Whether the provider was not asked for this lookup.
    pub cached: bool,
    /// Whether it is past its TTL and served only because the provider is down.
    pub stale: bool,
}

/// The provider's name and, for a pinned version, its identifier.
type Key = (String, Option<String>);

type Fetch = Shared<BoxFuture<'static, Result<Arc<SecretVersion>, FetchError>>>;

#[derive(Debug)]
struct Entry {
    secret: Arc<SecretVersion>,
    fetched_at: Instant,
    used_at: Instant,
}

/// Cached values in front of one provider. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct SecretCache {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SharedProvider,
    resilience: Resilience,
    ttl: Duration,
    stale_limit: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
    inflight: Mutex<HashMap<Key, Fetch>>,
    /// Bumped by every invalidation: a read that started before one is not cached.
    epoch: AtomicU64,
    /// New current versions found by reads.
    changes: broadcast::Sender<Change>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("provider", &self.inner.provider.kind())
            .field("ttl", &self.inner.ttl)
            .field("entries", &lock(&self.inner.entries).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SecretCache {
    /// A cache of `provider`'s values, read through `resilience`, kept `ttl` and served
    /// stale up to `stale_limit` past it while the provider is down.
    pub fn new(provider: SharedProvider, resilience: Resilience, ttl: Duration, stale_limit: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                provider,
                resilience,
                ttl,
                stale_limit,
                entries: Mutex::default(),
                inflight: Mutex::default(),
                epoch: AtomicU64::new(0),
                changes: broadcast::channel(CHANGE_BUFFER).0,
            }),
        }
    }

    /// The provider behind the cache.
    pub fn provider(&self) -> &SharedProvider {
        &self.inner.provider
    }

    /// New current versions that reads found in place of the cached ones.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// The provider's resilience policy (its breaker shows in dependency health).
    pub fn resilience(&self) -> &Resilience {
        &self.inner.resilience
    }

    /// Secret `name` (the provider's name), at `version` when given; from the cache while
    /// fresh unless `bypass`, else from the provider, else stale within the limit.
    pub async fn get(&self, name: &str, version: Option<&str>, bypass: bool) -> Result<Served, FetchError> {
        let key: Key = (name.to_owned(), version.map(str::to_owned));
        let cached = {
            let mut entries = lock(&self.inner.entries);
            entries.get_mut(&key).map(|entry| {
                entry.used_at = Instant::now();
                (entry.secret.clone(), entry.fetched_at.elapsed())
            })
        };
        if let Some((secret, age)) = &cached
            && !bypass
            && (version.is_some() || *age < self.inner.ttl)
        {
            return Ok(Served { secret: secret.clone(), cached: true, stale: false });
        }
        match self.fetch(key.clone()).await {
            Ok(secret) => Ok(Served { secret, cached: false, stale: false }),
            Err(error) if error.is_not_found() => {
                lock(&self.inner.entries).remove(&key);
                Err(error)
            }
            Err(error) => match cached {
                Some((secret, age)) if error.is_outage() && age < self.inner.ttl + self.inner.stale_limit => {
                    tracing::warn!(secret = name, %error, age_seconds = age.as_secs(), "provider unavailable; serving the cached value");
                    Ok(Served { secret, cached: true, stale: age >= self.inner.ttl })
                }
                _ => Err(error),
            },
        }
    }

    /// Drops the cached current value of `name`, so the next lookup reads the provider.
    pub fn invalidate(&self, name: &str) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        lock(&self.inner.entries).retain(|(cached, version), _| cached != name || version.is_some());
    }

    /// Reads again every current value used within its TTL and due for refresh, and
    /// forgets values unused that long and past the stale limit. Returns how many were
    /// refreshed.
    pub async fn refresh_due(&self) -> usize {
        let refresh_after = self.inner.ttl.mul_f64(REFRESH_AT);
        let forget_after = self.inner.ttl + self.inner.stale_limit;
        let due: Vec<Key> = {
            let mut entries = lock(&self.inner.entries);
            entries
                .retain(|_, entry| entry.used_at.elapsed() < forget_after || entry.fetched_at.elapsed() < forget_after);
            entries
                .iter()
                .filter(|((_, version), entry)| {
                    version.is_none()
                        && entry.fetched_at.elapsed() >= refresh_after
                        && entry.used_at.elapsed() < self.inner.ttl
                })
                .map(|(key, _)| key.clone())
                .collect()
        };
        let count = due.len();
        for key in due {
            if let Err(error) = self.fetch(key.clone()).await {
                tracing::warn!(secret = %key.0, %error, "secret not refreshed; the cached value is kept");
                if error.is_not_found() {
                    lock(&self.inner.entries).remove(&key);
                }
            }
        }
        count
    }

    /// Refreshes ahead every `interval`, for as long as the task runs.
    pub async fn refresh_loop(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.refresh_due().await;
        }
    }

    /// One provider read per key at a time: later lookups join the one in flight.
    async fn fetch(&self, key: Key) -> Result<Arc<SecretVersion>, FetchError> {
        let shared = {
            let mut inflight = lock(&self.inner.inflight);
            inflight
                .entry(key.clone())
                .or_insert_with(|| {
                    let inner = self.inner.clone();
                    async move {
                        let result = inner.read(&key).await;
                        lock(&inner.inflight).remove(&key);
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        shared.await
    }
}

impl Inner {
    /// Reads `key` from the provider under its policy and caches the value.
    async fn read(&self, key: &Key) -> Result<Arc<SecretVersion>, FetchError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let (name, version) = (key.0.as_str(), key.1.as_deref());
        let secret = self
            .resilience
            .call(&ProviderClassifier, || self.provider.get(name, version))
            .await
            .map(Arc::new)
            .map_err(FetchError::from)?;
        if self.epoch.load(Ordering::SeqCst) == epoch {
            let now = Instant::now();
            let mut entries = lock(&self.entries);
            // A refresh is not a use: values nobody asks for stop being refreshed.
            let replaced = entries.insert(key.clone(), Entry { secret: secret.clone(), fetched_at: now, used_at: now });
            if let Some(replaced) = replaced {
                if let Some(entry) = entries.get_mut(key) {
                    entry.used_at = replaced.used_at;
                }
                if key.1.is_none() && replaced.secret.info.version != secret.info.version {
                    // Nobody listening is fine.
                    let _unheard = self.changes.send(Change {
                        name: key.0.clone(),
                        version: secret.info.version.clone(),
                        previous_version: Some(replaced.secret.info.version.clone()),
                        kind: ChangeKind::Rotated,
                        time: std::time::SystemTime::now(),
                    });
                }
            }
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use agentmesh_resilience::{BreakerState, Preset};
    use async_trait::async_trait;

    use super::*;
    use crate::provider::{Provider, ProviderKind, Rotation, SecretValue, VersionInfo};

    const TTL: Duration = Duration::from_secs(300);
    const STALE: Duration = Duration::from_secs(600);

    /// A provider whose value, health and speed the test sets, counting reads.
    #[derive(Debug, Default)]
    struct Scripted {
        reads: AtomicUsize,
        state: Mutex<ScriptedState>,
    }

    #[derive(Debug, Default)]
    struct ScriptedState {
        /// Current version number and value; `None` is "not found".
        current: Option<(u32, String)>,
        failure: Option<ProviderError>,
        delay: Duration,
    }

    impl Scripted {
        fn with(value: &str) -> Arc<Self> {
            let scripted = Self::default();
            lock(&scripted.state).current = Some((1, value.to_owned()));
            Arc::new(scripted)
        }

        fn set(&self, change: impl FnOnce(&mut ScriptedState)) {
            change(&mut lock(&self.state));
        }

        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Provider for Scripted {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Local
        }

        async fn get(&self, name: &str, version: Option<&str>) -> Result<SecretVersion, ProviderError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let delay = lock(&self.state).delay;
            tokio::time::sleep(delay).await;
            let state = lock(&self.state);
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            let Some((number, value)) = &state.current else {
                return Err(ProviderError::NotFound { name: name.to_owned() });
            };
            let version = version.map_or_else(|| number.to_string(), str::to_owned);
            Ok(SecretVersion {
                info: VersionInfo { name: name.to_owned(), version, created_at: None, expires_at: None },
                value: SecretValue::from(value.clone()),
            })
        }

        async fn list(&self, _prefix: &str) -> Result<Vec<VersionInfo>, ProviderError> {
            Ok(Vec::new())
        }

        async fn put(&self, _name: &str, _value: SecretValue) -> Result<Rotation, ProviderError> {
            Err(ProviderError::Unsupported { provider: ProviderKind::Local, operation: "rotate" })
        }
    }

    fn cache(provider: &Arc<Scripted>) -> SecretCache {
        let resilience = Resilience::new("secret-provider", &Preset::secret());
        SecretCache::new(provider.clone(), resilience, TTL, STALE)
    }

    fn value(served: &Served) -> &str {
        served.secret.value.as_text().unwrap()
    }

    fn down() -> ProviderError {
        ProviderError::Unavailable { reason: "connection refused".to_owned() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_concurrent_lookups_make_one_provider_call() {
        let provider = Scripted::with("sk-1");
        provider.set(|state| state.delay = Duration::from_millis(50));
        let cache = cache(&provider);
        let lookups = (0..100).map(|_| cache.get("openai-api-key", None, false));
        let served = futures::future::join_all(lookups).await;
        assert!(served.iter().all(|served| served.as_ref().is_ok_and(|served| value(served) == "sk-1")));
        assert_eq!(provider.reads(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn values_are_served_from_the_cache_for_the_ttl_then_read_again() {
        let provider = Scripted::with("sk-1");
        let cache = cache(&provider);
        assert!(!cache.get("k", None, false).await.unwrap().cached);
        provider.set(|state| state.current = Some((2, "sk-2".to_owned())));
        let served = cache.get("k", None, false).await.unwrap();
        assert!(served.cached);
        assert_eq!((value(&served), provider.reads()), ("sk-1", 1));
        // bypass_cache reads the provider and replaces the cached value.
        let bypassed = cache.get("k", None, true).await.unwrap();
        assert_eq!((value(&bypassed), bypassed.cached, provider.reads()), ("sk-2", false, 2));
        provider.set(|state| state.current = Some((3, "sk-3".to_owned())));
        tokio::time::advance(TTL).await;
        let expired = cache.get("k", None, false).await.unwrap();
        assert_eq!((value(&expired), expired.cached, provider.reads()), ("sk-3", false, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_serves_the_cached_value_up_to_the_stale_limit_and_the_breaker_recovers() {
        let provider = Scripted::with("sk-1");
        let cache = cache(&provider);
        cache.get("k", None, false).await.unwrap();
        provider.set(|state| state.failure = Some(down()));
        tokio::time::advance(TTL).await;

        // Each lookup past the TTL tries the provider (with a retry) and serves the last value.
        for _ in 0..5 {
            let served = cache.get("k", None, false).await.unwrap();
            assert_eq!((value(&served), served.cached, served.stale), ("sk-1", true, true));
        }
        assert_eq!(cache.resilience().breaker().state(), BreakerState::Open);
        let reads = provider.reads();
        // Open: the provider is not asked, the cached value still served.
        assert_eq!(value(&cache.get("k", None, false).await.unwrap()), "sk-1");
        assert_eq!(provider.reads(), reads);
        // A secret never read has nothing to stand in for it.
        assert!(matches!(cache.get("other", None, false).await, Err(FetchError::CircuitOpen { .. })));

        // Past the stale limit nothing is served.
        tokio::time::advance(STALE).await;
        assert!(cache.get("k", None, false).await.is_err());

        // Back up: after the breaker's open period, a trial call closes it.
        provider.set(|state| state.failure = None);
        tokio::time::advance(Duration::from_secs(10)).await;
        let served = cache.get("k", None, false).await.unwrap();
        assert_eq!((value(&served), served.cached), ("sk-1", false));
        assert_eq!(cache.resilience().breaker().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_is_an_answer_that_drops_the_value_at_once() {
        let provider = Scripted::with("sk-1");
        let cache = cache(&provider);
        cache.get("k", None, false).await.unwrap();
        provider.set(|state| state.current = None);
        let error = cache.get("k", None, true).await.unwrap_err();
        assert_eq!(error, FetchError::Provider(ProviderError::NotFound { name: "k".to_owned() }));
        provider.set(|state| state.failure = Some(down()));
        // Nothing stale stands in for a deleted secret.
        assert!(cache.get("k", None, false).await.is_err());
        assert_eq!(cache.resilience().breaker().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn values_in_use_are_refreshed_ahead_and_new_versions_reported() {
        let provider = Scripted::with("sk-1");
        let cache = cache(&provider);
        let mut changes = cache.changes();
        cache.get("k", None, false).await.unwrap();
        cache.get("pinned", Some("1"), false).await.unwrap();
        assert_eq!(cache.refresh_due().await, 0);

        provider.set(|state| state.current = Some((2, "sk-2".to_owned())));
        tokio::time::advance(TTL.mul_f64(REFRESH_AT)).await;
        cache.get("k", None, false).await.unwrap();
        // Pinned versions never change, so they are not refreshed.
        assert_eq!(cache.refresh_due().await, 1);
        let change = changes.try_recv().unwrap();
        assert_eq!((change.name.as_str(), change.version.as_str()), ("k", "2"));
        assert_eq!(change.previous_version.as_deref(), Some("1"));
        let reads = provider.reads();
        tokio::time::advance(TTL.mul_f64(1.0 - REFRESH_AT)).await;
        let served = cache.get("k", None, false).await.unwrap();
        assert_eq!((value(&served), served.cached, provider.reads()), ("sk-2", true, reads));

        // Unused for a whole TTL: no longer refreshed.
        tokio::time::advance(TTL).await;
        assert_eq!(cache.refresh_due().await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_drops_the_current_value_but_not_pinned_versions() {
        let provider = Scripted::with("sk-1");
        let cache = cache(&provider);
        cache.get("k", None, false).await.unwrap();
        cache.get("k", Some("1"), false).await.unwrap();
        cache.invalidate("k");
        assert!(!cache.get("k", None, false).await.unwrap().cached);
        assert!(cache.get("k", Some("1"), false).await.unwrap().cached);
    }
}
