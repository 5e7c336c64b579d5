//! The outbox relay: publishes the events an owner's writes queued in `outbox`.
//!
//! # Delivery
//!
//! At least once, deduplicated downstream: each batch locks up to `batch_size` unpublished
//! rows in `seq` order (`FOR UPDATE SKIP LOCKED`, so several replicas' relays share the
//! queue without blocking each other), publishes them in that order (pipelined: up to
//! `publish_concurrency` acknowledgements awaited at once), marks the acknowledged ones
//! and commits. Every event is rebuilt with the id it was queued with,
//! so if a relay dies after publishing but before committing, the re-sent event carries
//! the same `Nats-Msg-Id` and JetStream drops it as a duplicate.
//!
//! A publish failure (bus down, slow, refusing) stops the batch: what was acknowledged is
//! marked, the rest stays queued, and the relay backs off exponentially with jitter
//! (`backoff_initial` doubling up to `backoff_max`) before trying again. Nothing is ever
//! dropped for a bus failure. A row that can no longer form a valid event (corrupted by
//! hand) is set aside as dead (`dead_at`, `last_error`) instead of blocking the queue.
//!
//! # Waking up
//!
//! The relay waits until one of: its owner wakes it after a commit
//! ([`Outbox::committed`](super::Outbox::committed), in-process, no database round trip), a `NOTIFY <schema>_outbox` arrives (for writers outside this
//! process, or operators), or `poll_interval` passes (the fallback that covers
//! everything else, such as rows left by a crashed replica). Writes deliberately do not
//! NOTIFY: PostgreSQL serialises the commits of notifying transactions, which would cap
//! writes (see the table's migration, [`TABLE_SQL`](super::TABLE_SQL)).
//!
//! # Housekeeping
//!
//! Every `maintenance_interval` it deletes rows published longer than `retention` ago
//! (in bounded chunks), runs the owner's extra purge statements
//! ([`OutboxRelay::with_purge`], e.g. expired idempotency keys) the same way, and
//! refreshes the `agentmesh_outbox_pending` gauge.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::{Event, EventsError, Publisher};
use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use sqlx::Row as _;
use sqlx::postgres::{PgListener, PgPool, PgRow};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

/// Gauge: live rows waiting to be published.
pub const PENDING_GAUGE: &str = "agentmesh_outbox_pending";
/// Counter: events published.
pub const PUBLISHED_COUNTER: &str = "agentmesh_outbox_published_total";
/// Counter: failed publish attempts (each is retried later).
pub const FAILURES_COUNTER: &str = "agentmesh_outbox_publish_failures_total";
/// Counter: rows set aside because they no longer form a valid event.
pub const DEAD_COUNTER: &str = "agentmesh_outbox_dead_total";

// The relay's statements are planned on every execution (`persistent(false)`): a prepared
// statement keeps the generic plan it settled on after five runs, and a relay that starts
// with an empty outbox settles on sequential scans, which then read every row kept for
// the retention period on every batch, until something invalidates the plan (the agent
// run benchmark in docs/benchmarks.md, round 4, found them there).
const SELECT_BATCH: &str = "SELECT seq, event_id, topic, event_type, source, subject, tenant, correlation_id, \
     data_content_type, data_schema, data, time, actor FROM outbox \
     WHERE published_at IS NULL AND dead_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED";

const MARK_PUBLISHED: &str = "UPDATE outbox SET published_at = now() WHERE seq = ANY($1)";

const MARK_DEAD: &str = "UPDATE outbox SET dead_at = now(), last_error = d.error \
     FROM unnest($1::bigint[], $2::text[]) AS d(seq, error) WHERE outbox.seq = d.seq";

const COUNT_PENDING: &str = "SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL";

/// `$1` retention (µs), `$2` chunk size.
const PURGE_PUBLISHED: &str = "DELETE FROM outbox WHERE seq = ANY(ARRAY(SELECT seq FROM outbox \
     WHERE published_at < now() - $1 * interval '1 microsecond' LIMIT $2))";

/// Rows deleted per housekeeping statement, and statements per housekeeping round.
const PURGE_CHUNK: i64 = 10_000;
const PURGE_ROUNDS: usize = 20;

