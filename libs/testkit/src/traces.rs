//! Spans as a collector would receive them, kept in memory per `service.name`, so tests
//! can check span names and which service reported them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor, SpanData, SpanProcessor};

/// Exported spans by the `service.name` of the `Resource` their exporter was built for.
#[derive(Clone, Default)]
pub struct ExportedSpans {
    by_service: Arc<Mutex<HashMap<String, InMemorySpanExporter>>>,
}

impl ExportedSpans {
    /// Builds, for each service's `Resource`, a processor exporting into this collection
    /// (what the runtime's span router asks for).
    pub fn processor_factory(&self) -> Box<dyn Fn(Resource) -> Box<dyn SpanProcessor> + Send + Sync> {
        let by_service = self.by_service.clone();
        Box::new(move |resource| {
            let name = resource
                .get(&opentelemetry::Key::new("service.name"))
                .map_or_else(String::new, |name| name.as_str().into_owned());
            let exporter = InMemorySpanExporter::default();
            by_service.lock().unwrap_or_else(PoisonError::into_inner).insert(name, exporter.clone());
            Box::new(SimpleSpanProcessor::new(exporter))
        })
    }

    /// The spans exported so far under `service`.
    pub fn spans(&self, service: &str) -> Vec<SpanData> {
        let by_service = self.by_service.lock().unwrap_or_else(PoisonError::into_inner);
        by_service.get(service).and_then(|exporter| exporter.get_finished_spans().ok()).unwrap_or_default()
    }

    /// Waits (up to 5 s) until a span named `name` was exported under `service` and
    /// returns it; `None` if none came. Server spans end just after the client has the
    /// response, when the response body has been sent.
    pub async fn wait_for(&self, service: &str, name: &str) -> Option<SpanData> {
        for _ in 0..500 {
            if let Some(span) = self.spans(service).into_iter().find(|span| span.name == name) {
                return Some(span);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}
