//! Message appends, the hot path: one statement per append, and appends that arrive
//! together combined into one statement.
//!
//! # One append
//!
//! [`CREATE`] checks owner and parent, bumps `message_count` / `last_activity` (taking
//! the session row's lock, which keeps the counter exact under concurrent appends),
//! inserts the message and queues its event: one implicit transaction, one round trip.
//! The session's `updated_at` is not touched (its trigger only watches its own fields).
//!
//! # Keyed appends
//!
//! An append under an idempotency key's first use ([`FirstUse`]) inserts the key's row,
//! response included, in the same statement, after the message: one round trip instead
//! of three (claim, append, complete), and a key is never recorded for an append that
//! did not happen. A key that already has a row makes the statement fail on the key's
//! primary key, which rolls back the whole append; the caller is told
//! [`Appended::KeyInUse`] and takes the claim path, which answers the stored response,
//! takes over an expired key, or reports the key in use. A concurrent first use of the
//! same key waits on the first one's uncommitted row, then fails the same way.
//!
//! # Combining
//!
//! On this kind of hardware a transaction's fixed cost (protocol, snapshot, WAL, commit
//! flush) outweighs the append itself, and appends to one session queue on its row lock
//! through every commit. So concurrent appends are combined: each append is queued on
//! one of a few *lanes* (chosen by session id) and a lane runs one statement at a time
//! for everything queued on it ([`CREATE_BATCH`]: per-item owner and parent checks, one
//! counter update per session, multi-row inserts, per-item results). Nothing waits to
//! fill a batch: an append on an idle lane runs at once, alone; batches form only from
//! appends that arrive while the lane's previous statement runs, which is exactly when
//! combining pays. Lanes partition sessions, so two batches never lock the same session.
//!
//! Batches run on spawned tasks, so a caller that goes away (client cancelled) never
//! cancels a statement other callers wait on. If a batch's statement fails as a whole
//! because of one append (a parent deleted under it, a value PostgreSQL refuses), each
//! of its appends is retried alone through [`CREATE`] and reports its own outcome; since
//! ids are generated before the first attempt, an append that did commit is recognised
//! by its primary key (see `error`). If the database itself is failing, every append of
//! the batch gets that (already retried) failure at once.

use std::sync::{Arc, Mutex, PoisonError};

use agentmesh_events::Event;
use sqlx::Row as _;
use sqlx::types::Json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use uuid::Uuid;

use super::PostgresStore;
use super::error::{DbError, classify, violated_constraint};
use super::idempotency::micros;
use super::sessions::repeated_insert;
use crate::events;
use crate::store::{FirstUse, JsonObject, MessageRecord, NewMessage, Owner, StoreError, ToolCall};
use agentmesh_postgres::outbox::{OutboxRow, OutboxRows};
use agentmesh_postgres::{outbox_insert, outbox_insert_one};

/// Most appends in one statement.
const MAX_BATCH: usize = 64;

/// Histogram: appends per statement.
pub const BATCH_SIZE_HISTOGRAM: &str = "agentmesh_session_store_append_batch_size";

/// The head of the statement that records an idempotency key's first use with the
/// append: the claim token is the message id, the lease is over at once (the response
/// is stored), and an existing row for the key fails the statement on the primary key.
macro_rules! key_insert {
    () => {
        "INSERT INTO idempotency_keys (tenant_id, owner_id, key, fingerprint, response, claim_token, \
         lease_expires_at, expires_at) "
    };
}

