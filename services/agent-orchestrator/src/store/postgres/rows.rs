//! Turning result rows into records, by column name. Every query selects the columns of
//! `agent_columns!` / `run_columns!`; a value the store cannot accept (an unknown status,
//! JSON of the wrong shape) is reported as corrupt data.

use sqlx::Row as _;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

use super::error::{DbError, classify};
use crate::store::{
    AgentDefinition, AgentRecord, AgentStatus, Approval, Concurrency, JsonObject, ModelSettings, PendingToolCall,
    RunError, RunPrincipal, RunRecord, RunRequest, RunStatus, RunUsage,
};

/// The columns of an agent, in the order of the agent insert.
macro_rules! agent_columns {
    () => {
        concat!(
            "agents.id, agents.user_id, ",
            definition_columns!(),
            ", ",
            agent_status!(),
            " AS status, created_at, updated_at"
        )
    };
}
pub(super) use agent_columns;

/// The columns of an agent's definition (what a run needs of it).
macro_rules! definition_columns {
    () => {
        "name, description, system_prompt, model, tools, approval, concurrency, metadata"
    };
}
pub(super) use definition_columns;

/// The status of the agent of the row at hand, derived from its runs as it is read (it
/// mirrors `lifecycle::derive_status`): index probes on `runs (agent_id, status)` and
/// `runs (agent_id, completed_at)`. It is never stored, so no run writes the agent's row
/// and runs of one agent never queue behind each other.
macro_rules! agent_status {
    () => {
        "CASE WHEN EXISTS (SELECT 1 FROM runs r WHERE r.agent_id = agents.id AND r.status IN ('queued', 'running')) \
         THEN 'processing' \
         WHEN EXISTS (SELECT 1 FROM runs r WHERE r.agent_id = agents.id AND r.status = 'requires_action') \
         THEN 'waiting' \
         ELSE COALESCE((SELECT CASE r.status WHEN 'completed' THEN 'completed' WHEN 'failed' THEN 'error' \
         ELSE 'idle' END FROM runs r WHERE r.agent_id = agents.id AND r.completed_at IS NOT NULL \
         ORDER BY r.completed_at DESC, r.id DESC LIMIT 1), 'idle') END"
    };
}
pub(super) use agent_status;

/// The columns of a run, in the order of the run insert (`held_since` is not read).
macro_rules! run_columns {
    () => {
        "id, agent_id, session_id, user_id, principal, request, status, user_message_id, response_message_id, \
         usage, error, step_count, pending_tool_calls, idempotency_key, last_sequence, metadata, created_at, \
         started_at, completed_at, lease_owner, lease_expires_at, holds_session"
    };
}
pub(super) use run_columns;

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, DbError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(classify)
}

/// An agent's definition, from the columns of `definition_columns!`.
pub(super) fn definition(row: &PgRow) -> Result<AgentDefinition, DbError> {
    let concurrency: String = get(row, "concurrency")?;
    Ok(AgentDefinition {
        name: get(row, "name")?,
        description: get(row, "description")?,
        system_prompt: get(row, "system_prompt")?,
        model: get::<Json<ModelSettings>>(row, "model")?.0,
        tools: get(row, "tools")?,
        approval: get::<Json<Approval>>(row, "approval")?.0,
        concurrency: Concurrency::parse(&concurrency)
            .ok_or_else(|| DbError::corrupt(format!("unknown concurrency policy {concurrency:?}")))?,
        metadata: get::<Json<JsonObject>>(row, "metadata")?.0,
    })
}

/// An agent row.
pub(super) fn agent(row: &PgRow) -> Result<AgentRecord, DbError> {
    let status: String = get(row, "status")?;
    Ok(AgentRecord {
        id: get(row, "id")?,
        user_id: get(row, "user_id")?,
        definition: definition(row)?,
        status: AgentStatus::parse(&status)
            .ok_or_else(|| DbError::corrupt(format!("unknown agent status {status:?}")))?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// A run row.
pub(super) fn run(row: &PgRow) -> Result<RunRecord, DbError> {
    let status: String = get(row, "status")?;
    let step_count: i32 = get(row, "step_count")?;
    let last_sequence: i64 = get(row, "last_sequence")?;
    Ok(RunRecord {
        id: get(row, "id")?,
        agent_id: get(row, "agent_id")?,
        session_id: get(row, "session_id")?,
        principal: get::<Json<RunPrincipal>>(row, "principal")?.0,
        request: get::<Json<RunRequest>>(row, "request")?.0,
        status: RunStatus::parse(&status).ok_or_else(|| DbError::corrupt(format!("unknown run status {status:?}")))?,
        user_message_id: get(row, "user_message_id")?,
        response_message_id: get(row, "response_message_id")?,
        usage: get::<Json<RunUsage>>(row, "usage")?.0,
        error: get::<Option<Json<RunError>>>(row, "error")?.map(|json| json.0),
        step_count: u32::try_from(step_count).map_err(|_| DbError::corrupt("negative step count"))?,
        pending_tool_calls: get::<Json<Vec<PendingToolCall>>>(row, "pending_tool_calls")?.0,
        idempotency_key: get(row, "idempotency_key")?,
        last_sequence: u64::try_from(last_sequence).map_err(|_| DbError::corrupt("negative sequence"))?,
        metadata: get::<Json<JsonObject>>(row, "metadata")?.0,
        created_at: get(row, "created_at")?,
        started_at: get(row, "started_at")?,
        completed_at: get(row, "completed_at")?,
        lease_owner: get(row, "lease_owner")?,
        lease_expires_at: get(row, "lease_expires_at")?,
        holds_session: get(row, "holds_session")?,
    })
}
