//! Sessions: create (bulk), get, list, update, delete (bulk), each with its events.
//!
//! Creates and deletes are one statement each (data and outbox rows in one implicit
//! transaction); an update needs the stored row to build its event, so it updates,
//! queues the event and commits in a short transaction.

use agentmesh_postgres::listing::{Listed, bigint, listed};
use std::collections::HashSet;

use sqlx::types::Json;
use uuid::Uuid;

use super::PostgresStore;
use super::error::{DbError, classify, classify_commit, violated_constraint};
use super::rows::{self, session_columns};
use crate::events;
use crate::store::{
    Direction, NewSession, Owner, Page, SessionPatch, SessionQuery, SessionRecord, SessionSort, StoreError,
};
use agentmesh_postgres::outbox::{INSERT_ALL, OutboxRows};
use agentmesh_postgres::outbox_insert;

/// `$14` tenant, `$15` owner, `$16`-`$20` the sessions' columns as arrays.
const CREATE: &str = concat!(
    "WITH created AS (",
    "INSERT INTO sessions (id, tenant_id, owner_id, user_id, title, metadata, message_count, last_activity, ",
    "created_at, updated_at) ",
    "SELECT s.id, $14, $15, s.user_id, s.title, s.metadata, 0, s.at, s.at, s.at ",
    "FROM unnest($16::uuid[], $17::text[], $18::text[], $19::jsonb[], $20::timestamptz[]) ",
    "AS s(id, user_id, title, metadata, at) RETURNING id) ",
    outbox_insert!("e.record_id IN (SELECT id FROM created)")
);

const GET: &str =
    concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = $1 AND tenant_id = $2 AND owner_id = $3");

/// Absent fields keep their value; `updated_at` is always set (the trigger then stays
/// out of the way).
const UPDATE: &str = concat!(
    "UPDATE sessions SET user_id = COALESCE($4, user_id), title = COALESCE($5, title), ",
    "metadata = COALESCE($6, metadata), updated_at = $7 ",
    "WHERE id = $1 AND tenant_id = $2 AND owner_id = $3 RETURNING ",
    session_columns!()
);

/// `$14` tenant, `$15` owner, `$16` ids. Messages go with their session (ON DELETE
/// CASCADE); events are queued only for the sessions found.
const DELETE: &str = concat!(
    "WITH deleted AS (DELETE FROM sessions WHERE tenant_id = $14 AND owner_id = $15 AND id = ANY($16) RETURNING id), ",
    "queued AS (",
    outbox_insert!("e.record_id IN (SELECT id FROM deleted)"),
    ") SELECT id FROM deleted"
);

/// Whether `error` is the repeat of an insert whose earlier attempt committed: only our
/// own earlier attempt can hold the freshly generated ids of this call.
pub(super) fn repeated_insert(error: &sqlx::Error, table_key: &str) -> bool {
    matches!(violated_constraint(error), Some(("unique", name)) if name == table_key || name == "outbox_event_id_key")
}

/// The listing statement for one combination of sort, direction, filter and cursor.
/// Parameters: `$1` tenant, `$2` owner, `$3` limit + 1, `$4` offset, then `user_id` and
/// the cursor's key and id when present. The total comes from the same snapshot.
fn list_sql(query: &SessionQuery) -> String {
    let column = match query.sort {
        SessionSort::CreatedAt => "created_at",
        SessionSort::UpdatedAt => "updated_at",
        SessionSort::LastActivity => "last_activity",
    };
    let (order, past) = match query.direction {
        Direction::Asc => ("ASC", ">"),
        Direction::Desc => ("DESC", "<"),
    };
    let mut filter = String::from("tenant_id = $1 AND owner_id = $2");
    let mut next = 5;
    if query.user_id.is_some() {
        filter.push_str(" AND user_id = $5");
        next += 1;
    }
    let after = if query.after.is_some() {
        format!(" AND ({column}, id) {past} (${next}, ${})", next + 1)
    } else {
        String::new()
    };
    format!(
        "WITH counted AS MATERIALIZED (SELECT count(*) AS total FROM sessions WHERE {filter}) \
         SELECT counted.total, page.* FROM counted LEFT JOIN (\
         SELECT {columns} FROM sessions WHERE {filter}{after} \
         ORDER BY {column} {order}, id {order} LIMIT $3 OFFSET $4) page ON true \
         ORDER BY page.{column} {order}, page.id {order}",
        columns = session_columns!(),
    )
}

