//! MCP servers: create, get, list, update, delete (with their tools), and what discovery
//! and health checks record, each with its events.

use agentmesh_postgres::listing::{Listed, bigint, contains_pattern, listed};
use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::types::Json;
use uuid::Uuid;

use super::PostgresStore;
use super::error::{DbError, classify, classify_commit, classify_write};
use super::rows::{self, server_columns, tool_columns};
use crate::events;
use crate::store::{
    Handshake, HealthChange, McpServerRecord, Page, ServerConfig, ServerQuery, ServerStatus, StoreError, ToolRecord,
    now,
};

const INSERT: &str = concat!(
    "INSERT INTO mcp_servers (",
    server_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
);

/// The configuration columns (`$2`-`$11`, in [`server_columns!`] order) and `updated_at`.
const UPDATE: &str = concat!(
    "UPDATE mcp_servers SET name = $2, description = $3, endpoint = $4, authentication = $5, capabilities = $6, ",
    "health_check_url = $7, enabled = $8, transport = $9, stdio = $10, tool_prefix = $11, updated_at = $12 ",
    "WHERE id = $1 RETURNING ",
    server_columns!()
);

const GET: &str = concat!("SELECT ", server_columns!(), " FROM mcp_servers WHERE id = $1");
const LOCK: &str = concat!("SELECT ", server_columns!(), " FROM mcp_servers WHERE id = $1 FOR UPDATE");
const DELETE_TOOLS: &str = concat!("DELETE FROM tools WHERE mcp_server_id = $1 RETURNING ", tool_columns!());
const DELETE: &str = concat!("DELETE FROM mcp_servers WHERE id = $1 RETURNING ", server_columns!());
const HANDSHAKE: &str = concat!(
    "UPDATE mcp_servers SET capabilities = $2, protocol_version = $3, server_info = $4, updated_at = $5 ",
    "WHERE id = $1 RETURNING ",
    server_columns!()
);
const HEALTH: &str =
    concat!("UPDATE mcp_servers SET status = $2, last_health_check = $3 WHERE id = $1 RETURNING ", server_columns!());

/// `$1` enabled, `$2` search pattern.
macro_rules! list_filter {
    () => {
        "($1::boolean IS NULL OR enabled = $1) \
         AND ($2::text IS NULL OR (name COLLATE \"default\") ILIKE $2 ESCAPE '\\' OR description ILIKE $2 ESCAPE '\\')"
    };
}

/// `$3` cursor (last name), `$4` limit + 1, `$5` offset; the total from the same snapshot.
const LIST: &str = concat!(
    "WITH counted AS MATERIALIZED (SELECT count(*) AS total FROM mcp_servers WHERE ",
    list_filter!(),
    ") SELECT counted.total, page.* FROM counted LEFT JOIN (SELECT ",
    server_columns!(),
    " FROM mcp_servers WHERE ",
    list_filter!(),
    " AND ($3::text IS NULL OR name > $3) ORDER BY name LIMIT $4 OFFSET $5) page ON true ORDER BY page.name"
);

/// Binds a configuration as `$2`-`$11` (after the id) in [`server_columns!`] order.
fn bind_config<'q>(
    query: Query<'q, Postgres, PgArguments>,
    config: &'q ServerConfig,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(&config.name)
        .bind(config.description.as_deref())
        .bind(&config.endpoint)
        .bind(Json(&config.authentication))
        .bind(&config.capabilities)
        .bind(config.health_check_url.as_deref())
        .bind(config.enabled)
        .bind(config.transport.as_str())
        .bind(config.stdio.as_ref().map(Json))
        .bind(config.tool_prefix.as_deref())
}

