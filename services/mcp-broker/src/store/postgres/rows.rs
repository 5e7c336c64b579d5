//! Turning result rows into records, by column name. Every query selects the columns of
//! `tool_columns!` / `server_columns!`; a value the store cannot accept (an unknown
//! transport, a JSON value of the wrong shape) is reported as corrupt data.

use sqlx::Row as _;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

use super::error::{DbError, classify};
use crate::store::{
    Authentication, JsonObject, McpServerRecord, ServerConfig, ServerStatus, StdioCommand, ToolAnnotations, ToolRecord,
    Transport,
};

/// The columns of a tool, in the order of the tool inserts.
macro_rules! tool_columns {
    () => {
        "id, name, description, schema, mcp_server_id, enabled, metadata, title, output_schema, annotations, \
         remote_name, withdrawn, created_at, updated_at"
    };
}
pub(super) use tool_columns;

/// The columns of a server, in the order of the server inserts.
macro_rules! server_columns {
    () => {
        "id, name, description, endpoint, authentication, capabilities, health_check_url, enabled, transport, stdio, \
         tool_prefix, status, last_health_check, protocol_version, server_info, created_at, updated_at"
    };
}
pub(super) use server_columns;

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, DbError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(classify)
}

/// A tool row.
pub(super) fn tool(row: &PgRow) -> Result<ToolRecord, DbError> {
    Ok(ToolRecord {
        id: get(row, "id")?,
        name: get(row, "name")?,
        description: get(row, "description")?,
        schema: get::<Json<JsonObject>>(row, "schema")?.0,
        mcp_server_id: get(row, "mcp_server_id")?,
        enabled: get(row, "enabled")?,
        metadata: get::<Json<JsonObject>>(row, "metadata")?.0,
        title: get(row, "title")?,
        output_schema: get::<Option<Json<JsonObject>>>(row, "output_schema")?.map(|j| j.0),
        annotations: get::<Option<Json<ToolAnnotations>>>(row, "annotations")?.map(|j| j.0),
        remote_name: get(row, "remote_name")?,
        withdrawn: get(row, "withdrawn")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// A server row.
pub(super) fn server(row: &PgRow) -> Result<McpServerRecord, DbError> {
    let transport: String = get(row, "transport")?;
    let status: String = get(row, "status")?;
    Ok(McpServerRecord {
        id: get(row, "id")?,
        config: ServerConfig {
            name: get(row, "name")?,
            description: get(row, "description")?,
            endpoint: get(row, "endpoint")?,
            authentication: get::<Json<Authentication>>(row, "authentication")?.0,
            capabilities: get(row, "capabilities")?,
            health_check_url: get(row, "health_check_url")?,
            enabled: get(row, "enabled")?,
            transport: Transport::parse(&transport)
                .ok_or_else(|| DbError::corrupt(format!("unknown transport {transport:?}")))?,
            stdio: get::<Option<Json<StdioCommand>>>(row, "stdio")?.map(|j| j.0),
            tool_prefix: get(row, "tool_prefix")?,
        },
        status: ServerStatus::parse(&status).ok_or_else(|| DbError::corrupt(format!("unknown status {status:?}")))?,
        last_health_check: get(row, "last_health_check")?,
        protocol_version: get(row, "protocol_version")?,
        server_info: get(row, "server_info")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}