/// How the relay paces itself.
#[derive(Debug, Clone, PartialEq)]
pub struct RelaySettings {
    /// Rows locked and published per transaction.
    pub batch_size: u32,
    /// Publishes awaiting their acknowledgement at once. 1 publishes strictly in `seq`
    /// order even across failures; more pipelines the bus's round trips, and an event
    /// whose publish failed may then be overtaken by the few sent after it.
    pub publish_concurrency: usize,
    /// Longest wait between looks at the queue when nothing wakes the relay.
    pub poll_interval: Duration,
    /// First delay after a failure; doubles per consecutive failure.
    pub backoff_initial: Duration,
    /// Longest delay between attempts while the bus or database is failing.
    pub backoff_max: Duration,
    /// Longest wait for one publish acknowledgement.
    pub publish_timeout: Duration,
    /// Longest wait for one database step.
    pub database_timeout: Duration,
    /// How long published rows are kept (for inspection) before being deleted.
    pub retention: Duration,
    /// How often housekeeping runs and the pending gauge is refreshed.
    pub maintenance_interval: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            publish_concurrency: 32,
            poll_interval: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(10),
            database_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(60 * 60),
            maintenance_interval: Duration::from_secs(10),
        }
    }
}

/// Why a relay step failed; the relay backs off and tries again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// A database step did not finish in time.
    #[error("outbox database step timed out after {0:?}")]
    DatabaseTimeout(Duration),
    /// The bus refused or could not take an event.
    #[error("publishing an outbox event: {0}")]
    Publish(#[source] EventsError),
    /// The bus did not acknowledge an event in time.
    #[error("publishing an outbox event timed out after {0:?}")]
    PublishTimeout(Duration),
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows locked for this batch.
    pub fetched: usize,
    /// Events the bus acknowledged (now marked published).
    pub published: usize,
    /// Rows set aside as dead.
    pub dead: usize,
}

/// Publishes an owner's outbox; see the module documentation. Made by
/// [`Outbox::relay`](super::Outbox::relay).
pub struct OutboxRelay {
    pool: PgPool,
    publisher: Arc<dyn Publisher>,
    wake: Arc<Notify>,
    channel: String,
    settings: RelaySettings,
    /// The owner's extra housekeeping deletes (`$1`: most rows per statement).
    purges: Vec<&'static str>,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay").field("channel", &self.channel).field("settings", &self.settings).finish()
    }
}

/// How a drain of the queue ended.
enum Drained {
    /// The queue is empty (or what is left is locked by other relays).
    Empty,
    /// Shutdown was requested between batches.
    Shutdown,
    /// A step failed.
    Failed(RelayError),
}

impl OutboxRelay {
    pub(super) fn new(pool: PgPool, publisher: Arc<dyn Publisher>, wake: Arc<Notify>, channel: String) -> Self {
        Self { pool, publisher, wake, channel, settings: RelaySettings::default(), purges: Vec::new() }
    }

    /// Adds a housekeeping `DELETE` run every `maintenance_interval`, repeated while it
    /// deletes full chunks; `$1` is the most rows one statement may delete (e.g.
    /// `DELETE FROM t WHERE ctid = ANY(ARRAY(SELECT ctid FROM t WHERE expired LIMIT $1))`).
    #[must_use]
    pub fn with_purge(mut self, statement: &'static str) -> Self {
        self.purges.push(statement);
        self
    }

    /// Replaces the default pacing.
    #[must_use]
    pub fn with_settings(mut self, settings: RelaySettings) -> Self {
        self.settings = settings;
        self
    }

    /// Publishes until `shutdown` resolves, then returns (after finishing the batch in
    /// flight, which is bounded by `publish_timeout` and `database_timeout`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut listener: Option<PgListener> = None;
        let mut listen_at = Instant::now();
        let mut maintain_at = Instant::now();
        let mut failures: u32 = 0;
        tracing::info!(channel = %self.channel, "outbox relay started");
        loop {
            if Instant::now() >= maintain_at {
                if let Err(error) = self.maintain().await {
                    tracing::warn!(%error, "outbox housekeeping failed");
                }
                maintain_at = Instant::now() + self.settings.maintenance_interval;
            }
            if listener.is_none() && Instant::now() >= listen_at {
                listener = self.listen().await;
                // A failed LISTEN is retried at the poll pace, never in a tight loop.
                listen_at = Instant::now() + self.settings.poll_interval;
            }
            match self.drain(&mut shutdown).await {
                Drained::Shutdown => break,
                Drained::Empty => failures = 0,
                Drained::Failed(error) => {
                    failures = failures.saturating_add(1);
                    let delay = self.backoff(failures);
                    tracing::warn!(%error, failures, delay_ms = delay.as_millis() as u64, "outbox relay backing off");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                notified = next_notification(&mut listener) => {
                    if let Err(error) = notified {
                        tracing::debug!(%error, "outbox LISTEN connection lost; polling until it is back");
                        listener = None;
                    }
                }
            }
        }
        drop(listener);
        self.pool.close().await;
        tracing::info!(channel = %self.channel, "outbox relay stopped");
    }

