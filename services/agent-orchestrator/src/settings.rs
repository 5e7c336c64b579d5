//! agent-orchestrator's own settings (`AGENT_*`): how runs execute, how long their output
//! stays replayable, and how replicas share them.

use std::time::Duration;

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::config::{Settings, SettingsReader};

/// How runs execute (`AGENT_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    /// `AGENT_OUTPUT_RETENTION`: how long after a run ends its event stream can be replayed
    /// (the event bus must keep events at least as long: `NATS_MAX_AGE`).
    pub output_retention: Duration,
    /// `AGENT_TOKEN_COALESCE`: tokens produced within this window are published as one
    /// `token` event (20–50 ms keeps streams smooth and the log small).
    pub token_coalesce: Duration,
    /// `AGENT_DEFAULT_MAX_STEPS`: graph steps of a run whose agent sets no `max_steps`.
    pub default_max_steps: u32,
    /// `AGENT_DEFAULT_HISTORY_MESSAGES`: session messages sent as history when the agent
    /// sets no `history_messages`.
    pub default_history_messages: u32,
    /// `AGENT_MAX_RUN_DURATION`: the longest a run may execute (its principals expire then).
    pub max_duration: Duration,
    /// `AGENT_RUN_LEASE`: how long a replica's claim on a running run lasts unless renewed; a
    /// replica that dies loses its runs to the others after this long.
    pub lease: Duration,
    /// `AGENT_TOOL_TIMEOUT`: the time limit of one tool call.
    pub tool_timeout: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            output_retention: Duration::from_secs(24 * 60 * 60),
            token_coalesce: Duration::from_millis(30),
            default_max_steps: 10,
            default_history_messages: 50,
            max_duration: Duration::from_secs(60 * 60),
            lease: Duration::from_secs(30),
            tool_timeout: Duration::from_secs(60),
        }
    }
}

impl Settings for RunSettings {
    const SERVICE: ServiceName = ServiceName::AgentOrchestrator;

    fn load(reader: &mut SettingsReader<'_>) -> Self {
        let defaults = RunSettings::default();
        let settings = RunSettings {
            output_retention: reader.get("AGENT_OUTPUT_RETENTION", defaults.output_retention),
            token_coalesce: reader.get("AGENT_TOKEN_COALESCE", defaults.token_coalesce),
            default_max_steps: reader.get("AGENT_DEFAULT_MAX_STEPS", defaults.default_max_steps),
            default_history_messages: reader.get("AGENT_DEFAULT_HISTORY_MESSAGES", defaults.default_history_messages),
            max_duration: reader.get("AGENT_MAX_RUN_DURATION", defaults.max_duration),
            lease: reader.get("AGENT_RUN_LEASE", defaults.lease),
            tool_timeout: reader.get("AGENT_TOOL_TIMEOUT", defaults.tool_timeout),
        };
        for (variable, value) in [
            ("AGENT_OUTPUT_RETENTION", settings.output_retention),
            ("AGENT_MAX_RUN_DURATION", settings.max_duration),
            ("AGENT_RUN_LEASE", settings.lease),
            ("AGENT_TOOL_TIMEOUT", settings.tool_timeout),
        ] {
            if value.is_zero() {
                reader.issue(variable, "must be positive");
            }
        }
        if settings.token_coalesce > Duration::from_secs(1) {
            reader.issue("AGENT_TOKEN_COALESCE", "must be at most 1s (tokens would arrive in bursts)");
        }
        if !(1..=100).contains(&settings.default_max_steps) {
            reader.issue("AGENT_DEFAULT_MAX_STEPS", "must be between 1 and 100");
        }
        if settings.default_history_messages > 1000 {
            reader.issue("AGENT_DEFAULT_HISTORY_MESSAGES", "must be at most 1000");
        }
        settings
    }
}
