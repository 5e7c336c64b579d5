//! Runs: admission, reads, transitions (with the session's next run and the event, in one
//! transaction), leases and checkpoints.

use std::time::Duration;

use agentmesh_events::Event;
use agentmesh_postgres::error::violated_constraint;
use agentmesh_postgres::listing::{Listed, bigint, listed};
use agentmesh_postgres::outbox::{self, OutboxRow};
use agentmesh_postgres::outbox_insert_one;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use super::PostgresStore;
use super::error::{DbError, classify, classify_commit, classify_run_insert};
use super::rows::{self, definition_columns, run_columns};
use crate::events;
use crate::store::lifecycle::{self, lease_until};
use crate::store::{
    Admission, Admitted, NewRun, Page, RunQuery, RunRecord, RunTransition, SavedStep, StoreError, StoredCheckpoint,
    Transitioned, now,
};

/// A new run (`$13`-`$35`, see [`bind_new`]) and its event if it has one (`$1`-`$12`, see
/// [`outbox::bind_optional`]), in one statement.
const INSERT: &str = concat!(
    "WITH inserted AS (INSERT INTO runs (",
    run_columns!(),
    ", held_since) VALUES ($13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, ",
    "$30, $31, $32, $33, $34, $35) RETURNING id) ",
    outbox_insert_one!("$1::uuid IS NOT NULL AND EXISTS (SELECT 1 FROM inserted)")
);

/// Everything a transition may change, from a whole record (`$13` the id, see
/// [`replace`]), and the transition's event if it has one (`$1`-`$12`), in one statement.
/// A run that no longer holds its session forgets when it got it.
const REPLACE: &str = concat!(
    "WITH replaced AS (UPDATE runs SET status = $14, user_message_id = $15, response_message_id = $16, ",
    "usage = $17, error = $18, step_count = $19, pending_tool_calls = $20, last_sequence = $21, metadata = $22, ",
    "started_at = $23, completed_at = $24, lease_owner = $25, lease_expires_at = $26, holds_session = $27, ",
    "held_since = CASE WHEN $27 THEN held_since END WHERE id = $13 RETURNING id) ",
    outbox_insert_one!("$1::uuid IS NOT NULL AND EXISTS (SELECT 1 FROM replaced)")
);

/// The user message of an unfinished run, in one statement (mirrors `lifecycle::apply` for
/// `UserMessage`). No row: the run is missing or finished.
const NOTE_USER_MESSAGE: &str = concat!(
    "UPDATE runs SET user_message_id = $2 WHERE id = $1 AND status NOT IN ('completed', 'failed', 'cancelled') ",
    "RETURNING ",
    run_columns!()
);

/// `$2` is the owner, or NULL for the executing replica's reads.
const GET: &str = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1 AND ($2::text IS NULL OR user_id = $2)");
const BY_KEY: &str = concat!("SELECT ", run_columns!(), " FROM runs WHERE user_id = $1 AND idempotency_key = $2");
const LOCK_RUN: &str = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1 FOR UPDATE");
const HOLDER: &str = concat!("SELECT ", run_columns!(), " FROM runs WHERE session_id = $1 AND holds_session");
const RELEASE: &str =
    concat!("UPDATE runs SET holds_session = false, held_since = NULL WHERE id = $1 RETURNING ", run_columns!());

/// The session's oldest queued run gets the session (`$2`: since when).
const PROMOTE: &str = concat!(
    "UPDATE runs SET holds_session = true, held_since = $2 WHERE id = (SELECT id FROM runs WHERE session_id = $1 ",
    "AND status = 'queued' AND NOT holds_session ORDER BY created_at, id LIMIT 1 FOR UPDATE) RETURNING ",
    run_columns!()
);

/// The owner's agent's definition (admission), kept from being deleted until the run is
/// recorded; the weakest lock that does that, so admissions to one agent do not wait for
/// each other. Its status is not derived: nothing here needs it.
const LOCK_OWNED_AGENT: &str =
    concat!("SELECT ", definition_columns!(), " FROM agents WHERE id = $1 AND user_id = $2 FOR KEY SHARE");
