//! Agents: create, get, list, update, delete, each with its event.

use agentmesh_postgres::listing::{Listed, bigint, contains_pattern, listed};
use sqlx::types::Json;
use uuid::Uuid;

use super::PostgresStore;
use super::error::{DbError, classify, classify_agent_write, classify_commit};
use super::rows::{self, agent_columns, agent_status, definition_columns};
use crate::events;
use crate::store::{AgentDefinition, AgentQuery, AgentRecord, AgentStatus, Page, StoreError, now};

const INSERT: &str = "INSERT INTO agents (id, user_id, name, description, system_prompt, model, tools, approval, \
     concurrency, metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// A client's update: the definition (`$3`-`$10`) and the update time, for the owner only.
const UPDATE: &str = concat!(
    "UPDATE agents SET name = $3, description = $4, system_prompt = $5, model = $6, tools = $7, approval = $8, ",
    "concurrency = $9, metadata = $10, updated_at = $11 WHERE id = $1 AND user_id = $2 RETURNING ",
    agent_columns!()
);

const GET: &str = concat!("SELECT ", agent_columns!(), " FROM agents WHERE id = $1 AND user_id = $2");
const DELETE: &str = concat!("DELETE FROM agents WHERE id = $1 AND user_id = $2 RETURNING ", agent_columns!());

/// `$1` owner, `$2` status, `$3` search pattern.
macro_rules! list_filter {
    () => {
        concat!(
            "user_id = $1 AND ($2::text IS NULL OR (",
            agent_status!(),
            ") = $2) AND ($3::text IS NULL OR (name COLLATE \"default\") ILIKE $3 ESCAPE '\\' \
             OR description ILIKE $3 ESCAPE '\\')"
        )
    };
}

/// `$4` cursor (last id), `$5` limit + 1, `$6` offset; the total from the same snapshot.
const LIST: &str = concat!(
    "WITH counted AS MATERIALIZED (SELECT count(*) AS total FROM agents WHERE ",
    list_filter!(),
    ") SELECT counted.total, page.* FROM counted LEFT JOIN (SELECT ",
    agent_columns!(),
    " FROM agents WHERE ",
    list_filter!(),
    " AND ($4::uuid IS NULL OR id < $4) ORDER BY id DESC LIMIT $5 OFFSET $6) page ON true ORDER BY page.id DESC"
);

impl PostgresStore {
    pub(super) async fn create_agent_impl(
        &self,
        user_id: &str,
        agent: AgentDefinition,
    ) -> Result<AgentRecord, StoreError> {
        let at = now();
        let record = AgentRecord {
            id: Uuid::now_v7(),
            user_id: user_id.to_owned(),
            definition: agent,
            status: AgentStatus::Idle,
            created_at: at,
            updated_at: at,
        };
        let event = events::agent_created(&record);
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let definition = &record.definition;
            sqlx::query(INSERT)
                .bind(record.id)
                .bind(&record.user_id)
                .bind(&definition.name)
                .bind(definition.description.as_deref())
                .bind(definition.system_prompt.as_deref())
                .bind(Json(&definition.model))
                .bind(&definition.tools)
                .bind(Json(&definition.approval))
                .bind(definition.concurrency.as_str())
                .bind(Json(&definition.metadata))
                .bind(record.created_at)
                .bind(record.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify_agent_write(e, &definition.name))?;
            self.outbox().enqueue(&mut tx, event.clone()).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(())
        })
        .await?;
        Ok(record)
    }

    pub(super) async fn get_agent_impl(&self, user_id: &str, id: Uuid) -> Result<AgentRecord, StoreError> {
        self.run(|| async {
            let row = sqlx::query(GET).bind(id).bind(user_id).fetch_optional(self.pool()).await.map_err(classify)?;
            rows::agent(&row.ok_or(DbError::NotFound)?)
        })
        .await
    }

    pub(super) async fn list_agents_impl(
        &self,
        user_id: &str,
        query: &AgentQuery,
    ) -> Result<Page<AgentRecord>, StoreError> {
        let pattern = query.search.as_deref().map(contains_pattern);
        self.run(|| async {
            let found = sqlx::query(LIST)
                .bind(user_id)
                .bind(query.status.map(AgentStatus::as_str))
                .bind(pattern.as_deref())
                .bind(query.after)
                .bind(bigint(u64::from(query.limit) + 1))
                .bind(bigint(if query.after.is_some() { 0 } else { query.offset }))
                .fetch_all(self.pool())
                .await
                .map_err(classify)?;
            let Listed { items, total } = listed(&found, rows::agent)?;
            Ok(Page::from_fetched(items, query.limit, total))
        })
        .await
    }

    pub(super) async fn update_agent_impl(
        &self,
        user_id: &str,
        id: Uuid,
        agent: AgentDefinition,
    ) -> Result<AgentRecord, StoreError> {
        let at = now();
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let row = sqlx::query(UPDATE)
                .bind(id)
                .bind(user_id)
                .bind(&agent.name)
                .bind(agent.description.as_deref())
                .bind(agent.system_prompt.as_deref())
                .bind(Json(&agent.model))
                .bind(&agent.tools)
                .bind(Json(&agent.approval))
                .bind(agent.concurrency.as_str())
                .bind(Json(&agent.metadata))
                .bind(at)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| classify_agent_write(e, &agent.name))?;
            let record = rows::agent(&row.ok_or(DbError::NotFound)?)?;
            self.outbox().enqueue(&mut tx, events::agent_updated(&record)).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(record)
        })
        .await
    }

    pub(super) async fn delete_agent_impl(&self, user_id: &str, id: Uuid) -> Result<AgentRecord, StoreError> {
        self.write(|| async {
            let mut tx = self.pool().begin().await.map_err(classify)?;
            let row = sqlx::query(DELETE).bind(id).bind(user_id).fetch_optional(&mut *tx).await.map_err(classify)?;
            let record = rows::agent(&row.ok_or(DbError::NotFound)?)?;
            self.outbox().enqueue(&mut tx, events::agent_deleted(&record)).await?;
            tx.commit().await.map_err(classify_commit)?;
            Ok(record)
        })
        .await
    }
}
