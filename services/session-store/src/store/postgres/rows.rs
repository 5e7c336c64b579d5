//! Turning result rows into records, by column name.
//!
//! Every query selects the columns listed by `session_columns!` / `message_columns!`
//! under their own names; a value the store cannot accept (an unknown role, a JSON value
//! that is not an object) is reported as corrupt data rather than guessed at.

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

use super::error::{DbError, classify};
use crate::store::{JsonObject, MessageRecord, Owner, Role, SessionRecord, ToolCall};

/// The columns of a session, as selected from `sessions` (unqualified).
macro_rules! session_columns {
    () => {
        "id, tenant_id, owner_id, user_id, title, metadata, message_count, last_activity, created_at, updated_at"
    };
}
pub(super) use session_columns;

/// The columns of a message, qualified by the alias `m`.
macro_rules! message_columns {
    () => {
        "m.id, m.session_id, m.role, m.content, m.metadata, m.tool_calls, m.tool_call_id, m.parent_message_id, \
         m.created_at, m.updated_at"
    };
}
pub(super) use message_columns;

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, DbError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(classify)
}

/// A session row.
pub(super) fn session(row: &PgRow) -> Result<SessionRecord, DbError> {
    Ok(SessionRecord {
        id: get(row, "id")?,
        owner: Owner { tenant_id: get(row, "tenant_id")?, user_id: get(row, "owner_id")? },
        user_id: get(row, "user_id")?,
        title: get(row, "title")?,
        metadata: get::<Json<JsonObject>>(row, "metadata")?.0,
        message_count: i64::from(get::<i32>(row, "message_count")?),
        last_activity: get(row, "last_activity")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// A message row.
pub(super) fn message(row: &PgRow) -> Result<MessageRecord, DbError> {
    let role: String = get(row, "role")?;
    Ok(MessageRecord {
        id: get(row, "id")?,
        session_id: get(row, "session_id")?,
        role: Role::parse(&role).ok_or_else(|| DbError::corrupt(format!("unknown role {role:?}")))?,
        content: get(row, "content")?,
        metadata: get::<Json<JsonObject>>(row, "metadata")?.0,
        tool_calls: get::<Json<Vec<ToolCall>>>(row, "tool_calls")?.0,
        tool_call_id: get(row, "tool_call_id")?,
        parent_message_id: get(row, "parent_message_id")?,
        created_at: get::<DateTime<Utc>>(row, "created_at")?,
        updated_at: get::<DateTime<Utc>>(row, "updated_at")?,
    })
}