/// The session's lock, for the transaction (key: the schema and the session id).
macro_rules! session_lock {
    ($session:literal) => {
        concat!("pg_advisory_xact_lock(hashtextextended(current_schema() || '.session ' || ", $session, "::text, 0))")
    };
}
/// The session, for the transaction.
const LOCK_SESSION: &str = concat!("SELECT ", session_lock!("$1"));
/// Run `$1` with its session, both locked for the transaction, in the order admissions
/// take them: the session's lock is taken where the row is read, before the row's lock,
/// and a row changed meanwhile is read again at its latest version once locked (as every
/// `FOR UPDATE` in READ COMMITTED). No row when the run is missing.
const LOCK_RUN_AND_SESSION: &str = concat!(
    "SELECT ",
    session_lock!("session_id"),
    " AS session_locked, ",
    run_columns!(),
    " FROM runs WHERE id = $1 FOR UPDATE"
);

/// `$1` owner, `$2` session, `$3` cursor (last id), `$4` limit + 1, `$5` offset.
const LIST: &str = concat!(
    "WITH counted AS MATERIALIZED (SELECT count(*) AS total FROM runs WHERE user_id = $1 AND session_id = $2) ",
    "SELECT counted.total, page.* FROM counted LEFT JOIN (SELECT ",
    run_columns!(),
    " FROM runs WHERE user_id = $1 AND session_id = $2 AND ($3::uuid IS NULL OR id < $3) ",
    "ORDER BY id DESC LIMIT $4 OFFSET $5) page ON true ORDER BY page.id DESC"
);

const UNFINISHED: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs WHERE agent_id = $1 AND user_id = $2 ",
    "AND status IN ('queued', 'running', 'requires_action') ORDER BY created_at, id"
);

const RENEW: &str = "UPDATE runs SET lease_expires_at = $3 \
                     WHERE id = ANY($2) AND lease_owner = $1 AND status = 'running' RETURNING id";

/// `$1` owner, `$2` new expiry, `$3` now, `$4` now minus the lease, `$5` limit (see
/// `lifecycle::is_abandoned`, which this mirrors).
const CLAIM: &str = concat!(
    "UPDATE runs SET lease_owner = $1, lease_expires_at = $2 WHERE id IN (SELECT id FROM runs WHERE ",
    "(status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at <= $3)) OR ",
    "(status = 'queued' AND holds_session AND (lease_expires_at IS NULL OR lease_expires_at <= $3) ",
    "AND held_since <= $4) ORDER BY created_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING ",
    run_columns!()
);

const SAVE_CHECKPOINT: &str = "INSERT INTO run_checkpoints (run_id, step, checkpoint, saved_at) \
                               VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (run_id) DO UPDATE \
                               SET step = EXCLUDED.step, checkpoint = EXCLUDED.checkpoint, saved_at = EXCLUDED.saved_at";
/// A step's progress and checkpoint in one statement: only a running run progresses (as
/// `lifecycle::apply` says for `Progress`, which this mirrors), and only then is the
/// checkpoint saved. `$1` run, `$2` step, `$3` usage, `$4` last sequence, `$5` checkpoint,
/// `$6` now. No row: the run is missing or not running.
const SAVE_STEP: &str = "WITH progressed AS (UPDATE runs SET step_count = $2, usage = $3, last_sequence = $4 \
                         WHERE id = $1 AND status = 'running' RETURNING id) \
                         INSERT INTO run_checkpoints (run_id, step, checkpoint, saved_at) \
                         SELECT id, $2, $5::jsonb, $6 FROM progressed ON CONFLICT (run_id) DO UPDATE \
                         SET step = EXCLUDED.step, checkpoint = EXCLUDED.checkpoint, saved_at = EXCLUDED.saved_at \
                         RETURNING run_id";
const LOAD_CHECKPOINT: &str =
    "SELECT step, checkpoint::text AS checkpoint, saved_at FROM run_checkpoints WHERE run_id = $1";

fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Binds a whole new run in [`run_columns!`] order, then `held_since` (24 parameters).
fn bind_new<'q>(
    query: Query<'q, Postgres, PgArguments>,
    run: &'q RunRecord,
    held_since: Option<DateTime<Utc>>,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(run.id)
        .bind(run.agent_id)
        .bind(run.session_id)
        .bind(&run.principal.user_id)
        .bind(Json(&run.principal))
        .bind(Json(&run.request))
        .bind(run.status.as_str())
        .bind(run.user_message_id)
        .bind(run.response_message_id)
        .bind(Json(&run.usage))
        .bind(run.error.as_ref().map(Json))
        .bind(int(run.step_count))
        .bind(Json(&run.pending_tool_calls))
        .bind(run.idempotency_key.as_deref())
        .bind(bigint(run.last_sequence))
        .bind(Json(&run.metadata))
        .bind(run.created_at)
        .bind(run.started_at)
        .bind(run.completed_at)
        .bind(run.lease_owner.as_deref())
        .bind(run.lease_expires_at)
        .bind(run.holds_session)
        .bind(held_since)
}

async fn fetch_run(conn: &mut PgConnection, sql: &'static str, id: Uuid) -> Result<Option<RunRecord>, DbError> {
    let row = sqlx::query(sql).bind(id).fetch_optional(conn).await.map_err(classify)?;
    row.as_ref().map(rows::run).transpose()
}

async fn lock_session(conn: &mut PgConnection, session_id: Uuid) -> Result<(), DbError> {
    sqlx::query(LOCK_SESSION).bind(session_id).execute(conn).await.map_err(classify)?;
    Ok(())
}

/// Writes everything a transition may change of `run`, and queues `event`, which it
/// returns for the relay.
async fn replace(conn: &mut PgConnection, run: &RunRecord, event: Option<Event>) -> Result<Vec<Event>, DbError> {
    let event = event.map(OutboxRow::new).transpose()?;
    outbox::bind_optional(event.as_ref(), sqlx::query(REPLACE))
        .bind(run.id)
        .bind(run.status.as_str())
        .bind(run.user_message_id)
        .bind(run.response_message_id)
        .bind(Json(&run.usage))
        .bind(run.error.as_ref().map(Json))
        .bind(int(run.step_count))
        .bind(Json(&run.pending_tool_calls))
        .bind(bigint(run.last_sequence))
        .bind(Json(&run.metadata))
        .bind(run.started_at)
        .bind(run.completed_at)
        .bind(run.lease_owner.as_deref())
        .bind(run.lease_expires_at)
        .bind(run.holds_session)
        .execute(conn)
        .await
        .map_err(classify)?;
    Ok(event.map(OutboxRow::into_event).into_iter().collect())
}

fn decode_runs(found: &[PgRow]) -> Result<Vec<RunRecord>, DbError> {
    found.iter().map(rows::run).collect()
}

impl PostgresStore {
    pub(super) async fn admit_run_impl(
        &self,
        run: &NewRun,
        admission: Option<Admission>,
    ) -> Result<Admitted, StoreError> {
        let user_id = run.principal.user_id.as_str();
        self.write_events(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            if let Some(key) = &run.idempotency_key {
                let row =
                    sqlx::query(BY_KEY).bind(user_id).bind(key).fetch_optional(&mut *tx).await.map_err(classify)?;
                if let Some(row) = row {
                    return Ok((Admitted::Existing(rows::run(&row)?), Vec::new()));
                }
            }
            let agent = sqlx::query(LOCK_OWNED_AGENT)
                .bind(run.agent_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
            let agent = rows::definition(&agent.ok_or(DbError::NotFound)?)?;
            lock_session(&mut tx, run.session_id).await?;
            let holder = sqlx::query(HOLDER).bind(run.session_id).fetch_optional(&mut *tx).await.map_err(classify)?;
            let holder = holder.as_ref().map(rows::run).transpose()?;
            let (holds_session, preempted) = match (holder, admission.unwrap_or(agent.concurrency.into())) {
                (None, _) => (true, None),
                (Some(holder), Admission::Reject) => return Err(DbError::SessionBusy(Box::new(holder))),
                (Some(_), Admission::Enqueue) => (false, None),
                (Some(holder), Admission::Interrupt) => {
                    let released = fetch_run(&mut tx, RELEASE, holder.id).await?;
                    (true, Some(released.ok_or(DbError::NotFound)?))
                }
            };
            let at = now();
            let (record, started) = lifecycle::admitted(run.clone(), holds_session, at);
            let event = started.and_then(|start| events::run_transitioned(&start, &record));
            let event = event.map(OutboxRow::new).transpose()?;
            let insert = outbox::bind_optional(event.as_ref(), sqlx::query(INSERT));
            bind_new(insert, &record, holds_session.then_some(at))
                .execute(&mut *tx)
                .await
                .map_err(classify_run_insert)?;
            tx.commit().await.map_err(classify_commit)?;
            let admitted = Admitted::Created {
                run: record,
                agent: Box::new(agent),
                ready: holds_session,
                preempted: preempted.map(Box::new),
            };
            Ok((admitted, event.map(OutboxRow::into_event).into_iter().collect()))
        })
        .await
    }

