//! Messages: get, list, update, delete, with the session's counters and events (appends,
//! the hot path, live in `append`).
//!
//! A delete locks the session row first, then deletes and decrements, so it takes locks
//! in the same order as an append and the two cannot deadlock.

use agentmesh_postgres::listing::{Listed, bigint, contains_pattern, listed};
use sqlx::types::Json;
use uuid::Uuid;

use super::PostgresStore;
use super::error::{DbError, classify, classify_commit, violated_constraint};
use super::rows::{self, message_columns};

use crate::events;
use crate::store::{Direction, MessagePatch, MessageQuery, MessageRecord, Owner, Page, StoreError};
use agentmesh_postgres::outbox::{INSERT_ALL, OutboxRows};

const GET: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages m JOIN sessions s ON s.id = m.session_id ",
    "WHERE m.id = $1 AND s.tenant_id = $2 AND s.owner_id = $3"
);

/// `$1` id, `$2` tenant, `$3` owner, `$4`-`$6` content, role, metadata (each NULL to keep),
/// `$7` time, `$8` tool calls (NULL keeps), `$9`/`$10` replace the tool call id / with,
/// `$11`/`$12` replace the parent / with, `$13`-`$16` the expected shape (role NULL: any).
/// No row when the message is not the owner's, its shape is not the expected one, or the
/// new parent is not an earlier message of its session.
const UPDATE: &str = concat!(
    "UPDATE messages m SET content = COALESCE($4, m.content), role = COALESCE($5, m.role), ",
    "metadata = COALESCE($6, m.metadata), updated_at = $7, tool_calls = COALESCE($8, m.tool_calls), ",
    "tool_call_id = CASE WHEN $9 THEN $10 ELSE m.tool_call_id END, ",
    "parent_message_id = CASE WHEN $11 THEN $12::uuid ELSE m.parent_message_id END ",
    "FROM sessions s WHERE m.id = $1 AND s.id = m.session_id AND s.tenant_id = $2 AND s.owner_id = $3 ",
    "AND ($13::text IS NULL OR (m.role = $13 AND (m.content <> '') = $14 ",
    "AND (m.tool_calls <> '[]'::jsonb) = $15 AND (m.tool_call_id IS NOT NULL) = $16)) ",
    "AND (NOT $11 OR $12::uuid IS NULL OR EXISTS (SELECT 1 FROM messages p WHERE p.id = $12 ",
    "AND p.session_id = m.session_id AND (p.created_at, p.id) < (m.created_at, m.id))) ",
    "RETURNING ",
    message_columns!()
);

/// Finds the message's session and locks it (the lock an append takes first too).
const LOCK_SESSION: &str = "SELECT m.session_id FROM messages m JOIN sessions s ON s.id = m.session_id \
     WHERE m.id = $1 AND s.tenant_id = $2 AND s.owner_id = $3 FOR UPDATE OF s";

/// Deletes the message (replies lose their parent: ON DELETE SET NULL) and decrements the
/// counter when it was still there.
const DELETE: &str = concat!(
    "WITH deleted AS (DELETE FROM messages m WHERE m.id = $1 AND m.session_id = $2 RETURNING ",
    message_columns!(),
    "), counted AS (UPDATE sessions SET message_count = message_count - 1 ",
    "WHERE id = $2 AND EXISTS (SELECT 1 FROM deleted)) ",
    "SELECT * FROM deleted"
);

/// The listing statement for one combination of filters and cursor. Parameters: `$1`
/// session, `$2` tenant, `$3` owner, `$4` limit + 1, `$5` offset, then role, search
/// pattern and the cursor's key and id when present.
///
/// One round trip, one snapshot: the owner's session (none → not found) joined to the
/// page. Without filters the total is the session's `message_count` (an index lookup, not
/// a count over a long conversation); with filters the matching messages are counted.
fn list_sql(query: &MessageQuery) -> String {
    let mut filters = String::new();
    let mut next = 6;
    if query.role.is_some() {
        filters.push_str(&format!(" AND m.role = ${next}"));
        next += 1;
    }
    if query.search.is_some() {
        filters.push_str(&format!(" AND m.content ILIKE ${next} ESCAPE '\\'"));
        next += 1;
    }
    let total = if filters.is_empty() {
        "s.message_count::bigint".to_owned()
    } else {
        format!("(SELECT count(*) FROM messages m WHERE m.session_id = s.id{filters})")
    };
    let (order, past) = match query.direction {
        Direction::Asc => ("", ">"),
        Direction::Desc => (" DESC", "<"),
    };
    let after = if query.after.is_some() {
        format!(" AND (m.created_at, m.id) {past} (${next}, ${})", next + 1)
    } else {
        String::new()
    };
    format!(
        "WITH target AS MATERIALIZED (\
         SELECT s.id, {total} AS total FROM sessions s WHERE s.id = $1 AND s.tenant_id = $2 AND s.owner_id = $3) \
         SELECT target.total, page.* FROM target LEFT JOIN LATERAL (\
         SELECT {columns} FROM messages m WHERE m.session_id = target.id{filters}{after} \
         ORDER BY m.created_at{order}, m.id{order} LIMIT $4 OFFSET $5) page ON true \
         ORDER BY page.created_at{order}, page.id{order}",
        columns = message_columns!(),
    )
}

