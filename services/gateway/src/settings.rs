//! The gateway's own settings (`GATEWAY_*`), declared here rather than in the runtime
//! (see `agentmesh_runtime::config::Settings`).

use std::time::Duration;

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::config::{Settings, SettingsReader};

use crate::auth::store::{DEFAULT_SCHEMA, SCHEMA_ENV};

/// The gateway's settings beyond the runtime's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// `GATEWAY_DB_SCHEMA`: the PostgreSQL schema of the API key tables (default
    /// [`DEFAULT_SCHEMA`]; tests use a unique one per run).
    pub db_schema: String,
    /// `GATEWAY_JWT_KEY_SOURCE`: where the secret signing access and refresh tokens comes
    /// from.
    pub jwt_key_source: JwtKeySource,
    /// `GATEWAY_JWT_KEY_OVERLAP`: how long the previous key keeps verifying after a
    /// rotation; unset is the access token lifetime, so no access token handed out before
    /// the rotation is refused early.
    pub jwt_key_overlap: Option<Duration>,
    /// `GATEWAY_JWT_KEY_WAIT`: how long start-up waits for secrets-broker to give the key
    /// (30 s) before the gateway gives up.
    pub jwt_key_wait: Duration,
}

/// Where the token-signing secret comes from (`GATEWAY_JWT_KEY_SOURCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtKeySource {
    /// `SECURITY_SECRET_KEY` (`config`, the default).
    Config,
    /// secrets-broker's `jwt-secret-key`, followed as it rotates (`secrets-broker`).
    SecretsBroker,
}

impl Settings for GatewaySettings {
    const SERVICE: ServiceName = ServiceName::Gateway;

    fn load(reader: &mut SettingsReader<'_>) -> Self {
        let jwt_key_source = match reader.get("GATEWAY_JWT_KEY_SOURCE", "config".to_owned()).as_str() {
            "config" => JwtKeySource::Config,
            "secrets-broker" => JwtKeySource::SecretsBroker,
            other => {
                reader.issue("GATEWAY_JWT_KEY_SOURCE", format!("{other:?}: expected config or secrets-broker"));
                JwtKeySource::Config
            }
        };
        GatewaySettings {
            db_schema: reader.get(SCHEMA_ENV, DEFAULT_SCHEMA.to_owned()),
            jwt_key_source,
            jwt_key_overlap: reader.opt("GATEWAY_JWT_KEY_OVERLAP"),
            jwt_key_wait: reader.get("GATEWAY_JWT_KEY_WAIT", Duration::from_secs(30)),
        }
    }
}