/// `$1`-`$12` the event, `$13` session, `$14` tenant, `$15` owner, `$16` id, `$17` role,
/// `$18` content, `$19` metadata, `$20` tool calls, `$21` parent (nullable), `$22` time,
/// `$23` tool call id (nullable), then the idempotency key's first use (all nullable):
/// `$24` key, `$25` fingerprint, `$26` response, `$27` retention (µs).
/// Reports whether the message went in; when it did not, [`APPEND_REFUSED`] tells why.
const CREATE: &str = concat!(
    "WITH bumped AS (",
    "UPDATE sessions s SET message_count = s.message_count + 1, last_activity = GREATEST(s.last_activity, $22) ",
    "WHERE s.id = $13 AND s.tenant_id = $14 AND s.owner_id = $15 AND ($21::uuid IS NULL OR EXISTS ",
    "(SELECT 1 FROM messages p WHERE p.id = $21 AND p.session_id = $13)) RETURNING s.id), ",
    "inserted AS (",
    "INSERT INTO messages (id, session_id, role, content, metadata, tool_calls, parent_message_id, created_at, ",
    "updated_at, tool_call_id) SELECT $16, b.id, $17, $18, $19, $20, $21, $22, $22, $23 FROM bumped b RETURNING id), ",
    "keyed AS (",
    key_insert!(),
    "SELECT $14, $15, $24, $25, $26, x.id, now(), now() + $27 * interval '1 microsecond' ",
    "FROM inserted x WHERE $24::text IS NOT NULL), ",
    "queued AS (",
    outbox_insert_one!("EXISTS (SELECT 1 FROM inserted)"),
    ") SELECT EXISTS (SELECT 1 FROM inserted)"
);

/// Why an append did not go in: the session is the owner's (so the parent was wrong), or
/// not (or no longer).
const APPEND_REFUSED: &str =
    "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND tenant_id = $2 AND owner_id = $3)";

/// Many appends: `$1`-`$13` the events (record id = message id), `$14`-`$23` the
/// messages as arrays (id, session, tenant, owner, role, content, metadata, tool calls,
/// parent, time), `$24` their tool call ids, `$25`-`$28` their idempotency keys' first
/// uses (key, fingerprint, response, retention in µs; null for an append without one).
/// One row per append, in input order: inserted, owned, parent valid.
const CREATE_BATCH: &str = concat!(
    "WITH input AS (SELECT * FROM unnest($14::uuid[], $15::uuid[], $16::text[], $17::text[], $18::text[], ",
    "$19::text[], $20::jsonb[], $21::jsonb[], $22::uuid[], $23::timestamptz[], $24::text[], $25::text[], ",
    "$26::bytea[], $27::bytea[], $28::int8[]) WITH ORDINALITY ",
    "AS i(id, session_id, tenant_id, owner_id, role, content, metadata, tool_calls, parent_message_id, at, ",
    "tool_call_id, key, fingerprint, response, retention, n)), ",
    "owned AS (SELECT i.id, (i.parent_message_id IS NULL OR EXISTS (SELECT 1 FROM messages p ",
    "WHERE p.id = i.parent_message_id AND p.session_id = i.session_id)) AS parent_ok ",
    "FROM input i JOIN sessions s ON s.id = i.session_id AND s.tenant_id = i.tenant_id AND s.owner_id = i.owner_id), ",
    "accepted AS (SELECT i.* FROM input i JOIN owned o ON o.id = i.id AND o.parent_ok), ",
    "bumped AS (UPDATE sessions s SET message_count = s.message_count + g.added, ",
    "last_activity = GREATEST(s.last_activity, g.latest) FROM (SELECT session_id, count(*) AS added, ",
    "max(at) AS latest FROM accepted GROUP BY session_id) g WHERE s.id = g.session_id RETURNING s.id), ",
    "inserted AS (INSERT INTO messages (id, session_id, role, content, metadata, tool_calls, parent_message_id, ",
    "created_at, updated_at, tool_call_id) SELECT a.id, a.session_id, a.role, a.content, a.metadata, a.tool_calls, ",
    "a.parent_message_id, a.at, a.at, a.tool_call_id FROM accepted a WHERE a.session_id IN (SELECT id FROM bumped) ",
    "ORDER BY a.n RETURNING id), ",
    "keyed AS (",
    key_insert!(),
    "SELECT a.tenant_id, a.owner_id, a.key, a.fingerprint, a.response, a.id, now(), ",
    "now() + a.retention * interval '1 microsecond' FROM accepted a ",
    "WHERE a.key IS NOT NULL AND a.id IN (SELECT id FROM inserted)), ",
    "queued AS (",
    outbox_insert!("e.record_id IN (SELECT id FROM inserted)"),
    ") SELECT (x.id IS NOT NULL) AS inserted, (o.id IS NOT NULL) AS owned, COALESCE(o.parent_ok, false) AS parent_ok ",
    "FROM input i LEFT JOIN owned o ON o.id = i.id LEFT JOIN inserted x ON x.id = i.id ORDER BY i.n"
);

