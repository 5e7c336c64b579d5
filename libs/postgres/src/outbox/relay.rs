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
//! # Handed events
//!
//! Events a writer hands over after its commit
//! ([`Outbox::committed_events`](super::Outbox::committed_events), see [`handoff`](super::handoff))
//! are published without reading the table, in the order they were handed over, and
//! their rows are marked published by event id in batches: when `batch_size` are
//! waiting or `mark_delay` after the first, and at shutdown. Until then a row is still
//! unpublished in the table; this relay's own reads of the table skip the events it has
//! published, and other replicas' timed polls skip rows younger than `poll_grace`. If
//! the process dies before marking, the rows are published again with their ids.
//!
//! A look at the table goes before the events handed over since the last one, so that
//! rows only the table knows keep their place in `seq` order; the handed events it
//! published are then skipped. After a failure the next round is such a look, and the
//! relay catches up from the table, which holds every event it was handed.
//!
//! # Waking up
//!
//! The relay waits until one of: its owner hands it events, or tells it to read the
//! table after a commit ([`Outbox::committed`](super::Outbox::committed)), both
//! in-process with no database round trip; a `NOTIFY <schema>_outbox` arrives (for
//! writers outside this process, or operators); or `poll_interval` passes (the fallback
//! that covers everything else, such as rows left by a crashed replica). Writes
//! deliberately do not NOTIFY: PostgreSQL serialises the commits of notifying
//! transactions, which would cap writes (see the table's migration,
//! [`TABLE_SQL`](super::TABLE_SQL)).
//!
//! # Housekeeping
//!
//! Every `maintenance_interval` it deletes rows published longer than `retention` ago
//! (in bounded chunks), runs the owner's extra purge statements
//! ([`OutboxRelay::with_purge`], e.g. expired idempotency keys) the same way, and
//! refreshes the `agentmesh_outbox_pending` gauge.

use std::collections::HashSet;
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
use tokio::time::Instant;
use uuid::Uuid;

use super::handoff::Handoff;

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
/// `$1` rows at most, `$2` only rows queued longer ago than this (µs; 0 for all).
const SELECT_BATCH: &str = "SELECT seq, event_id, topic, event_type, source, subject, tenant, correlation_id, \
     data_content_type, data_schema, data, time, actor FROM outbox \
     WHERE published_at IS NULL AND dead_at IS NULL \
     AND ($2::bigint = 0 OR created_at < clock_timestamp() - $2::bigint * interval '1 microsecond') \
     ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Marks handed events published by their ids.
const MARK_HANDED: &str = "UPDATE outbox SET published_at = now() WHERE event_id = ANY($1) AND published_at IS NULL";

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
    /// How long a published handed event may wait to be marked, so that one statement
    /// marks many.
    pub mark_delay: Duration,
    /// Rows younger than this are left out of the looks that `poll_interval` brings: a
    /// replica that was handed them is publishing them. Longer than `mark_delay`.
    pub poll_grace: Duration,
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
            mark_delay: Duration::from_millis(100),
            poll_grace: Duration::from_secs(5),
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
    /// The bus refused a handed event as invalid; reading it from the table sets its
    /// row aside.
    #[error("the bus refused an outbox event: {0}")]
    Refused(String),
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows locked for this batch.
    pub fetched: usize,
    /// Events the bus acknowledged (now marked published), and rows of handed events
    /// this relay had published already.
    pub published: usize,
    /// Rows set aside as dead.
    pub dead: usize,
}

/// Handed events this relay has published whose rows are not marked yet.
#[derive(Debug, Default)]
struct Unmarked {
    ids: HashSet<Uuid>,
    /// When the oldest of them was published.
    since: Option<Instant>,
}

impl Unmarked {
    fn add(&mut self, id: Uuid) {
        self.ids.insert(id);
        self.since.get_or_insert_with(Instant::now);
    }

    /// Forgets ids whose rows were marked some other way.
    fn marked(&mut self, ids: &[Uuid]) {
        for id in ids {
            self.ids.remove(id);
        }
        if self.ids.is_empty() {
            self.since = None;
        }
    }
}

/// Which rows a look at the table takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Every unpublished row: something in this process, or a NOTIFY, asked for it.
    All,
    /// Rows older than `poll_grace`: the timed poll, for rows nobody is publishing.
    Old,
}

/// What the publishes of a run of events came to, in the order they were started.
struct Publishes<K> {
    acked: Vec<K>,
    /// Events the bus refuses as invalid, with its reason.
    refused: Vec<(K, String)>,
    /// The first failure; nothing was started after it.
    failure: Option<RelayError>,
}

