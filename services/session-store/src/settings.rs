//! session-store's own settings (`SESSION_*`), declared here rather than in the runtime
//! (see `agentmesh_runtime::config::Settings`): size limits of its input beyond the
//! contract's own bounds.

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::config::{Settings, SettingsReader};

/// Largest `SESSION_MAX_TITLE_LENGTH`: the seed's 500, the stored column's size.
pub const MAX_TITLE_LENGTH: usize = 500;

/// Size limits of session-store input (`SESSION_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    /// `SESSION_MAX_TITLE_LENGTH`: characters, at most [`MAX_TITLE_LENGTH`].
    pub max_title_length: usize,
    /// `SESSION_MAX_CONTENT_LENGTH`: characters of one message.
    pub max_content_length: usize,
    /// `SESSION_MAX_METADATA_BYTES`: serialized JSON size of one `metadata` object.
    pub max_metadata_bytes: usize,
    /// `SESSION_MAX_TOOL_CALLS`: entries of one message's `tool_calls`.
    pub max_tool_calls: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_title_length: MAX_TITLE_LENGTH,
            max_content_length: 262_144,
            max_metadata_bytes: 16_384,
            max_tool_calls: 128,
        }
    }
}

impl Settings for SessionLimits {
    const SERVICE: ServiceName = ServiceName::SessionStore;

    fn load(reader: &mut SettingsReader<'_>) -> Self {
        let defaults = SessionLimits::default();
        let limits = SessionLimits {
            max_title_length: reader.get("SESSION_MAX_TITLE_LENGTH", defaults.max_title_length),
            max_content_length: reader.get("SESSION_MAX_CONTENT_LENGTH", defaults.max_content_length),
            max_metadata_bytes: reader.get("SESSION_MAX_METADATA_BYTES", defaults.max_metadata_bytes),
            max_tool_calls: reader.get("SESSION_MAX_TOOL_CALLS", defaults.max_tool_calls),
        };
        if limits.max_title_length == 0 || limits.max_title_length > MAX_TITLE_LENGTH {
            let message = format!("must be between 1 and {MAX_TITLE_LENGTH} (the stored column's size)");
            reader.issue("SESSION_MAX_TITLE_LENGTH", message);
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
    fn defaults_and_overrides_are_read_through_the_config() {
        let config = load(&[("SESSION_MAX_CONTENT_LENGTH", "1000")]).unwrap();
        let limits = config.settings::<SessionLimits>().unwrap();
        assert_eq!(limits, SessionLimits { max_content_length: 1000, ..SessionLimits::default() });
    }

    #[test]
    fn bad_limits_are_reported_with_the_runtimes_bad_values() {
        let error =
            load(&[("SESSION_MAX_TITLE_LENGTH", "501"), ("SESSION_MAX_TOOL_CALLS", "-1"), ("REDIS_PORT", "70000")])
                .unwrap_err();
        let mut names: Vec<_> = error.issues.iter().map(|i| i.variable.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["REDIS_PORT", "SESSION_MAX_TITLE_LENGTH", "SESSION_MAX_TOOL_CALLS"], "{error}");
        assert_eq!(error.to_string().lines().count(), 4, "one line per issue: {error}");
    }
}