    /// Publishes batches until the queue is empty, a step fails or shutdown is requested.
    async fn drain<S: Future<Output = ()> + Unpin>(&self, shutdown: &mut S) -> Drained {
        loop {
            match self.publish_batch().await {
                Err(error) => return Drained::Failed(error),
                Ok(report) if report.fetched < self.batch_size() => return Drained::Empty,
                Ok(_) => {}
            }
            if shutdown.now_or_never().is_some() {
                return Drained::Shutdown;
            }
        }
    }

    fn batch_size(&self) -> usize {
        usize::try_from(self.settings.batch_size).unwrap_or(usize::MAX)
    }

    /// Locks, publishes and marks one batch. On a publish failure the events published
    /// before it are still marked, and the failure is returned.
    pub async fn publish_batch(&self) -> Result<BatchReport, RelayError> {
        let mut tx = self.db(self.pool.begin()).await?;
        let rows = self
            .db(sqlx::query(SELECT_BATCH)
                .persistent(false)
                .bind(i64::from(self.settings.batch_size))
                .fetch_all(&mut *tx))
            .await?;
        let mut report = BatchReport { fetched: rows.len(), ..BatchReport::default() };
        let mut published: Vec<i64> = Vec::with_capacity(rows.len());
        let mut dead: (Vec<i64>, Vec<String>) = (Vec::new(), Vec::new());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            match rebuild(row)? {
                Ok(event) => events.push((seq, event)),
                Err(reason) => {
                    tracing::error!(seq, %reason, "outbox row is not a valid event; setting it aside");
                    dead.0.push(seq);
                    dead.1.push(reason);
                }
            }
        }
        // Up to `publish_concurrency` publishes in flight, started in seq order. After a
        // failure nothing new starts, but the ones in flight are still awaited, so every
        // event the bus acknowledged is marked and none is sent twice by this relay.
        let mut queue = events.into_iter();
        let mut in_flight = FuturesOrdered::new();
        let mut failure = None;
        loop {
            while failure.is_none() && in_flight.len() < self.settings.publish_concurrency.max(1) {
                let Some((seq, event)) = queue.next() else { break };
                let publish = tokio::time::timeout(self.settings.publish_timeout, self.publisher.publish(event));
                in_flight.push_back(async move { (seq, publish.await) });
            }
            let Some((seq, result)) = in_flight.next().await else { break };
            match result {
                Ok(Ok(_ack)) => published.push(seq),
                Ok(Err(EventsError::Invalid(reason))) => {
                    tracing::error!(seq, %reason, "bus rejects outbox event as invalid; setting it aside");
                    dead.0.push(seq);
                    dead.1.push(reason.to_string());
                }
                Ok(Err(error)) => {
                    failure.get_or_insert(RelayError::Publish(error));
                }
                Err(_) => {
                    failure.get_or_insert(RelayError::PublishTimeout(self.settings.publish_timeout));
                }
            }
        }
        if !published.is_empty() {
            self.db(sqlx::query(MARK_PUBLISHED).persistent(false).bind(&published).execute(&mut *tx)).await?;
        }
        if !dead.0.is_empty() {
            self.db(sqlx::query(MARK_DEAD).bind(&dead.0).bind(&dead.1).execute(&mut *tx)).await?;
        }
        self.db(tx.commit()).await?;
        report.published = published.len();
        report.dead = dead.0.len();
        metrics::counter!(PUBLISHED_COUNTER).increment(report.published as u64);
        metrics::counter!(DEAD_COUNTER).increment(report.dead as u64);
        match failure {
            Some(error) => {
                metrics::counter!(FAILURES_COUNTER).increment(1);
                Err(error)
            }
            None => Ok(report),
        }
    }

    /// Live rows waiting to be published.
    pub async fn pending(&self) -> Result<u64, RelayError> {
        let count: i64 = self.db(sqlx::query_scalar(COUNT_PENDING).persistent(false).fetch_one(&self.pool)).await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Deletes published rows past retention, runs the owner's purges, and refreshes the
    /// pending gauge.
    pub async fn maintain(&self) -> Result<(), RelayError> {
        let retention = i64::try_from(self.settings.retention.as_micros()).unwrap_or(i64::MAX);
        self.purge(Purge::Published(retention)).await?;
        for statement in &self.purges {
            self.purge(Purge::Owner(statement)).await?;
        }
        metrics::gauge!(PENDING_GAUGE).set(self.pending().await? as f64);
        Ok(())
    }

    async fn purge(&self, purge: Purge) -> Result<(), RelayError> {
        for _ in 0..PURGE_ROUNDS {
            let query = match purge {
                Purge::Published(retention) => sqlx::query(PURGE_PUBLISHED).bind(retention).bind(PURGE_CHUNK),
                Purge::Owner(statement) => sqlx::query(sqlx::AssertSqlSafe(statement)).bind(PURGE_CHUNK),
            };
            let deleted = self.db(query.execute(&self.pool)).await?.rows_affected();
            if deleted < PURGE_CHUNK.unsigned_abs() {
                break;
            }
        }
        Ok(())
    }

    async fn listen(&self) -> Option<PgListener> {
        let attempt = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(self.settings.database_timeout, attempt).await {
            Ok(Ok(listener)) => Some(listener),
            Ok(Err(error)) => {
                tracing::debug!(%error, "outbox relay cannot LISTEN yet; polling");
                None
            }
            Err(_) => None,
        }
    }

    /// Runs a database step under `database_timeout`.
    async fn db<T>(&self, step: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, RelayError> {
        tokio::time::timeout(self.settings.database_timeout, step)
            .await
            .map_err(|_| RelayError::DatabaseTimeout(self.settings.database_timeout))?
            .map_err(RelayError::Database)
    }

    /// The delay before retry number `failures` (1-based): exponential, capped, with
    /// "equal jitter" (half fixed, half random) so replicas spread out but never retry
    /// at once.
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        let capped = self.settings.backoff_initial.saturating_mul(factor).min(self.settings.backoff_max);
        capped / 2 + capped.mul_f64(random_fraction() / 2.0)
    }
}

