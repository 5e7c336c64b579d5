//! mcp-broker's own settings (`MCP_*`), declared here rather than in the runtime (see
//! `agentmesh_runtime::config::Settings`): size limits of registry input beyond the
//! contract's own bounds, so one client cannot fill the catalogue (and every model's
//! context) with a huge schema or description.

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
