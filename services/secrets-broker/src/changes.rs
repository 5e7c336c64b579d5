//! Secret changes, gathered from everywhere they are noticed and fanned out to
//! `WatchSecrets` callers: the provider's own reports (the local file), values the cache
//! found changed when refreshing, rotations made through this replica, and rotations made
//! through other replicas (`agentmesh.secret.rotated` on the bus). Each change also drops
//! the cached value, so the next read is the new one.
//!
//! One change can arrive by several of these paths (a local rotation is announced by the
//! provider, by the rotating call and by the bus), so changes are de-duplicated by
//! name, version and kind before anyone hears of them.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use agentmesh_events::{StartPosition, Subscriber, SubscriptionSpec};
use agentmesh_proto::agentmesh::events::v1::SecretRotated;
use agentmesh_proto::agentmesh::secrets::v1::{SecretChangeKind, SecretChanged};
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::broadcast;

use crate::cache::SecretCache;
use crate::provider::{Change, ChangeKind};
use crate::settings::SecretsSettings;

/// Topic of rotations.
pub const ROTATED_TOPIC: &str = "secret.rotated";

/// Changes buffered for slow watchers before they are told they missed some.
const WATCH_BUFFER: usize = 1024;

/// First pause before subscribing to the bus again.
const RESUBSCRIBE_FIRST: Duration = Duration::from_millis(500);

/// Longest pause between subscriptions to the bus.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(30);

/// Recent changes remembered to drop repeats.
const REMEMBERED: usize = 1024;

/// Fans changes out to watchers, once each.
#[derive(Clone)]
pub struct ChangeHub {
    inner: Arc<Inner>,
}

struct Inner {
    sender: broadcast::Sender<SecretChanged>,
    seen: Mutex<Seen>,
    cache: SecretCache,
    settings: Arc<SecretsSettings>,
}

#[derive(Default)]
struct Seen {
    keys: HashSet<(String, String, i32)>,
    order: VecDeque<(String, String, i32)>,
}

impl std::fmt::Debug for ChangeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeHub").field("watchers", &self.inner.sender.receiver_count()).finish_non_exhaustive()
    }
}

impl ChangeHub {
    /// A hub invalidating `cache`, naming secrets as `settings` map them.
    pub fn new(cache: SecretCache, settings: Arc<SecretsSettings>) -> Self {
        Self {
            inner: Arc::new(Inner {
                sender: broadcast::channel(WATCH_BUFFER).0,
                seen: Mutex::default(),
                cache,
                settings,
            }),
        }
    }

    /// Changes from now on, by the seed's names.
    pub fn subscribe(&self) -> broadcast::Receiver<SecretChanged> {
        self.inner.sender.subscribe()
    }

    /// Takes in a change the provider or the cache noticed (provider names).
    pub fn provider_change(&self, change: &Change) {
        let name = self.inner.settings.seed_name(&change.name).to_owned();
        self.deliver(SecretChanged {
            name,
            version: change.version.clone(),
            kind: kind(change.kind).into(),
            time: Some(change.time.into()),
            previous_version: change.previous_version.clone(),
        });
    }

    /// Takes in a rotation announced on the bus (the seed's names).
    pub fn rotated(&self, rotated: &SecretRotated) {
        let kind =
            if rotated.previous_version.is_some() { SecretChangeKind::Rotated } else { SecretChangeKind::Created };
        self.deliver(SecretChanged {
            name: rotated.name.clone(),
            version: rotated.version.clone(),
            kind: kind.into(),
            time: rotated.time.or_else(|| Some(SystemTime::now().into())),
            previous_version: rotated.previous_version.clone(),
        });
    }

    /// Drops the cached value and tells watchers, unless this change was already told.
    fn deliver(&self, change: SecretChanged) {
        let key = (change.name.clone(), change.version.clone(), change.kind);
        {
            let mut seen = self.inner.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if !seen.keys.insert(key.clone()) {
                return;
            }
            seen.order.push_back(key);
            if seen.order.len() > REMEMBERED
                && let Some(oldest) = seen.order.pop_front()
            {
                seen.keys.remove(&oldest);
            }
        }
        self.inner.cache.invalidate(self.inner.settings.provider_name(&change.name));
        // No watcher is fine.
        let _unheard = self.inner.sender.send(change);
    }

    /// Forwards `changes` (a provider's or the cache's) until they end.
    pub async fn follow(self, mut changes: broadcast::Receiver<Change>) {
        loop {
            match changes.recv().await {
                Ok(change) => self.provider_change(&change),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "secret changes missed; watchers will hear of the next ones");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Follows other replicas' rotations on `bus` for as long as it runs, subscribing again
    /// (with backoff) when the subscription cannot be made or ends.
    pub async fn follow_bus(self, bus: Arc<dyn Subscriber>) {
        let mut pause = RESUBSCRIBE_FIRST;
        loop {
            // From now on: rotations before this replica started are already in the provider.
            let spec = SubscriptionSpec::ephemeral(vec![ROTATED_TOPIC.to_owned()]).start(StartPosition::New);
            match bus.subscribe(spec).await {
                Ok(mut deliveries) => {
                    pause = RESUBSCRIBE_FIRST;
                    while let Some(delivery) = deliveries.next().await {
                        let Ok(delivery) = delivery else { continue };
                        match SecretRotated::decode(delivery.event().data().clone()) {
                            Ok(rotated) => self.rotated(&rotated),
                            Err(error) => tracing::warn!(%error, "malformed secret.rotated event skipped"),
                        }
                        if let Err(error) = delivery.ack().await {
                            tracing::debug!(%error, "secret.rotated not acknowledged");
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "not following other replicas' secret rotations; retrying"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RESUBSCRIBE_MAX);
        }
    }
}

fn kind(kind: ChangeKind) -> SecretChangeKind {
    match kind {
        ChangeKind::Created => SecretChangeKind::Created,
        ChangeKind::Rotated => SecretChangeKind::Rotated,
        ChangeKind::Deleted => SecretChangeKind::Deleted,
    }
}