/// One queued append and where its caller waits.
struct Pending {
    owner: Owner,
    record: MessageRecord,
    /// Built in the caller's task, where the request's correlation id is.
    event: Event,
    /// The idempotency key whose first use this append is, if any.
    key: Option<KeyRow>,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// An idempotency key's row, written with the append (see the module documentation).
struct KeyRow {
    key: String,
    fingerprint: [u8; 32],
    response: Vec<u8>,
    retention_micros: i64,
}

/// What became of an append that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appended {
    /// The message (and its key, if any) went in.
    Inserted,
    /// Nothing went in: the append's idempotency key has a row already.
    KeyInUse,
}

/// Whether `error` is the idempotency key's primary key refusing a second row.
fn key_in_use(error: &sqlx::Error) -> bool {
    matches!(violated_constraint(error), Some(("unique", name)) if name == "idempotency_keys_pkey")
}

/// A queue of appends and the right to run its statement.
struct Lane {
    queue: Mutex<Vec<Pending>>,
    running: Arc<Semaphore>,
}

/// The lanes of one store.
pub(super) struct Appender {
    lanes: Vec<Lane>,
}

impl Appender {
    /// `lanes` statements may run at once (at least one).
    pub(super) fn new(lanes: usize) -> Self {
        let lanes = (0..lanes.max(1))
            .map(|_| Lane { queue: Mutex::new(Vec::new()), running: Arc::new(Semaphore::new(1)) })
            .collect();
        Self { lanes }
    }

    fn lane_of(&self, session_id: Uuid) -> usize {
        // UUID v7 ends in random bits: a fair spread without hashing.
        (session_id.as_u128() % self.lanes.len() as u128) as usize
    }
}

impl Lane {
    fn push(&self, pending: Pending) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).push(pending);
    }

    fn take(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let size = queue.len().min(MAX_BATCH);
        queue.drain(..size).collect()
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }
}

/// The outcome of one append, from the batch statement's flags.
fn outcome(inserted: bool, owned: bool, parent_ok: bool) -> Result<(), DbError> {
    match (inserted, owned, parent_ok) {
        (true, _, _) => Ok(()),
        (false, true, false) => Err(DbError::InvalidParent),
        // Not the owner's, or deleted while the batch waited for its lock.
        _ => Err(DbError::NotFound),
    }
}

impl PostgresStore {
    pub(super) async fn create_message_impl(
        &self,
        owner: &Owner,
        session_id: Uuid,
        new: NewMessage,
    ) -> Result<MessageRecord, StoreError> {
        match self.append(owner, session_id, new, None).await? {
            (record, Appended::Inserted) => Ok(record),
            // Not reachable without a key; reported rather than assumed.
            (_, Appended::KeyInUse) => Err(StoreError::Internal("an append without a key found its key in use".into())),
        }
    }

    pub(super) async fn create_message_first_use_impl(
        &self,
        owner: &Owner,
        session_id: Uuid,
        new: NewMessage,
        first_use: FirstUse<'_>,
    ) -> Result<Option<MessageRecord>, StoreError> {
        Ok(match self.append(owner, session_id, new, Some(first_use)).await? {
            (record, Appended::Inserted) => Some(record),
            (_, Appended::KeyInUse) => None,
        })
    }

