//! Tools: create, get, list, update, delete, and discovery's sync, each with its events.

use agentmesh_postgres::listing::{Listed, bigint, contains_pattern, listed};
use std::collections::BTreeMap;

use agentmesh_postgres::error::violated_constraint;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use super::PostgresStore;
use super::error::{DbError, classify, classify_commit, classify_write};
use super::rows::{self, server_columns, tool_columns};
use crate::events;
use crate::store::{DiscoveredTool, Page, StoreError, SyncOutcome, ToolDefinition, ToolQuery, ToolRecord, now, sync};

const INSERT: &str = concat!(
    "INSERT INTO tools (",
    tool_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
);

/// Every column but the id and creation time, from a whole record (`$1` the id).
const REPLACE: &str = "UPDATE tools SET name = $2, description = $3, schema = $4, mcp_server_id = $5, enabled = $6, \
                       metadata = $7, title = $8, output_schema = $9, annotations = $10, remote_name = $11, \
                       withdrawn = $12, updated_at = $14 WHERE id = $1";

/// A client's update: the definition, keeping `remote_name`.
const UPDATE: &str = concat!(
    "UPDATE tools SET name = $2, description = $3, schema = $4, mcp_server_id = $5, enabled = $6, metadata = $7, ",
    "title = $8, output_schema = $9, annotations = $10, withdrawn = false, updated_at = $11 WHERE id = $1 RETURNING ",
    tool_columns!()
);

const GET: &str = concat!("SELECT ", tool_columns!(), " FROM tools WHERE id = $1");
const GET_BY_NAME: &str = concat!("SELECT ", tool_columns!(), " FROM tools WHERE name = $1");
const DELETE: &str = concat!("DELETE FROM tools WHERE id = $1 RETURNING ", tool_columns!());

/// `$1` server, `$2` enabled, `$3` search pattern, `$7` names (empty: any).
macro_rules! list_filter {
    () => {
        "($1::uuid IS NULL OR mcp_server_id = $1) AND ($2::boolean IS NULL OR enabled = $2) \
         AND ($3::text IS NULL OR (name COLLATE \"default\") ILIKE $3 ESCAPE '\\' OR description ILIKE $3 ESCAPE '\\') \
         AND (cardinality($7::text[]) = 0 OR name = ANY($7))"
    };
}

/// `$4` cursor (last name), `$5` limit + 1, `$6` offset; the total from the same snapshot.
const LIST: &str = concat!(
    "WITH counted AS MATERIALIZED (SELECT count(*) AS total FROM tools WHERE ",
    list_filter!(),
    ") SELECT counted.total, page.* FROM counted LEFT JOIN (SELECT ",
    tool_columns!(),
    " FROM tools WHERE ",
    list_filter!(),
    " AND ($4::text IS NULL OR name > $4) ORDER BY name LIMIT $5 OFFSET $6) page ON true ORDER BY page.name"
);

const LOCK_SERVER: &str = concat!("SELECT ", server_columns!(), " FROM mcp_servers WHERE id = $1 FOR UPDATE");
const SERVER_TOOLS: &str = concat!("SELECT ", tool_columns!(), " FROM tools WHERE mcp_server_id = $1 ORDER BY name");
/// Serialises the naming of discovered tools across syncs (key: the text `tool names`).
const LOCK_NAMES: &str = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.tool names'))";
const ALL_NAMES: &str = "SELECT name, id FROM tools";

/// Binds a whole tool record as `$1`-`$14` in [`tool_columns!`] order.
fn bind_tool<'q>(query: Query<'q, Postgres, PgArguments>, tool: &'q ToolRecord) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(tool.id)
        .bind(&tool.name)
        .bind(&tool.description)
        .bind(Json(&tool.schema))
        .bind(tool.mcp_server_id)
        .bind(tool.enabled)
        .bind(Json(&tool.metadata))
        .bind(tool.title.as_deref())
        .bind(tool.output_schema.as_ref().map(Json))
        .bind(tool.annotations.as_ref().map(Json))
        .bind(tool.remote_name.as_deref())
        .bind(tool.withdrawn)
        .bind(tool.created_at)
        .bind(tool.updated_at)
}

/// Writes `tool` as a new row (`insert`) or over its existing row.
async fn put(conn: &mut PgConnection, tool: &ToolRecord, insert: bool) -> Result<(), DbError> {
    let statement = if insert { INSERT } else { REPLACE };
    match bind_tool(sqlx::query(statement), tool).execute(conn).await {
        Ok(_) => Ok(()),
        // A direct create took the name since we read the names (syncs exclude each
        // other): retried as a whole, the sync then sees it.
        Err(error) if matches!(violated_constraint(&error), Some(("unique", _))) => {
            Err(DbError::Db(agentmesh_postgres::DbError::Transient(error)))
        }
        Err(error) => Err(classify_write(error, &tool.name)),
    }
}

