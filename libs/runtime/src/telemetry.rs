//! Logs, metrics and traces, set up once per process.
//!
//! Logs are JSON lines from `tracing`, or text when stderr is a terminal and no format is
//! chosen ([`log_format`]); every line inside a request
//! carries the request span's `correlation_id`. Metrics go to one Prometheus recorder
//! that every service in the process shares, rendered by [`render_metrics`]. Traces use
//! OpenTelemetry and are exported over OTLP/gRPC when an endpoint is configured; only then
//! does the OpenTelemetry layer run (it costs a sixth of a gateway request's CPU). A process
//! that exports nothing forwards its callers' `traceparent`/`tracestate` unchanged
//! ([`crate::context::TraceHeaders`]), so traces still cross it.
//!
//! Spans follow OpenTelemetry's naming: `package.Service/Method` for gRPC calls, `METHOD
//! /route` for REST calls (the `otel.name` field), and each service reports its own
//! `service.name`, also when several run in one process ([`services`]).

pub mod services;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider, SpanProcessor};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, ObservabilityConfig};

/// Latency buckets (seconds) for every `*_duration_seconds` and `*_lag_seconds` histogram:
/// 1 ms to 60 s, covering storage calls, LLM completions and event delivery.
const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("cannot build the OTLP trace exporter for {endpoint}: {source}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Keeps trace export running; flushes pending spans when dropped at shutdown.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("agentmesh: flushing traces failed: {error}");
        }
    }
}

/// Installs logging, metrics and tracing for the process running `service_name`.
///
/// Safe to call more than once (tests, the all-in-one binary): only the first call
/// installs global state; later calls return a guard that does nothing.
pub fn init(service_name: &str, config: &ObservabilityConfig) -> Result<TelemetryGuard, TelemetryError> {
    if config.metrics_enabled {
        prometheus_handle();
    }
    // The log level filters log output only; spans still reach the tracer at INFO and
    // above, so `OBSERVABILITY_LOG_LEVEL=ERROR` does not break trace propagation.
    let log_filter = config
        .log_filter
        .as_deref()
        .and_then(|directive| EnvFilter::try_new(directive).ok())
        .unwrap_or_else(|| EnvFilter::new(log_directive(&config.log_level)));
    let log_layer = match log_format(config) {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text | LogFormat::Auto => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    };

    let tracer_provider = match &config.otlp_endpoint {
        Some(endpoint) if config.tracing_enabled => Some(tracer_provider(service_name, config, endpoint)?),
        _ => None,
    };
    let trace_layer = tracer_provider.as_ref().map(trace_layer);

    let installed =
        tracing_subscriber::registry().with(log_layer.with_filter(log_filter)).with(trace_layer).try_init().is_ok();
    if !installed {
        return Ok(TelemetryGuard { tracer_provider: None });
    }
    if tracer_provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    Ok(TelemetryGuard { tracer_provider })
}

/// The log format this process writes: `OBSERVABILITY_LOG_FORMAT` when chosen, else text
/// when stderr is a terminal and JSON otherwise.
pub fn log_format(config: &ObservabilityConfig) -> LogFormat {
    use std::io::IsTerminal as _;
    config.log_format.resolve(std::io::stderr().is_terminal())
}

/// The layer that turns `tracing` spans at INFO and above into OpenTelemetry spans of
/// `provider`.
pub fn trace_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("agentmesh")).with_filter(LevelFilter::INFO)
}

/// `info`-level noise from dependencies is useful in production, `debug` is not: the
/// configured level applies to agentmesh's crates, dependencies log warnings and above.
fn log_directive(seed_level: &str) -> String {
    let level = match seed_level.to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" => "error",
        _ => "info",
    };
    format!("warn,agentmesh={level}")
}

fn tracer_provider(
    service_name: &str,
    config: &ObservabilityConfig,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    // Built once here so a bad endpoint stops the start; each service's exporter is built
    // the same way when its first span ends.
    otlp_exporter(endpoint)?;
    let endpoint = endpoint.to_owned();
    let make: Box<services::ProcessorFactory> = Box::new(move |resource| match otlp_exporter(&endpoint) {
        Ok(exporter) => {
            let mut processor = BatchSpanProcessor::builder(exporter).build();
            processor.set_resource(&resource);
            Box::new(processor)
        }
        Err(error) => {
            tracing::error!(%error, "spans of this service are not exported");
            Box::new(services::Discard)
        }
    });
    let router = services::ServiceRouter::new(&config.tracing_service_name, service_name, make);
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.tracing_sample_rate)));
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(router.reported_name(service_name)).build())
        .with_sampler(sampler)
        .with_span_processor(router)
        .build())
}

fn otlp_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Exporter { endpoint: endpoint.to_owned(), source })
}

/// Makes `span`, the request span of `service`, a child of the trace in the caller's
/// `headers` and the owner of the spans below it, when traces are exported.
pub fn join_caller_trace(span: &tracing::Span, headers: &http::HeaderMap, service: &'static str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    // Fails when no traces are exported: no OpenTelemetry layer runs, and the caller's
    // headers are forwarded as received instead (`RequestContext::trace`).
    let _ = span.set_parent(services::owned_by(parent, service));
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn prometheus_handle() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".to_owned()), DURATION_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Suffix("lag_seconds".to_owned()), DURATION_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); the handle then
        // renders only what this recorder saw, which is still valid exposition text.
        let _already_installed = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The Prometheus text exposition of every metric recorded in this process.
pub fn render_metrics() -> String {
    prometheus_handle().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_log_levels_map_to_directives_for_our_crates() {
        assert_eq!(log_directive("DEBUG"), "warn,agentmesh=debug");
        assert_eq!(log_directive("WARNING"), "warn,agentmesh=warn");
        assert_eq!(log_directive("CRITICAL"), "warn,agentmesh=error");
        assert_eq!(log_directive("INFO"), "warn,agentmesh=info");
    }

    #[test]
    fn recorded_metrics_are_rendered() {
        prometheus_handle();
        metrics::counter!("agentmesh_telemetry_test_total", "kind" => "unit").increment(3);
        let text = render_metrics();
        assert!(text.contains("agentmesh_telemetry_test_total{kind=\"unit\"} 3"), "{text}");
    }
}