    /// Queues one append on its lane, starts the lane if it is idle, and waits for the
    /// outcome; with `first_use`, the key's row is written with the message.
    async fn append(
        &self,
        owner: &Owner,
        session_id: Uuid,
        new: NewMessage,
        first_use: Option<FirstUse<'_>>,
    ) -> Result<(MessageRecord, Appended), StoreError> {
        let at = crate::store::now();
        let record = MessageRecord {
            id: Uuid::now_v7(),
            session_id,
            role: new.role,
            content: new.content,
            metadata: new.metadata,
            tool_calls: new.tool_calls,
            tool_call_id: new.tool_call_id,
            parent_message_id: new.parent_message_id,
            created_at: at,
            updated_at: at,
        };
        let event = events::message_created(owner, &record);
        let key = first_use.map(|first_use| KeyRow {
            key: first_use.key.to_owned(),
            fingerprint: first_use.fingerprint,
            response: (first_use.response)(&record),
            retention_micros: micros(first_use.retention),
        });
        let (reply, done) = oneshot::channel();
        let appender = &self.inner.appender;
        let index = appender.lane_of(session_id);
        let lane = &appender.lanes[index];
        // Handed to the relay once committed, so it need not read the row back.
        let committed = event.clone();
        lane.push(Pending { owner: owner.clone(), record: record.clone(), event, key, reply });
        if let Ok(permit) = Arc::clone(&lane.running).try_acquire_owned() {
            tokio::spawn(self.clone().drain_lane(index, permit));
        }
        match done.await {
            Ok(Ok(Appended::Inserted)) => {
                self.inner.outbox.committed_events([committed]);
                Ok((record, Appended::Inserted))
            }
            Ok(Ok(Appended::KeyInUse)) => Ok((record, Appended::KeyInUse)),
            Ok(Err(error)) => Err(error),
            // The lane's task died (runtime shutting down): the outcome is unknown.
            Err(closed) => Err(StoreError::Unavailable(Box::new(closed))),
        }
    }

    /// Runs the lane's queued appends, batch after batch, until the queue is empty.
    ///
    /// Whoever queues an append and finds the lane idle starts this; a running drain
    /// looks at the queue again after giving up its permit, so an append queued while
    /// the permit was held is never left behind.
    async fn drain_lane(self, index: usize, permit: OwnedSemaphorePermit) {
        let lane = &self.inner.appender.lanes[index];
        let mut permit = Some(permit);
        loop {
            let batch = lane.take();
            if batch.is_empty() {
                drop(permit.take());
                if lane.is_empty() {
                    return;
                }
                match Arc::clone(&lane.running).try_acquire_owned() {
                    Ok(again) => permit = Some(again),
                    // Another drain took over.
                    Err(_) => return,
                }
                continue;
            }
            self.append_batch(batch).await;
        }
    }

    async fn append_batch(&self, mut batch: Vec<Pending>) {
        metrics::histogram!(BATCH_SIZE_HISTOGRAM).record(batch.len() as f64);
        if batch.len() > 1 {
            match self.append_many(&batch).await {
                Ok(outcomes) => {
                    for (pending, result) in batch.into_iter().zip(outcomes) {
                        let _ = pending.reply.send(result.map(|()| Appended::Inserted).map_err(into_store_error));
                    }
                    return;
                }
                // The database is failing (and was retried already): so would every append.
                Err(StoreError::Unavailable(error)) => {
                    let error: Arc<dyn std::error::Error + Send + Sync> = Arc::from(error);
                    for pending in batch {
                        let _ = pending.reply.send(Err(StoreError::Unavailable(Box::new(Shared(Arc::clone(&error))))));
                    }
                    return;
                }
                // One append spoils the statement (or a repeat met its own committed rows,
                // or a key was in use): each finds out alone.
                Err(error) => {
                    tracing::debug!(%error, size = batch.len(), "combined append failed; appending one by one");
                }
            }
        }
        for pending in batch.drain(..) {
            let result = self.append_one(&pending.owner, &pending.record, pending.event, pending.key.as_ref()).await;
            let _ = pending.reply.send(result);
        }
    }