/// One housekeeping delete.
#[derive(Debug, Clone, Copy)]
enum Purge {
    /// Published rows older than the retention (µs).
    Published(i64),
    /// One of the owner's statements.
    Owner(&'static str),
}

/// Waits for the next notification on `listener` (forever without one), then swallows
/// any that queued up behind it: one look at the queue serves them all.
async fn next_notification(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => {
            listener.recv().await?;
            while listener.next_buffered().is_some() {}
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// The queued event of `row`, with its original id; `Ok(Err(reason))` when the stored
/// attributes no longer form a valid event. Column decoding failures are database errors
/// (a schema mismatch affects every row; setting rows aside would be wrong).
fn rebuild(row: &PgRow) -> Result<Result<Event, String>, sqlx::Error> {
    let event_id: Uuid = row.try_get("event_id")?;
    let topic: String = row.try_get("topic")?;
    let event_type: String = row.try_get("event_type")?;
    let source: String = row.try_get("source")?;
    let subject: Option<String> = row.try_get("subject")?;
    let tenant: Option<String> = row.try_get("tenant")?;
    let correlation_id: Option<String> = row.try_get("correlation_id")?;
    let data_content_type: String = row.try_get("data_content_type")?;
    let data_schema: Option<String> = row.try_get("data_schema")?;
    let data: Vec<u8> = row.try_get("data")?;
    let time: DateTime<Utc> = row.try_get("time")?;
    let actor: Option<String> = row.try_get("actor")?;
    let mut builder = Event::builder(topic, source, event_type)
        .id(event_id.to_string())
        .time(time)
        .data_content_type(data_content_type)
        .data(data);
    if let Some(subject) = subject {
        builder = builder.subject(subject);
    }
    if let Some(tenant) = tenant {
        builder = builder.tenant(tenant);
    }
    if let Some(correlation_id) = correlation_id {
        builder = builder.correlation_id(correlation_id);
    }
    if let Some(data_schema) = data_schema {
        builder = builder.data_schema(data_schema);
    }
    if let Some(actor) = actor {
        builder = builder.actor(actor);
    }
    Ok(builder.build().map_err(|error| error.to_string()))
}

/// A uniformly distributed number in `[0, 1)` from the standard library's per-instance
/// random hash keys: plenty for jitter, and no RNG dependency.
fn random_fraction() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(settings: RelaySettings) -> OutboxRelay {
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let publisher: Arc<dyn Publisher> = Arc::new(agentmesh_events::MemoryBus::default());
        OutboxRelay::new(pool, publisher, Arc::new(Notify::new()), "x_outbox".into()).with_settings(settings)
    }

    #[tokio::test]
    async fn backoff_grows_is_capped_and_jittered() {
        let relay = relay(RelaySettings {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..RelaySettings::default()
        });
        for (failures, full) in [(1, 100), (2, 200), (3, 400), (5, 1600), (6, 2000), (40, 2000)] {
            let full = Duration::from_millis(full);
            for _ in 0..20 {
                let delay = relay.backoff(failures);
                assert!(delay >= full / 2 && delay <= full, "{failures}: {delay:?} vs {full:?}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| relay.backoff(4)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }

    #[test]
    fn random_fractions_stay_in_range() {
        for _ in 0..1000 {
            let x = random_fraction();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
