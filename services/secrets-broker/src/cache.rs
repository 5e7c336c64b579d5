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
//!   on a change the provider reports.
//!
//! Versions asked for by identifier never change, so they are cached without refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_resilience::{Resilience, ResilienceError};
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

use crate::provider::{ProviderClassifier, ProviderError, SecretVersion, SharedProvider};

/// Share of the TTL after which a value in use is refreshed.
pub const REFRESH_AT: f64 = 0.8;

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
            }),
        }
    }

    /// The provider behind the cache.
    pub fn provider(&self) -> &SharedProvider {
        &self.inner.provider
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
            let used_at = entries.get(key).map_or(now, |entry| entry.used_at);
            entries.insert(key.clone(), Entry { secret: secret.clone(), fetched_at: now, used_at });
        }
        Ok(secret)
    }
}
