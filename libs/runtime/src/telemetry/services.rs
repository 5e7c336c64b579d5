//! Traces under the `service.name` of the service that handled them, even when several
//! services share one process (`agentmesh up`).
//!
//! OpenTelemetry names the service once per tracer provider (its `Resource`), and
//! tracing-opentelemetry feeds one provider. So the provider's only span processor is a
//! [`ServiceRouter`]: the request span of each service starts under a parent context that
//! names its service ([`owned_by`]); that value travels down the OpenTelemetry context to
//! every span below it. When a span starts, the router notes the owner in a private
//! attribute; when it ends, the router removes the attribute and hands the span to the
//! owner's own processor, whose exporter carries a `Resource` with the owner's name.
//! Spans with no owner (start-up, background work) go out under the process's name.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

/// The service a span belongs to, as a value in the OpenTelemetry context.
#[derive(Debug, Clone, Copy)]
struct OwningService(&'static str);

/// Carries the owner from a span's start to its end; never exported.
const OWNER_ATTRIBUTE: &str = "agentmesh.owning_service";

/// `parent` with `service` as the owner of the spans started under it.
pub fn owned_by(parent: Context, service: &'static str) -> Context {
    parent.with_value(OwningService(service))
}

/// Builds the span processor (with its exporter) for one service's `Resource`.
pub type ProcessorFactory = dyn Fn(Resource) -> Box<dyn SpanProcessor> + Send + Sync;

/// See the module documentation.
pub struct ServiceRouter {
    /// `OBSERVABILITY_TRACING_SERVICE_NAME`, the prefix of every reported name.
    prefix: String,
    /// The process's own name, for spans without an owner.
    process: String,
    make: Box<ProcessorFactory>,
    /// One processor per reported service name, made on a service's first span.
    processors: RwLock<HashMap<String, Arc<dyn SpanProcessor>>>,
}

impl fmt::Debug for ServiceRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRouter").field("prefix", &self.prefix).field("process", &self.process).finish()
    }
}

impl ServiceRouter {
    /// A router reporting services as `{prefix}-{service}`; spans without an owner go out
    /// as `{prefix}-{process}`. `make` builds each service's processor.
    pub fn new(prefix: &str, process: &str, make: Box<ProcessorFactory>) -> Self {
        Self { prefix: prefix.to_owned(), process: process.to_owned(), make, processors: RwLock::default() }
    }

    /// The `service.name` reported for `service`: `{prefix}-{service}`, or the prefix
    /// alone for the all-in-one process that shares its name.
    pub fn reported_name(&self, service: &str) -> String {
        if service == self.prefix { service.to_owned() } else { format!("{}-{service}", self.prefix) }
    }

    fn processor(&self, service: &str) -> Arc<dyn SpanProcessor> {
        let name = self.reported_name(service);
        if let Some(processor) = self.processors.read().unwrap_or_else(PoisonError::into_inner).get(&name) {
            return processor.clone();
        }
        let mut processors = self.processors.write().unwrap_or_else(PoisonError::into_inner);
        processors
            .entry(name.clone())
            .or_insert_with(|| Arc::from((self.make)(Resource::builder().with_service_name(name).build())))
            .clone()
    }

    fn every_processor(&self) -> Vec<Arc<dyn SpanProcessor>> {
        self.processors.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }
}

impl SpanProcessor for ServiceRouter {
    fn on_start(&self, span: &mut Span, parent: &Context) {
        if let Some(OwningService(service)) = parent.get::<OwningService>() {
            opentelemetry::trace::Span::set_attribute(span, KeyValue::new(OWNER_ATTRIBUTE, *service));
        }
    }

    fn on_end(&self, mut span: SpanData) {
        let owner = span.attributes.iter().position(|kv| kv.key.as_str() == OWNER_ATTRIBUTE);
        let service = match owner {
            Some(index) => span.attributes.swap_remove(index).value.as_str().into_owned(),
            None => self.process.clone(),
        };
        self.processor(&service).on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        let results: Vec<OTelSdkResult> = self.every_processor().iter().map(|p| p.force_flush()).collect();
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let results: Vec<OTelSdkResult> =
            self.every_processor().iter().map(|p| p.shutdown_with_timeout(timeout)).collect();
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }
}

/// Drops every span: stands in for a service whose exporter could not be built.
#[derive(Debug)]
pub struct Discard;

impl SpanProcessor for Discard {
    fn on_start(&self, _span: &mut Span, _parent: &Context) {}

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}