    /// One append, alone, under the database policy.
    async fn append_one(
        &self,
        owner: &Owner,
        record: &MessageRecord,
        event: Event,
        key: Option<&KeyRow>,
    ) -> Result<Appended, StoreError> {
        let outbox = OutboxRow::new(event).map_err(|e| StoreError::Internal(Box::new(e)))?;
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            let result = outbox
                .bind(sqlx::query(CREATE))
                .bind(record.session_id)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .bind(record.id)
                .bind(record.role.as_str())
                .bind(&record.content)
                .bind(Json(&record.metadata))
                .bind(Json(&record.tool_calls))
                .bind(record.parent_message_id)
                .bind(record.created_at)
                .bind(record.tool_call_id.as_deref())
                .bind(key.map(|k| k.key.as_str()))
                .bind(key.map(|k| &k.fingerprint[..]))
                .bind(key.map(|k| k.response.as_slice()))
                .bind(key.map(|k| k.retention_micros))
                .fetch_one(&mut *conn)
                .await;
            let inserted: bool = match result {
                Ok(row) => row.try_get(0).map_err(classify)?,
                // Safe to retry even if the outcome is unknown: see `repeated_insert`.
                Err(e) if repeated_insert(&e, "messages_pkey") => return Ok(Appended::Inserted),
                Err(e) if key_in_use(&e) => return Ok(Appended::KeyInUse),
                Err(e) => {
                    return Err(match violated_constraint(&e) {
                        // The parent was deleted after the statement's snapshot saw it.
                        Some(("foreign_key", name)) if name == "messages_parent_message_id_fkey" => {
                            DbError::InvalidParent
                        }
                        Some(("foreign_key", name)) if name == "messages_session_id_fkey" => DbError::NotFound,
                        _ => classify(e),
                    });
                }
            };
            if inserted {
                return Ok(Appended::Inserted);
            }
            let owned: bool = sqlx::query_scalar(APPEND_REFUSED)
                .bind(record.session_id)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .fetch_one(&mut *conn)
                .await
                .map_err(classify)?;
            // Not the owner's (or deleted while we waited for its lock): not found.
            Err(if owned { DbError::InvalidParent } else { DbError::NotFound })
        })
        .await
    }

    /// Several appends in one statement; per-append outcomes in input order. An error
    /// means nothing is known per append (it may even have committed): the caller then
    /// appends one by one, which recognises appends that did commit.
    async fn append_many(&self, batch: &[Pending]) -> Result<Vec<Result<(), DbError>>, StoreError> {
        let outbox = OutboxRows::new(batch.iter().map(|p| (p.record.id, p.event.clone())))
            .map_err(|e| StoreError::Internal(Box::new(e)))?;
        let column = |f: fn(&Pending) -> Uuid| batch.iter().map(f).collect::<Vec<_>>();
        let ids = column(|p| p.record.id);
        let sessions = column(|p| p.record.session_id);
        let tenants: Vec<&str> = batch.iter().map(|p| p.owner.tenant_id.as_str()).collect();
        let owners: Vec<&str> = batch.iter().map(|p| p.owner.user_id.as_str()).collect();
        let roles: Vec<&str> = batch.iter().map(|p| p.record.role.as_str()).collect();
        let contents: Vec<&str> = batch.iter().map(|p| p.record.content.as_str()).collect();
        let metadata: Vec<Json<&JsonObject>> = batch.iter().map(|p| Json(&p.record.metadata)).collect();
        let tool_calls: Vec<Json<&Vec<ToolCall>>> = batch.iter().map(|p| Json(&p.record.tool_calls)).collect();
        let tool_call_ids: Vec<Option<&str>> = batch.iter().map(|p| p.record.tool_call_id.as_deref()).collect();
        let parents: Vec<Option<Uuid>> = batch.iter().map(|p| p.record.parent_message_id).collect();
        let times: Vec<_> = batch.iter().map(|p| p.record.created_at).collect();
        let keys: Vec<Option<&str>> = batch.iter().map(|p| p.key.as_ref().map(|k| k.key.as_str())).collect();
        let fingerprints: Vec<Option<&[u8]>> =
            batch.iter().map(|p| p.key.as_ref().map(|k| &k.fingerprint[..])).collect();
        let responses: Vec<Option<&[u8]>> =
            batch.iter().map(|p| p.key.as_ref().map(|k| k.response.as_slice())).collect();
        let retentions: Vec<Option<i64>> = batch.iter().map(|p| p.key.as_ref().map(|k| k.retention_micros)).collect();
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            let rows = outbox
                .bind(sqlx::query(CREATE_BATCH))
                .bind(&ids)
                .bind(&sessions)
                .bind(&tenants)
                .bind(&owners)
                .bind(&roles)
                .bind(&contents)
                .bind(&metadata)
                .bind(&tool_calls)
                .bind(&parents)
                .bind(&times)
                .bind(&tool_call_ids)
                .bind(&keys)
                .bind(&fingerprints)
                .bind(&responses)
                .bind(&retentions)
                .fetch_all(&mut *conn)
                .await
                .map_err(classify)?;
            if rows.len() != batch.len() {
                return Err(DbError::corrupt(format!("{} results for {} appends", rows.len(), batch.len())));
            }
            rows.iter()
                .map(|row| {
                    let flag = |name| row.try_get::<bool, _>(name).map_err(classify);
                    Ok(outcome(flag("inserted")?, flag("owned")?, flag("parent_ok")?))
                })
                .collect()
        })
        .await
    }
}