    pub(super) async fn get_run_impl(&self, user_id: Option<&str>, id: Uuid) -> Result<RunRecord, StoreError> {
        self.run(|| async {
            let row = sqlx::query(GET).bind(id).bind(user_id).fetch_optional(self.pool()).await.map_err(classify)?;
            rows::run(&row.ok_or(DbError::NotFound)?)
        })
        .await
    }

    pub(super) async fn find_run_by_key_impl(&self, user_id: &str, key: &str) -> Result<Option<RunRecord>, StoreError> {
        self.run(|| async {
            let row =
                sqlx::query(BY_KEY).bind(user_id).bind(key).fetch_optional(self.pool()).await.map_err(classify)?;
            row.as_ref().map(rows::run).transpose()
        })
        .await
    }

    pub(super) async fn list_session_runs_impl(
        &self,
        user_id: &str,
        session_id: Uuid,
        query: &RunQuery,
    ) -> Result<Page<RunRecord>, StoreError> {
        self.run(|| async {
            let found = sqlx::query(LIST)
                .bind(user_id)
                .bind(session_id)
                .bind(query.after)
                .bind(bigint(u64::from(query.limit) + 1))
                .bind(bigint(if query.after.is_some() { 0 } else { query.offset }))
                .fetch_all(self.pool())
                .await
                .map_err(classify)?;
            let Listed { items, total } = listed(&found, rows::run)?;
            Ok(Page::from_fetched(items, query.limit, total))
        })
        .await
    }

    pub(super) async fn list_unfinished_runs_impl(
        &self,
        user_id: &str,
        agent_id: Uuid,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.run(|| async {
            let found = sqlx::query(UNFINISHED).bind(agent_id).bind(user_id).fetch_all(self.pool()).await;
            decode_runs(&found.map_err(classify)?)
        })
        .await
    }