impl PostgresStore {
    pub(super) async fn get_message_impl(&self, owner: &Owner, id: Uuid) -> Result<MessageRecord, StoreError> {
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            let row = sqlx::query(GET)
                .bind(id)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(classify)?;
            rows::message(&row.ok_or(DbError::NotFound)?)
        })
        .await
    }

    pub(super) async fn list_messages_impl(
        &self,
        owner: &Owner,
        session_id: Uuid,
        query: &MessageQuery,
    ) -> Result<Page<MessageRecord>, StoreError> {
        let sql = list_sql(query);
        let pattern = query.search.as_deref().map(contains_pattern);
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(session_id)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .bind(bigint(u64::from(query.limit) + 1))
                .bind(bigint(query.offset));
            if let Some(role) = query.role {
                statement = statement.bind(role.as_str());
            }
            if let Some(pattern) = &pattern {
                statement = statement.bind(pattern);
            }
            if let Some(after) = query.after {
                statement = statement.bind(after.key).bind(after.id);
            }
            let found = statement.fetch_all(&mut *conn).await.map_err(classify)?;
            // No row at all: the session is not the owner's.
            if found.is_empty() {
                return Err(DbError::NotFound);
            }
            let Listed { items, total } = listed(&found, rows::message)?;
            Ok(Page::from_fetched(items, query.limit, total))
        })
        .await
    }

    pub(super) async fn update_message_impl(
        &self,
        owner: &Owner,
        id: Uuid,
        patch: MessagePatch,
    ) -> Result<MessageRecord, StoreError> {
        let at = crate::store::now();
        self.run(|| async {
            let mut tx = self.inner.pool.begin().await.map_err(classify)?;
            let row = sqlx::query(UPDATE)
                .bind(id)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .bind(patch.content.as_deref())
                .bind(patch.role.map(|role| role.as_str()))
                .bind(patch.metadata.as_ref().map(Json))
                .bind(at)
                .bind(patch.tool_calls.as_ref().map(Json))
                .bind(patch.tool_call_id.is_some())
                .bind(patch.tool_call_id.as_ref().and_then(Option::as_deref))
                .bind(patch.parent_message_id.is_some())
                .bind(patch.parent_message_id.flatten())
                .bind(patch.expect.map(|shape| shape.role.as_str()))
                .bind(patch.expect.map(|shape| shape.has_content))
                .bind(patch.expect.map(|shape| shape.has_tool_calls))
                .bind(patch.expect.map(|shape| shape.has_tool_call_id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(|error| match violated_constraint(&error) {
                    // The new parent was deleted after the statement's snapshot saw it.
                    Some(("foreign_key", name)) if name == "messages_parent_message_id_fkey" => DbError::InvalidParent,
                    _ => classify(error),
                })?;
            let Some(row) = row else { return Err(self.why_not_updated(&mut tx, owner, id, &patch).await) };
            let record = rows::message(&row)?;
            let outbox = OutboxRows::new([(record.id, events::message_updated(owner, &record))])?;
            outbox.bind(sqlx::query(INSERT_ALL)).execute(&mut *tx).await.map_err(classify)?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(record)
        })
        .await
        .inspect(|_| self.wake_relay())
    }

    /// Why [`UPDATE`] changed no row: the message is not the owner's, its shape is not
    /// the expected one, or else the new parent was refused.
    async fn why_not_updated(
        &self,
        tx: &mut sqlx::PgConnection,
        owner: &Owner,
        id: Uuid,
        patch: &MessagePatch,
    ) -> DbError {
        let found = sqlx::query(GET).bind(id).bind(&owner.tenant_id).bind(&owner.user_id).fetch_optional(tx).await;
        match found {
            Ok(None) => DbError::NotFound,
            Ok(Some(row)) => match rows::message(&row) {
                Ok(current) if patch.expect.is_some_and(|shape| shape != current.shape()) => DbError::Conflict,
                Ok(_) => DbError::InvalidParent,
                Err(error) => error,
            },
            Err(error) => classify(error),
        }
    }

    pub(super) async fn delete_message_impl(&self, owner: &Owner, id: Uuid) -> Result<MessageRecord, StoreError> {
        self.run(|| async {
            let mut tx = self.inner.pool.begin().await.map_err(classify)?;
            let session_id: Uuid = sqlx::query_scalar(LOCK_SESSION)
                .bind(id)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?
                .ok_or(DbError::NotFound)?;
            let row = sqlx::query(DELETE)
                .bind(id)
                .bind(session_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?
                // Deleted by a concurrent call between the lookup and the lock.
                .ok_or(DbError::NotFound)?;
            let record = rows::message(&row)?;
            let outbox = OutboxRows::new([(record.id, events::message_deleted(owner, &record))])?;
            outbox.bind(sqlx::query(INSERT_ALL)).execute(&mut *tx).await.map_err(classify)?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(record)
        })
        .await
        .inspect(|_| self.wake_relay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Cursor, Role};

    fn query() -> MessageQuery {
        MessageQuery { role: None, search: None, limit: 50, offset: 0, after: None, direction: Direction::Asc }
    }

    #[test]
    fn unfiltered_listings_take_the_total_from_the_session() {
        let plain = list_sql(&query());
        assert!(plain.contains("s.message_count::bigint AS total"));
        assert!(!plain.contains("count(*)"));
        let cursor = Cursor { key: chrono::Utc::now(), id: Uuid::nil() };
        let keyset = list_sql(&MessageQuery { after: Some(cursor), ..query() });
        assert!(keyset.contains("AND (m.created_at, m.id) > ($6, $7)"));
    }

    #[test]
    fn filtered_listings_count_matches() {
        let both = list_sql(&MessageQuery {
            role: Some(Role::User),
            search: Some("x".into()),
            after: Some(Cursor { key: chrono::Utc::now(), id: Uuid::nil() }),
            ..query()
        });
        assert!(both.contains("(SELECT count(*) FROM messages m WHERE m.session_id = s.id AND m.role = $6 AND m.content ILIKE $7 ESCAPE '\\')"));
        assert!(both.contains("> ($8, $9)"));
    }
}
