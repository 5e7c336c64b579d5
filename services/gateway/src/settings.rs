//! The gateway's own settings (`GATEWAY_*`), declared here rather than in the runtime
//! (see `agentmesh_runtime::config::Settings`).

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::config::{Settings, SettingsReader};

use crate::auth::store::{DEFAULT_SCHEMA, SCHEMA_ENV};

/// The gateway's settings beyond the runtime's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// `GATEWAY_DB_SCHEMA`: the PostgreSQL schema of the API key tables (default
    /// [`DEFAULT_SCHEMA`]; tests use a unique one per run).
    pub db_schema: String,
}

impl Settings for GatewaySettings {
    const SERVICE: ServiceName = ServiceName::Gateway;

    fn load(reader: &mut SettingsReader<'_>) -> Self {
        GatewaySettings { db_schema: reader.get(SCHEMA_ENV, DEFAULT_SCHEMA.to_owned()) }
    }
}