/// Publishes an owner's outbox; see the module documentation. Made by
/// [`Outbox::relay`](super::Outbox::relay).
pub struct OutboxRelay {
    pool: PgPool,
    publisher: Arc<dyn Publisher>,
    handoff: Arc<Handoff>,
    unmarked: Unmarked,
    /// Ids this round's look at the table published: handed events among them are not
    /// published again.
    just_read: HashSet<Uuid>,
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
    pub(super) fn new(pool: PgPool, publisher: Arc<dyn Publisher>, handoff: Arc<Handoff>, channel: String) -> Self {
        Self {
            pool,
            publisher,
            handoff,
            unmarked: Unmarked::default(),
            just_read: HashSet::new(),
            channel,
            settings: RelaySettings::default(),
            purges: Vec::new(),
        }
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

    /// Publishes until `shutdown` resolves, then marks what it published and returns
    /// (after finishing the batch in flight, which is bounded by `publish_timeout` and
    /// `database_timeout`).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut listener: Option<PgListener> = None;
        let mut listen_at = Instant::now();
        let mut maintain_at = Instant::now();
        let mut poll_at = Instant::now() + self.settings.poll_interval;
        let mut failures: u32 = 0;
        // The first look takes everything: rows may be left from before this relay.
        let mut look = Some(Look::All);
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
            // On a steady clock, not after the last wake-up: a busy relay is woken all
            // the time, and the timed look is what finds rows nobody else publishes.
            if Instant::now() >= poll_at {
                look = look.or(Some(Look::Old));
                poll_at = Instant::now() + self.settings.poll_interval;
            }
            let handed = self.handoff.take();
            if handed.read_table {
                look = Some(Look::All);
            }
            // A look goes first: it publishes in `seq` order everything committed before
            // it, the events just handed over included, which are then skipped. After a
            // failure the next round looks at the table, so it catches up in order.
            let mut outcome = match look.take() {
                Some(look) => self.drain(look, &mut shutdown).await,
                None => Drained::Empty,
            };
            if matches!(outcome, Drained::Empty)
                && let Err(error) = self.publish_handed(handed.events).await
            {
                outcome = Drained::Failed(error);
            }
            self.just_read.clear();
            match outcome {
                Drained::Shutdown => break,
                Drained::Empty => failures = 0,
                Drained::Failed(error) => {
                    failures = failures.saturating_add(1);
                    look = Some(Look::All);
                    let delay = self.backoff(failures);
                    tracing::warn!(%error, failures, delay_ms = delay.as_millis() as u64, "outbox relay backing off");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            let mark_at = self.unmarked.since.map(|since| since + self.settings.mark_delay);
            if self.unmarked.ids.len() >= self.batch_size() || mark_at.is_some_and(|at| at <= Instant::now()) {
                self.mark_handed().await;
                continue;
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.handoff.notified() => {}
                () = tokio::time::sleep_until(poll_at) => {}
                () = sleep_until(mark_at) => {}
                notified = next_notification(&mut listener) => {
                    match notified {
                        Ok(()) => look = Some(Look::All),
                        Err(error) => {
                            tracing::debug!(%error, "outbox LISTEN connection lost; polling until it is back");
                            listener = None;
                        }
                    }
                }
            }
        }
        self.mark_handed().await;
        drop(listener);
        self.pool.close().await;
        tracing::info!(channel = %self.channel, "outbox relay stopped");
    }

    /// Publishes handed events (but not those this round's look at the table published),
    /// in order; they are marked later. Stops at the first failure.
    async fn publish_handed(&mut self, events: Vec<Event>) -> Result<(), RelayError> {
        let events: Vec<(Uuid, Event)> = events
            .into_iter()
            .filter_map(|event| Uuid::parse_str(event.id()).ok().map(|id| (id, event)))
            .filter(|(id, _)| !self.just_read.contains(id))
            .collect();
        if events.is_empty() {
            return Ok(());
        }
        let publishes = self.publish_all(events).await;
        metrics::counter!(PUBLISHED_COUNTER).increment(publishes.acked.len() as u64);
        for id in publishes.acked {
            self.unmarked.add(id);
        }
        match (publishes.failure, publishes.refused.into_iter().next()) {
            (Some(error), _) => Err(error),
            // The table's look sets the row aside as dead.
            (None, Some((_, reason))) => Err(RelayError::Refused(reason)),
            (None, None) => Ok(()),
        }
    }

    /// Marks the rows of the handed events published so far. A failure keeps them for
    /// the next try; meanwhile this relay's looks at the table skip them.
    async fn mark_handed(&mut self) {
        if self.unmarked.ids.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = self.unmarked.ids.iter().copied().collect();
        match self.db(sqlx::query(MARK_HANDED).bind(&ids).execute(&self.pool)).await {
            Ok(_) => self.unmarked = Unmarked::default(),
            Err(error) => {
                tracing::warn!(%error, count = ids.len(), "marking published outbox events failed; retrying later");
                self.unmarked.since = Some(Instant::now());
            }
        }
    }

    /// Publishes batches until the queue is empty, a step fails or shutdown is requested.
    async fn drain<S: Future<Output = ()> + Unpin>(&mut self, look: Look, shutdown: &mut S) -> Drained {
        loop {
            match self.read_batch(look).await {
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

    /// Locks, publishes and marks one batch of the table's unpublished rows. On a publish
    /// failure the events published before it are still marked, and the failure is
    /// returned.
    pub async fn publish_batch(&mut self) -> Result<BatchReport, RelayError> {
        self.read_batch(Look::All).await
    }

    async fn read_batch(&mut self, look: Look) -> Result<BatchReport, RelayError> {
        let grace = match look {
            Look::All => 0,
            Look::Old => i64::try_from(self.settings.poll_grace.as_micros()).unwrap_or(i64::MAX),
        };
        let mut tx = self.db(self.pool.begin()).await?;
        let rows = self
            .db(sqlx::query(SELECT_BATCH)
                .persistent(false)
                .bind(i64::from(self.settings.batch_size))
                .bind(grace)
                .fetch_all(&mut *tx))
            .await?;
        let mut report = BatchReport { fetched: rows.len(), ..BatchReport::default() };
        let mut published: Vec<i64> = Vec::with_capacity(rows.len());
        let mut dead: (Vec<i64>, Vec<String>) = (Vec::new(), Vec::new());
        let mut events = Vec::with_capacity(rows.len());
        let mut handed = Vec::new();
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            let event_id: Uuid = row.try_get("event_id")?;
            if self.unmarked.ids.contains(&event_id) {
                // Published when it was handed over: marked with this batch.
                published.push(seq);
                handed.push(event_id);
                continue;
            }
            match rebuild(row, event_id)? {
                Ok(event) => events.push(((seq, event_id), event)),
                Err(reason) => {
                    tracing::error!(seq, %reason, "outbox row is not a valid event; setting it aside");
                    dead.0.push(seq);
                    dead.1.push(reason);
                }
            }
        }
        let publishes = self.publish_all(events).await;
        for &(seq, event_id) in &publishes.acked {
            published.push(seq);
            self.just_read.insert(event_id);
        }
        for ((seq, _), reason) in publishes.refused {
            tracing::error!(seq, %reason, "bus rejects outbox event as invalid; setting it aside");
            dead.0.push(seq);
            dead.1.push(reason);
        }
        if !published.is_empty() {
            self.db(sqlx::query(MARK_PUBLISHED).persistent(false).bind(&published).execute(&mut *tx)).await?;
        }
        if !dead.0.is_empty() {
            self.db(sqlx::query(MARK_DEAD).bind(&dead.0).bind(&dead.1).execute(&mut *tx)).await?;
        }
        self.db(tx.commit()).await?;
        self.unmarked.marked(&handed);
        report.published = published.len();
        report.dead = dead.0.len();
        metrics::counter!(PUBLISHED_COUNTER).increment(publishes.acked.len() as u64);
        metrics::counter!(DEAD_COUNTER).increment(report.dead as u64);
        match publishes.failure {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    /// Publishes `events` with up to `publish_concurrency` in flight, started in order.
    /// After a failure nothing new starts, but the ones in flight are still awaited, so
    /// every event the bus acknowledged is known and none is sent twice by this relay.
    async fn publish_all<K>(&self, events: Vec<(K, Event)>) -> Publishes<K> {
        let mut queue = events.into_iter();
        let mut in_flight = FuturesOrdered::new();
        let mut publishes = Publishes { acked: Vec::new(), refused: Vec::new(), failure: None };
        loop {
            while publishes.failure.is_none() && in_flight.len() < self.settings.publish_concurrency.max(1) {
                let Some((key, event)) = queue.next() else { break };
                let publish = tokio::time::timeout(self.settings.publish_timeout, self.publisher.publish(event));
                in_flight.push_back(async move { (key, publish.await) });
            }
            let Some((key, result)) = in_flight.next().await else { break };
            match result {
                Ok(Ok(_ack)) => publishes.acked.push(key),
                Ok(Err(EventsError::Invalid(reason))) => publishes.refused.push((key, reason.to_string())),
                Ok(Err(error)) => {
                    publishes.failure.get_or_insert(RelayError::Publish(error));
                }
                Err(_) => {
                    publishes.failure.get_or_insert(RelayError::PublishTimeout(self.settings.publish_timeout));
                }
            }
        }
        if publishes.failure.is_some() {
            metrics::counter!(FAILURES_COUNTER).increment(1);
        }
        publishes
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

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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

/// The queued event of `row`, with its original id (`event_id`, already read from the
/// row); `Ok(Err(reason))` when the stored
/// attributes no longer form a valid event. Column decoding failures are database errors
/// (a schema mismatch affects every row; setting rows aside would be wrong).
fn rebuild(row: &PgRow, event_id: Uuid) -> Result<Result<Event, String>, sqlx::Error> {
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
        OutboxRelay::new(pool, publisher, Arc::default(), "x_outbox".into()).with_settings(settings)
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