/// One failure reported to every append of a batch.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Shared(Arc<dyn std::error::Error + Send + Sync>);

fn into_store_error(error: DbError) -> StoreError {
    super::error::into_store_error(agentmesh_resilience::ResilienceError::Inner(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_outcomes() {
        assert!(outcome(true, true, true).is_ok());
        assert!(matches!(outcome(false, true, false), Err(DbError::InvalidParent)));
        assert!(matches!(outcome(false, false, false), Err(DbError::NotFound)));
        assert!(matches!(outcome(false, true, true), Err(DbError::NotFound)));
    }

    #[test]
    fn lanes_take_bounded_batches_in_order() {
        let appender = Appender::new(3);
        assert_eq!(appender.lanes.len(), 3);
        assert!(appender.lane_of(Uuid::now_v7()) < 3);
        let lane = &appender.lanes[0];
        for i in 0..(MAX_BATCH + 5) {
            let (reply, _) = oneshot::channel();
            let event = Event::builder("message.created", "s", "t").build().unwrap();
            let owner = Owner { tenant_id: "t".into(), user_id: format!("{i}") };
            let record = MessageRecord {
                id: Uuid::now_v7(),
                session_id: Uuid::nil(),
                role: crate::store::Role::User,
                content: String::new(),
                metadata: JsonObject::new(),
                tool_calls: vec![],
                tool_call_id: None,
                parent_message_id: None,
                created_at: crate::store::now(),
                updated_at: crate::store::now(),
            };
            lane.push(Pending { owner, record, event, key: None, reply });
        }
        let first = lane.take();
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(first[0].owner.user_id, "0");
        let rest = lane.take();
        assert_eq!(rest.iter().map(|p| p.owner.user_id.clone()).collect::<Vec<_>>(), ["64", "65", "66", "67", "68"]);
        assert!(lane.is_empty() && lane.take().is_empty());
        assert_eq!(Appender::new(0).lanes.len(), 1);
    }
}