    pub(super) async fn transition_run_impl(
        &self,
        id: Uuid,
        transition: &RunTransition,
    ) -> Result<Transitioned, StoreError> {
        if let RunTransition::UserMessage { message_id } = transition {
            return self.note_user_message(id, *message_id).await;
        }
        if lifecycle::changes_only_the_run(transition) {
            return self.transition_run_only(id, transition).await;
        }
        self.write_events(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let current = fetch_run(&mut tx, LOCK_RUN_AND_SESSION, id).await?.ok_or(DbError::NotFound)?;
            let at = now();
            let run = lifecycle::apply(&current, transition, at)
                .ok_or_else(|| DbError::InvalidTransition(Box::new(current.clone())))?;
            let queued = replace(&mut tx, &run, events::run_transitioned(transition, &run)).await?;
            let next = if current.holds_session && !run.holds_session {
                let row = sqlx::query(PROMOTE)
                    .bind(run.session_id)
                    .bind(at)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(classify)?;
                row.as_ref().map(rows::run).transpose()?
            } else {
                None
            };
            tx.commit().await.map_err(classify_commit)?;
            Ok((Transitioned { run, next }, queued))
        })
        .await
    }

    /// [`RunTransition::UserMessage`]: one statement, no event.
    async fn note_user_message(&self, id: Uuid, message_id: Uuid) -> Result<Transitioned, StoreError> {
        self.run(|| async {
            let noted = sqlx::query(NOTE_USER_MESSAGE).bind(id).bind(message_id).fetch_optional(self.pool()).await;
            if let Some(row) = noted.map_err(classify)? {
                return Ok(Transitioned { run: rows::run(&row)?, next: None });
            }
            Err(self.refusal(id).await)
        })
        .await
    }

    /// Why a change guarded by the run's status found no row: the run is missing, or its
    /// status does not allow the change.
    async fn refusal(&self, id: Uuid) -> DbError {
        let current = sqlx::query(GET).bind(id).bind(None::<&str>).fetch_optional(self.pool()).await;
        match current.map_err(classify) {
            Ok(Some(row)) => match rows::run(&row) {
                Ok(run) => DbError::InvalidTransition(Box::new(run)),
                Err(error) => error,
            },
            Ok(None) => DbError::NotFound,
            Err(error) => error,
        }
    }

    /// A transition of the run alone (see [`lifecycle::changes_only_the_run`]): its row
    /// locked, changed, and its event queued; no agent or session lock.
    async fn transition_run_only(&self, id: Uuid, transition: &RunTransition) -> Result<Transitioned, StoreError> {
        self.write_events(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let current = fetch_run(&mut tx, LOCK_RUN, id).await?.ok_or(DbError::NotFound)?;
            let run = lifecycle::apply(&current, transition, now())
                .ok_or_else(|| DbError::InvalidTransition(Box::new(current.clone())))?;
            let queued = replace(&mut tx, &run, events::run_transitioned(transition, &run)).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok((Transitioned { run, next: None }, queued))
        })
        .await
    }

    pub(super) async fn renew_leases_impl(
        &self,
        owner: &str,
        ids: &[Uuid],
        lease: Duration,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.run(|| async {
            let until = lease_until(now(), lease);
            let found = sqlx::query(RENEW).bind(owner).bind(ids).bind(until).fetch_all(self.pool()).await;
            let found = found.map_err(classify)?;
            found.iter().map(|row| sqlx::Row::try_get(row, "id").map_err(classify)).collect()
        })
        .await
    }

    pub(super) async fn claim_abandoned_runs_impl(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.run(|| async {
            let at = now();
            let held_before = chrono::Duration::from_std(lease)
                .ok()
                .and_then(|lease| at.checked_sub_signed(lease))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let found = sqlx::query(CLAIM)
                .bind(owner)
                .bind(lease_until(at, lease))
                .bind(at)
                .bind(held_before)
                .bind(i64::from(limit))
                .fetch_all(self.pool())
                .await
                .map_err(classify)?;
            let mut claimed = decode_runs(&found)?;
            claimed.sort_by_key(|run| (run.created_at, run.id));
            Ok(claimed)
        })
        .await
    }

    pub(super) async fn save_checkpoint_impl(
        &self,
        run_id: Uuid,
        step: u32,
        checkpoint: &str,
    ) -> Result<(), StoreError> {
        let at = now();
        self.run(|| async {
            let saved = sqlx::query(SAVE_CHECKPOINT)
                .bind(run_id)
                .bind(int(step))
                .bind(checkpoint)
                .bind(at)
                .execute(self.pool())
                .await;
            match saved {
                Ok(_) => Ok(()),
                Err(error) if matches!(violated_constraint(&error), Some(("foreign_key", _))) => Err(DbError::NotFound),
                Err(error) => Err(classify(error)),
            }
        })
        .await
    }

    pub(super) async fn save_step_impl(&self, run_id: Uuid, step: &SavedStep) -> Result<(), StoreError> {
        let at = now();
        self.run(|| async {
            let saved = sqlx::query(SAVE_STEP)
                .bind(run_id)
                .bind(int(step.step_count))
                .bind(Json(&step.usage))
                .bind(bigint(step.last_sequence))
                .bind(step.checkpoint.as_str())
                .bind(at)
                .fetch_optional(self.pool())
                .await
                .map_err(classify)?;
            match saved {
                Some(_) => Ok(()),
                None => Err(self.refusal(run_id).await),
            }
        })
        .await
    }

    pub(super) async fn load_checkpoint_impl(&self, run_id: Uuid) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.run(|| async {
            let row = sqlx::query(LOAD_CHECKPOINT).bind(run_id).fetch_optional(self.pool()).await.map_err(classify)?;
            let Some(row) = row else { return Ok(None) };
            let step: i32 = sqlx::Row::try_get(&row, "step").map_err(classify)?;
            Ok(Some(StoredCheckpoint {
                step: u32::try_from(step).map_err(|_| DbError::corrupt("negative checkpoint step"))?,
                checkpoint: sqlx::Row::try_get(&row, "checkpoint").map_err(classify)?,
                saved_at: sqlx::Row::try_get(&row, "saved_at").map_err(classify)?,
            }))
        })
        .await
    }
}