impl PostgresStore {
    pub(super) async fn create_server_impl(&self, server: ServerConfig) -> Result<McpServerRecord, StoreError> {
        let at = now();
        let record = McpServerRecord {
            id: Uuid::now_v7(),
            config: server,
            status: ServerStatus::Unknown,
            last_health_check: None,
            protocol_version: String::new(),
            server_info: String::new(),
            created_at: at,
            updated_at: at,
        };
        let event = events::server_created(&record);
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            bind_config(sqlx::query(INSERT).bind(record.id), &record.config)
                .bind(record.status.as_str())
                .bind(record.last_health_check)
                .bind(&record.protocol_version)
                .bind(&record.server_info)
                .bind(record.created_at)
                .bind(record.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify_write(e, &record.config.name))?;
            self.outbox().enqueue(&mut tx, event.clone()).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(())
        })
        .await?;
        Ok(record)
    }

    pub(super) async fn get_server_impl(&self, id: Uuid) -> Result<McpServerRecord, StoreError> {
        self.run(|| async {
            let row = sqlx::query(GET).bind(id).fetch_optional(self.pool()).await.map_err(classify)?;
            rows::server(&row.ok_or(DbError::NotFound)?)
        })
        .await
    }

    pub(super) async fn list_servers_impl(&self, query: &ServerQuery) -> Result<Page<McpServerRecord>, StoreError> {
        let pattern = query.search.as_deref().map(contains_pattern);
        self.run(|| async {
            let found = sqlx::query(LIST)
                .bind(query.enabled)
                .bind(pattern.as_deref())
                .bind(query.after.as_ref().map(|c| c.name.as_str()))
                .bind(bigint(u64::from(query.limit) + 1))
                .bind(bigint(if query.after.is_some() { 0 } else { query.offset }))
                .fetch_all(self.pool())
                .await
                .map_err(classify)?;
            let Listed { items, total } = listed(&found, rows::server)?;
            Ok(Page::from_fetched(items, query.limit, total))
        })
        .await
    }

    pub(super) async fn update_server_impl(
        &self,
        id: Uuid,
        server: ServerConfig,
    ) -> Result<McpServerRecord, StoreError> {
        let at = now();
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let row = bind_config(sqlx::query(UPDATE).bind(id), &server)
                .bind(at)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| classify_write(e, &server.name))?;
            let record = rows::server(&row.ok_or(DbError::NotFound)?)?;
            self.outbox().enqueue(&mut tx, events::server_updated(&record)).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(record)
        })
        .await
    }

    pub(super) async fn delete_server_impl(&self, id: Uuid) -> Result<(McpServerRecord, Vec<ToolRecord>), StoreError> {
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let Some(server) = sqlx::query(LOCK).bind(id).fetch_optional(&mut *tx).await.map_err(classify)? else {
                return Err(DbError::NotFound);
            };
            let server = rows::server(&server)?;
            let deleted = sqlx::query(DELETE_TOOLS).bind(id).fetch_all(&mut *tx).await.map_err(classify)?;
            let mut tools = deleted.iter().map(rows::tool).collect::<Result<Vec<_>, _>>()?;
            tools.sort_by(|a, b| a.name.cmp(&b.name));
            sqlx::query(DELETE).bind(id).execute(&mut *tx).await.map_err(classify)?;
            self.outbox().enqueue_all(&mut tx, events::server_and_tools_deleted(&server, &tools)).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok((server, tools))
        })
        .await
    }

    pub(super) async fn record_handshake_impl(
        &self,
        id: Uuid,
        handshake: &Handshake,
    ) -> Result<McpServerRecord, StoreError> {
        let at = now();
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let row = sqlx::query(LOCK).bind(id).fetch_optional(&mut *tx).await.map_err(classify)?;
            let current = rows::server(&row.ok_or(DbError::NotFound)?)?;
            if current.config.capabilities == handshake.capabilities
                && current.protocol_version == handshake.protocol_version
                && current.server_info == handshake.server_info
            {
                return Ok(current);
            }
            let row = sqlx::query(HANDSHAKE)
                .bind(id)
                .bind(&handshake.capabilities)
                .bind(&handshake.protocol_version)
                .bind(&handshake.server_info)
                .bind(at)
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
            let record = rows::server(&row)?;
            self.outbox().enqueue(&mut tx, events::server_updated(&record)).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(record)
        })
        .await
    }

    pub(super) async fn record_health_impl(
        &self,
        id: Uuid,
        status: ServerStatus,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<HealthChange, StoreError> {
        let at = agentmesh_postgres::micros(at);
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let row = sqlx::query(LOCK).bind(id).fetch_optional(&mut *tx).await.map_err(classify)?;
            let previous = rows::server(&row.ok_or(DbError::NotFound)?)?.status;
            let row = sqlx::query(HEALTH)
                .bind(id)
                .bind(status.as_str())
                .bind(at)
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
            let server = rows::server(&row)?;
            if previous != status {
                let event = events::server_health_changed(&server, previous, reason);
                self.outbox().enqueue(&mut tx, event).await?;
            }
            tx.commit().await.map_err(classify_commit)?;
            Ok(HealthChange { server, previous })
        })
        .await
    }
}