impl PostgresStore {
    pub(super) async fn create_sessions_impl(
        &self,
        owner: &Owner,
        new: Vec<NewSession>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<SessionRecord> = new
            .into_iter()
            .map(|session| {
                let at = crate::store::now();
                SessionRecord {
                    id: Uuid::now_v7(),
                    owner: owner.clone(),
                    user_id: session.user_id,
                    title: session.title,
                    metadata: session.metadata,
                    message_count: 0,
                    last_activity: at,
                    created_at: at,
                    updated_at: at,
                }
            })
            .collect();
        let outbox = OutboxRows::new(records.iter().map(|r| (r.id, events::session_created(r))))
            .map_err(|e| StoreError::Internal(Box::new(e)))?;
        let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
        let user_ids: Vec<Option<&str>> = records.iter().map(|r| r.user_id.as_deref()).collect();
        let titles: Vec<Option<&str>> = records.iter().map(|r| r.title.as_deref()).collect();
        let metadata: Vec<Json<&crate::store::JsonObject>> = records.iter().map(|r| Json(&r.metadata)).collect();
        let times: Vec<_> = records.iter().map(|r| r.created_at).collect();
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            let result = outbox
                .bind(sqlx::query(CREATE))
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .bind(&ids)
                .bind(&user_ids)
                .bind(&titles)
                .bind(&metadata)
                .bind(&times)
                .execute(&mut *conn)
                .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) if repeated_insert(&e, "sessions_pkey") => Ok(()),
                // Safe to retry even if the outcome is unknown: see `repeated_insert`.
                Err(e) => Err(classify(e)),
            }
        })
        .await?;
        self.wake_relay();
        Ok(records)
    }

    pub(super) async fn get_session_impl(&self, owner: &Owner, id: Uuid) -> Result<SessionRecord, StoreError> {
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            let row = sqlx::query(GET)
                .bind(id)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(classify)?;
            rows::session(&row.ok_or(DbError::NotFound)?)
        })
        .await
    }

    pub(super) async fn list_sessions_impl(
        &self,
        owner: &Owner,
        query: &SessionQuery,
    ) -> Result<Page<SessionRecord>, StoreError> {
        let sql = list_sql(query);
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .bind(bigint(u64::from(query.limit) + 1))
                .bind(bigint(query.offset));
            if let Some(user_id) = &query.user_id {
                statement = statement.bind(user_id);
            }
            if let Some(after) = query.after {
                statement = statement.bind(after.key).bind(after.id);
            }
            let found = statement.fetch_all(&mut *conn).await.map_err(classify)?;
            let Listed { items, total } = listed(&found, rows::session)?;
            Ok(Page::from_fetched(items, query.limit, total))
        })
        .await
    }

    pub(super) async fn update_session_impl(
        &self,
        owner: &Owner,
        id: Uuid,
        patch: SessionPatch,
    ) -> Result<SessionRecord, StoreError> {
        let at = crate::store::now();
        self.run(|| async {
            let mut tx = self.inner.pool.begin().await.map_err(classify)?;
            let row = sqlx::query(UPDATE)
                .bind(id)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .bind(patch.user_id.as_deref())
                .bind(patch.title.as_deref())
                .bind(patch.metadata.as_ref().map(Json))
                .bind(at)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
            let record = rows::session(&row.ok_or(DbError::NotFound)?)?;
            let outbox = OutboxRows::new([(record.id, events::session_updated(&record))])?;
            outbox.bind(sqlx::query(INSERT_ALL)).execute(&mut *tx).await.map_err(classify)?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(record)
        })
        .await
        .inspect(|_| self.wake_relay())
    }

    pub(super) async fn delete_sessions_impl(&self, owner: &Owner, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let mut seen = HashSet::new();
        let wanted: Vec<Uuid> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let outbox = OutboxRows::new(wanted.iter().map(|id| (*id, events::session_deleted(owner, *id))))
            .map_err(|e| StoreError::Internal(Box::new(e)))?;
        let deleted: HashSet<Uuid> = self
            .run(|| async {
                let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
                let found = outbox
                    .bind(sqlx::query(DELETE))
                    .bind(&owner.tenant_id)
                    .bind(&owner.user_id)
                    .bind(&wanted)
                    .fetch_all(&mut *conn)
                    .await
                    // Not repeatable once sent: a repeat would find nothing left to delete.
                    .map_err(classify_commit)?;
                found
                    .iter()
                    .map(|row| sqlx::Row::try_get::<Uuid, _>(row, "id").map_err(classify))
                    .collect::<Result<HashSet<Uuid>, DbError>>()
            })
            .await?;
        if !deleted.is_empty() {
            self.wake_relay();
        }
        Ok(wanted.into_iter().filter(|id| deleted.contains(id)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Cursor;

    fn query() -> SessionQuery {
        SessionQuery {
            user_id: None,
            sort: SessionSort::LastActivity,
            direction: Direction::Desc,
            limit: 20,
            offset: 0,
            after: None,
        }
    }

    #[test]
    fn listing_sql_follows_sort_direction_filter_and_cursor() {
        let plain = list_sql(&query());
        assert!(plain.contains("ORDER BY last_activity DESC, id DESC LIMIT $3 OFFSET $4"));
        assert!(!plain.contains("$5"));

        let cursor = Cursor { key: chrono::Utc::now(), id: Uuid::nil() };
        let filtered = list_sql(&SessionQuery {
            user_id: Some("u".into()),
            sort: SessionSort::CreatedAt,
            direction: Direction::Asc,
            after: Some(cursor),
            ..query()
        });
        assert!(filtered.contains("AND user_id = $5 AND (created_at, id) > ($6, $7)"));
        assert!(filtered.contains("ORDER BY created_at ASC, id ASC"));

        let desc = list_sql(&SessionQuery { sort: SessionSort::UpdatedAt, after: Some(cursor), ..query() });
        assert!(desc.contains("AND (updated_at, id) < ($5, $6)"));
    }

    #[test]
    fn statements_number_their_parameters() {
        assert!(CREATE.contains("$20::timestamptz[]"));
        assert!(DELETE.contains("id = ANY($16)"));
        assert_eq!(bigint(u64::MAX), i64::MAX);
    }
}
