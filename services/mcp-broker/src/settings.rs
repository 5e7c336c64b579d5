//! mcp-broker's own settings (`MCP_*`), declared here rather than in the runtime (see
//! `agentmesh_runtime::config::Settings`): size limits of registry input beyond the
//! contract's own bounds, so one client cannot fill the catalogue (and every model's
//! context) with a huge schema or description; and how the broker talks to servers and
//! where it keeps the state that outlives it ([`ClientSettings`]).

use std::path::PathBuf;
use std::time::Duration;

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::config::{Settings, SettingsReader};

/// Size limits of registry input (`MCP_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLimits {
    /// `MCP_MAX_SCHEMA_BYTES`: serialized JSON size of one tool schema (input or output).
    pub max_schema_bytes: usize,
    /// `MCP_MAX_METADATA_BYTES`: serialized JSON size of one tool's `metadata`.
    pub max_metadata_bytes: usize,
    /// `MCP_MAX_DESCRIPTION_LENGTH`: characters of a tool's or server's description.
    pub max_description_length: usize,
    /// `MCP_MAX_STDIO_ARGS`: arguments and environment variables, each, of a stdio command.
    pub max_stdio_args: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            max_schema_bytes: 65_536,
            max_metadata_bytes: 16_384,
            max_description_length: 8_192,
            max_stdio_args: 256,
        }
    }
}

impl Settings for RegistryLimits {
    const SERVICE: ServiceName = ServiceName::McpBroker;

    fn load(reader: &mut SettingsReader<'_>) -> Self {
        let defaults = RegistryLimits::default();
        let limits = RegistryLimits {
            max_schema_bytes: reader.get("MCP_MAX_SCHEMA_BYTES", defaults.max_schema_bytes),
            max_metadata_bytes: reader.get("MCP_MAX_METADATA_BYTES", defaults.max_metadata_bytes),
            max_description_length: reader.get("MCP_MAX_DESCRIPTION_LENGTH", defaults.max_description_length),
            max_stdio_args: reader.get("MCP_MAX_STDIO_ARGS", defaults.max_stdio_args),
        };
        for (variable, value) in [
            ("MCP_MAX_SCHEMA_BYTES", limits.max_schema_bytes),
            ("MCP_MAX_METADATA_BYTES", limits.max_metadata_bytes),
            ("MCP_MAX_DESCRIPTION_LENGTH", limits.max_description_length),
        ] {
            if value == 0 {
                reader.issue(variable, "must be at least 1");
            }
        }
        limits
    }
}

/// How the broker talks to MCP servers (`MCP_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// `MCP_MAX_RESULT_BYTES`: encoded size of one tool result beyond which it is cut and
    /// flagged `truncated`.
    pub max_result_bytes: usize,
    /// `MCP_DEFAULT_CALL_TIMEOUT`: a tool call's limit when the request gives none.
    pub default_call_timeout: Duration,
    /// `MCP_CONNECT_TIMEOUT`: starting or reaching a server and `initialize`.
    pub connect_timeout: Duration,
    /// `MCP_REQUEST_TIMEOUT`: `tools/list` (each page) and `ping`.
    pub request_timeout: Duration,
    /// `MCP_SHUTDOWN_GRACE`: how long a stdio server may take to exit when closed, twice.
    pub shutdown_grace: Duration,
    /// `MCP_STDIO_ENABLED`: whether stdio servers are started at all; `false` keeps them
    /// registered but never run (API fuzzing, hosts that must not spawn processes).
    pub stdio_enabled: bool,
    /// `MCP_HEALTH_CHECK_INTERVAL`: how often each enabled server is checked.
    pub health_check_interval: Duration,
    /// `MCP_STATE_DIR`: where the broker records its stdio children's process groups, so
    /// that a broker started after one was killed with `SIGKILL` kills what it left
    /// (`connection::ledger`); default `agentmesh-mcp-broker` in the OS temporary directory.
    /// Brokers may share it.
    pub state_dir: PathBuf,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            max_result_bytes: 1024 * 1024,
            default_call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(2),
            stdio_enabled: true,
            health_check_interval: Duration::from_secs(60),
            state_dir: std::env::temp_dir().join("agentmesh-mcp-broker"),
        }
    }
}

impl Settings for ClientSettings {
    const SERVICE: ServiceName = ServiceName::McpBroker;

    fn load(reader: &mut SettingsReader<'_>) -> Self {
        let defaults = ClientSettings::default();
        let settings = ClientSettings {
            max_result_bytes: reader.get("MCP_MAX_RESULT_BYTES", defaults.max_result_bytes),
            default_call_timeout: reader.get("MCP_DEFAULT_CALL_TIMEOUT", defaults.default_call_timeout),
            connect_timeout: reader.get("MCP_CONNECT_TIMEOUT", defaults.connect_timeout),
            request_timeout: reader.get("MCP_REQUEST_TIMEOUT", defaults.request_timeout),
            shutdown_grace: reader.get("MCP_SHUTDOWN_GRACE", defaults.shutdown_grace),
            stdio_enabled: reader.get("MCP_STDIO_ENABLED", defaults.stdio_enabled),
            health_check_interval: reader.get("MCP_HEALTH_CHECK_INTERVAL", defaults.health_check_interval),
            state_dir: reader.opt::<String>("MCP_STATE_DIR").map_or(defaults.state_dir, PathBuf::from),
        };
        if settings.state_dir.as_os_str().is_empty() {
            reader.issue("MCP_STATE_DIR", "must name a directory");
        }
        if settings.max_result_bytes == 0 {
            reader.issue("MCP_MAX_RESULT_BYTES", "must be at least 1");
        }
        for (variable, value) in [
            ("MCP_DEFAULT_CALL_TIMEOUT", settings.default_call_timeout),
            ("MCP_CONNECT_TIMEOUT", settings.connect_timeout),
            ("MCP_REQUEST_TIMEOUT", settings.request_timeout),
            ("MCP_HEALTH_CHECK_INTERVAL", settings.health_check_interval),
        ] {
            if value.is_zero() {
                reader.issue(variable, "must be positive");
            }
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_runtime::Config;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, agentmesh_runtime::config::ConfigError> {
        let env = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::load_with(None, env, &[crate::SETTINGS])
    }

    #[test]
    fn defaults_overrides_and_bad_values() {
        let config = load(&[("MCP_MAX_SCHEMA_BYTES", "1000")]).unwrap();
        let limits = config.settings::<RegistryLimits>().unwrap();
        assert_eq!(limits, RegistryLimits { max_schema_bytes: 1000, ..RegistryLimits::default() });
        let error = load(&[("MCP_MAX_METADATA_BYTES", "0"), ("MCP_MAX_STDIO_ARGS", "-1")]).unwrap_err();
        let mut names: Vec<_> = error.issues.iter().map(|i| i.variable.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["MCP_MAX_METADATA_BYTES", "MCP_MAX_STDIO_ARGS"], "{error}");
    }
}
