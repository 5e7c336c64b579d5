//! Observability settings (`OBSERVABILITY_*`, plus the conventional `RUST_LOG` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT`): logs, Prometheus metrics, OTLP traces, health checks.

use std::time::Duration;

use super::environment::Environment;
use super::features::FeatureFlags;
use super::vars::Vars;

/// Log output format (`OBSERVABILITY_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
    /// Not chosen (the default, or `auto`): text when stderr is a terminal, JSON otherwise,
    /// so a person running a binary reads its logs and a log shipper still gets JSON.
    Auto,
}

impl LogFormat {
    /// The format to write: [`LogFormat::Auto`] becomes text when stderr `is_terminal`,
    /// JSON otherwise; an explicit choice stays.
    pub fn resolve(self, is_terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if is_terminal => LogFormat::Text,
            LogFormat::Auto => LogFormat::Json,
            chosen => chosen,
        }
    }
}

/// Observability settings (`OBSERVABILITY_*`).
#[derive(Debug, Clone)]
pub struct ObservabilityConfig {
    /// `OBSERVABILITY_LOG_LEVEL`: DEBUG, INFO, WARNING, ERROR or CRITICAL (seed names);
    /// applies to agentmesh's own crates. [`log_filter`](Self::log_filter), when set, wins.
    pub log_level: String,
    /// `RUST_LOG`: a full `tracing` filter directive (e.g. `info,agentmesh_gateway=trace`)
    /// that replaces `OBSERVABILITY_LOG_LEVEL`.
    pub log_filter: Option<String>,
    /// `OBSERVABILITY_LOG_FORMAT`: `json`, `text`, or `auto` (the default: text on a
    /// terminal, JSON elsewhere).
    pub log_format: LogFormat,
    /// `OBSERVABILITY_METRICS_ENABLED`: serve Prometheus metrics.
    pub metrics_enabled: bool,
    /// `OBSERVABILITY_METRICS_PORT`: an extra listener for metrics only; 0 (default) means
    /// metrics are served on each service's own port only.
    pub metrics_port: u16,
    /// `OBSERVABILITY_METRICS_PATH`.
    pub metrics_path: String,
    /// Export request traces over OTLP: `OBSERVABILITY_TRACING_ENABLED` and
    /// `FEATURE_ENABLE_REQUEST_TRACING` must both be true (both default to true).
    pub tracing_enabled: bool,
    /// `OBSERVABILITY_TRACING_SAMPLE_RATE`: fraction of traces kept, 0.0–1.0.
    pub tracing_sample_rate: f64,
    /// `OBSERVABILITY_TRACING_SERVICE_NAME`: prefix of every service's trace name.
    pub tracing_service_name: String,
    /// `OBSERVABILITY_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_ENDPOINT`): where traces go.
    /// Unset means no exporter.
    pub otlp_endpoint: Option<String>,
    /// `OBSERVABILITY_HEALTH_CHECK_TIMEOUT`.
    pub health_check_timeout: Duration,
    /// `OBSERVABILITY_HEALTH_CHECK_INTERVAL`.
    pub health_check_interval: Duration,
}

impl ObservabilityConfig {
    pub(super) fn read(v: &mut Vars, environment: Environment, features: &FeatureFlags) -> Self {
        let development = environment == Environment::Development;
        let log_format = match v.get("OBSERVABILITY_LOG_FORMAT", "auto".to_owned()).to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "text" | "pretty" => LogFormat::Text,
            "auto" => LogFormat::Auto,
            other => {
                v.issue("OBSERVABILITY_LOG_FORMAT", format!("invalid value {other:?}: expected json, text or auto"));
                LogFormat::Auto
            }
        };
        // Both names are read, so neither is reported as unknown when the other is set.
        let otlp_endpoint = v.opt("OBSERVABILITY_OTLP_ENDPOINT");
        let otel_endpoint = v.opt("OTEL_EXPORTER_OTLP_ENDPOINT");
        let default_sample_rate = match environment {
            Environment::Development | Environment::Testing => 1.0,
            Environment::Staging => 0.1,
            Environment::Production => 0.01,
        };
        let config = ObservabilityConfig {
            log_level: v.get("OBSERVABILITY_LOG_LEVEL", if development { "DEBUG" } else { "INFO" }.to_owned()),
            log_filter: v.opt("RUST_LOG"),
            log_format,
            metrics_enabled: v.get("OBSERVABILITY_METRICS_ENABLED", true),
            metrics_port: v.get("OBSERVABILITY_METRICS_PORT", 0),
            metrics_path: v.get("OBSERVABILITY_METRICS_PATH", "/metrics".to_owned()),
            tracing_enabled: v.get("OBSERVABILITY_TRACING_ENABLED", true) && features.enable_request_tracing,
            tracing_sample_rate: v.get("OBSERVABILITY_TRACING_SAMPLE_RATE", default_sample_rate),
            tracing_service_name: v.get("OBSERVABILITY_TRACING_SERVICE_NAME", "agentmesh".to_owned()),
            otlp_endpoint: otlp_endpoint.or(otel_endpoint),
            health_check_timeout: v.get("OBSERVABILITY_HEALTH_CHECK_TIMEOUT", Duration::from_secs(5)),
            health_check_interval: v.get("OBSERVABILITY_HEALTH_CHECK_INTERVAL", Duration::from_secs(30)),
        };
        if !(0.0..=1.0).contains(&config.tracing_sample_rate) {
            v.issue("OBSERVABILITY_TRACING_SAMPLE_RATE", "must be between 0.0 and 1.0");
        }
        if !matches!(
            config.log_level.to_ascii_uppercase().as_str(),
            "TRACE" | "DEBUG" | "INFO" | "WARNING" | "WARN" | "ERROR" | "CRITICAL"
        ) {
            v.issue("OBSERVABILITY_LOG_LEVEL", "expected DEBUG, INFO, WARNING, ERROR or CRITICAL");
        }
        if let Some(directive) = &config.log_filter
            && let Err(error) = tracing_subscriber::EnvFilter::try_new(directive)
        {
            v.issue("RUST_LOG", format!("invalid filter directive: {error}"));
        }
        if !config.metrics_path.starts_with('/') {
            v.issue("OBSERVABILITY_METRICS_PATH", "must start with `/`");
        }
        config
    }
}
