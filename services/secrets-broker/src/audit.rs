//! The audit trail of secret access: every read, listing and rotation, allowed or refused,
//! becomes one `agentmesh.secret.accessed` event (caller, name, version, outcome, whether
//! the cache answered; never a value) and one log line under the `agentmesh::audit` target, so an
//! operator can answer "who read the OpenAI key last week" from either.
//!
//! Publishing is off the request path: a caller does not wait for the bus, and a bus that
//! is down costs a warning, not the read.

use std::sync::Arc;
use std::time::SystemTime;

use agentmesh_events::Publisher;
use agentmesh_proto::agentmesh::events::v1::{SecretAccessOutcome, SecretAccessed, SecretOperation};
use agentmesh_runtime::ServiceName;
use agentmesh_runtime::domain_events::EventSource;

use crate::provider::ProviderKind;

/// The CloudEvents source of secrets-broker's events.
pub const EVENTS: EventSource = EventSource::new("agentmesh/secrets-broker");

/// Topic of audit events.
pub const ACCESSED_TOPIC: &str = "secret.accessed";

/// One access, as audited.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    /// What was asked.
    pub operation: SecretOperation,
    /// The secret's name (the prefix, for a listing).
    pub name: &'a str,
    /// The verified calling service.
    pub caller: Option<ServiceName>,
    /// The version read or written.
    pub version: Option<&'a str>,
    /// How it ended.
    pub outcome: SecretAccessOutcome,
    /// Whether the cache answered.
    pub cached: bool,
}

/// Records accesses.
#[derive(Clone)]
pub struct Audit {
    publisher: Arc<dyn Publisher>,
    source: ProviderKind,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("source", &self.source).finish_non_exhaustive()
    }
}

impl Audit {
    /// Audits accesses to `source`'s secrets, publishing to `publisher`.
    pub fn new(publisher: Arc<dyn Publisher>, source: ProviderKind) -> Self {
        Self { publisher, source }
    }

    /// Logs `access` and publishes its event in the background.
    pub fn record(&self, access: &Access<'_>) {
        let caller = access.caller.map_or("", ServiceName::as_str);
        let version = access.version.unwrap_or_default();
        tracing::info!(
            target: "agentmesh::audit",
            operation = access.operation.as_str_name(),
            secret = access.name,
            caller,
            version,
            outcome = access.outcome.as_str_name(),
            cached = access.cached,
            "secret access"
        );
        let payload = SecretAccessed {
            name: access.name.to_owned(),
            operation: access.operation.into(),
            caller: caller.to_owned(),
            version: version.to_owned(),
            outcome: access.outcome.into(),
            cached: access.cached,
            source: self.source.to_proto().into(),
            time: Some(SystemTime::now().into()),
        };
        // Built here, while the request's context (correlation id, actor) is current.
        // A listing of everything has no name to file the event under.
        let subject = if access.name.is_empty() { "*" } else { access.name };
        let event = EVENTS.event(ACCESSED_TOPIC, subject.to_owned(), None, "SecretAccessed", &payload);
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            if let Err(error) = publisher.publish(event).await {
                tracing::warn!(%error, "secret access audit event not published");
            }
        });
    }
}