impl PostgresStore {
    pub(super) async fn create_tool_impl(&self, tool: ToolDefinition) -> Result<ToolRecord, StoreError> {
        let at = now();
        let record = ToolRecord {
            id: Uuid::now_v7(),
            name: tool.name,
            description: tool.description,
            schema: tool.schema,
            mcp_server_id: tool.mcp_server_id,
            enabled: tool.enabled,
            metadata: tool.metadata,
            title: tool.title,
            output_schema: tool.output_schema,
            annotations: tool.annotations,
            remote_name: None,
            withdrawn: false,
            created_at: at,
            updated_at: at,
        };
        let event = events::tool_created(&record);
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            bind_tool(sqlx::query(INSERT), &record)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify_write(e, &record.name))?;
            self.outbox().enqueue(&mut tx, event.clone()).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(())
        })
        .await?;
        Ok(record)
    }

    pub(super) async fn get_tool_impl(&self, id: Uuid) -> Result<ToolRecord, StoreError> {
        self.run(|| async {
            let row = sqlx::query(GET).bind(id).fetch_optional(self.pool()).await.map_err(classify)?;
            rows::tool(&row.ok_or(DbError::NotFound)?)
        })
        .await
    }

    pub(super) async fn get_tool_by_name_impl(&self, name: &str) -> Result<ToolRecord, StoreError> {
        self.run(|| async {
            let row = sqlx::query(GET_BY_NAME).bind(name).fetch_optional(self.pool()).await.map_err(classify)?;
            rows::tool(&row.ok_or(DbError::NotFound)?)
        })
        .await
    }

    pub(super) async fn list_tools_impl(&self, query: &ToolQuery) -> Result<Page<ToolRecord>, StoreError> {
        let pattern = query.search.as_deref().map(contains_pattern);
        self.run(|| async {
            let found = sqlx::query(LIST)
                .bind(query.mcp_server_id)
                .bind(query.enabled)
                .bind(pattern.as_deref())
                .bind(query.after.as_ref().map(|c| c.name.as_str()))
                .bind(bigint(u64::from(query.limit) + 1))
                .bind(bigint(if query.after.is_some() { 0 } else { query.offset }))
                .bind(&query.names)
                .fetch_all(self.pool())
                .await
                .map_err(classify)?;
            let Listed { items, total } = listed(&found, rows::tool)?;
            Ok(Page::from_fetched(items, query.limit, total))
        })
        .await
    }

    pub(super) async fn update_tool_impl(&self, id: Uuid, tool: ToolDefinition) -> Result<ToolRecord, StoreError> {
        let at = now();
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let row = sqlx::query(UPDATE)
                .bind(id)
                .bind(&tool.name)
                .bind(&tool.description)
                .bind(Json(&tool.schema))
                .bind(tool.mcp_server_id)
                .bind(tool.enabled)
                .bind(Json(&tool.metadata))
                .bind(tool.title.as_deref())
                .bind(tool.output_schema.as_ref().map(Json))
                .bind(tool.annotations.as_ref().map(Json))
                .bind(at)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| classify_write(e, &tool.name))?;
            let record = rows::tool(&row.ok_or(DbError::NotFound)?)?;
            self.outbox().enqueue(&mut tx, events::tool_updated(&record)).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(record)
        })
        .await
    }

    pub(super) async fn delete_tool_impl(&self, id: Uuid) -> Result<ToolRecord, StoreError> {
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let row = sqlx::query(DELETE).bind(id).fetch_optional(&mut *tx).await.map_err(classify)?;
            let record = rows::tool(&row.ok_or(DbError::NotFound)?)?;
            self.outbox().enqueue(&mut tx, events::tool_deleted(&record)).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(record)
        })
        .await
    }

    pub(super) async fn sync_tools_impl(
        &self,
        server_id: Uuid,
        discovered: &[DiscoveredTool],
    ) -> Result<SyncOutcome, StoreError> {
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let server = sqlx::query(LOCK_SERVER).bind(server_id).fetch_optional(&mut *tx).await.map_err(classify)?;
            let server = rows::server(&server.ok_or(DbError::NotFound)?)?;
            sqlx::query(LOCK_NAMES).execute(&mut *tx).await.map_err(classify)?;
            let mut names = BTreeMap::new();
            for row in sqlx::query(ALL_NAMES).fetch_all(&mut *tx).await.map_err(classify)? {
                let name: String = sqlx::Row::try_get(&row, "name").map_err(classify)?;
                names.insert(name, sqlx::Row::try_get(&row, "id").map_err(classify)?);
            }
            let known = sqlx::query(SERVER_TOOLS).bind(server_id).fetch_all(&mut *tx).await.map_err(classify)?;
            let known = known.iter().map(rows::tool).collect::<Result<Vec<_>, _>>()?;
            let mut outcome = sync::plan(&server.tool_prefix(), server_id, known, &mut names, discovered, now());
            // Renames first: a new tool may take a name a rename frees (see `sync::plan`).
            for tool in &outcome.updated {
                put(&mut tx, tool, false).await?;
            }
            for tool in &outcome.created {
                put(&mut tx, tool, true).await?;
            }
            for tool in &outcome.disabled {
                put(&mut tx, tool, false).await?;
            }
            let changed = outcome.created.iter().map(events::tool_created);
            let changed = changed.chain(outcome.updated.iter().chain(&outcome.disabled).map(events::tool_updated));
            let changed: Vec<_> = changed.collect();
            if !changed.is_empty() {
                self.outbox().enqueue_all(&mut tx, changed).await?;
            }
            let after = sqlx::query(SERVER_TOOLS).bind(server_id).fetch_all(&mut *tx).await.map_err(classify)?;
            outcome.tools = after.iter().map(rows::tool).collect::<Result<_, _>>()?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(outcome)
        })
        .await
    }
}
