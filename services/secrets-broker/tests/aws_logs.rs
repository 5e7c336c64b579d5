//! The SDK's own trace logs of the `aws` provider's calls show no value (it redacts request
//! and sensitive response bodies unless `LOG_SIGNABLE_BODY` or `LOG_SENSITIVE_BODIES` is
//! set). A test binary of its own: `tracing`'s per-callsite interest is process-wide, and
//! other tests' SDK calls on other threads could make it skip events of this one.

#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod moto;

use std::io::Write;
use std::sync::{Arc, Mutex};

use agentmesh_secrets_broker::provider::Provider;
use agentmesh_testkit::unique_name;
use moto::{Moto, provider, text, value};

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn trace_logs_show_no_value() {
    let Some(moto) = Moto::start().await else { return };
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let aws = provider(&moto.endpoint()).await;
    let name = unique_name("logged");
    let secret = value("logged");
    aws.put(&name, secret.clone()).await.unwrap();
    assert_eq!(aws.get(&name, None).await.unwrap().value, secret);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("transmitting request"), "the SDK's trace log was captured");
    assert!(logs.contains(&name), "requests were logged");
    assert!(!logs.contains(text(&secret)), "a trace log line shows the value");
}
