//! Reading secrets from secrets-broker: llm-proxy's provider keys and mcp-broker's server
//! credentials are the same read (by name, as the calling service), so it lives here once,
//! behind a trait that tests replace with a fake. So is following their changes
//! ([`SecretReader::watch`]): a service drops a cached credential as soon as
//! secrets-broker announces a new version, and uses the rotated one without a restart.

use std::fmt;
use std::time::Duration;

use agentmesh_proto::agentmesh::secrets::v1::secrets_service_client::SecretsServiceClient;
use agentmesh_proto::agentmesh::secrets::v1::{GetSecretRequest, WatchSecretsRequest, WatchSecretsResponse};
use futures::stream::BoxStream;

use crate::auth::ServiceIdentity;
use crate::balance::Discovery;
use crate::client::{ClientError, ServiceChannel};
use crate::config::{Config, Secret, ServiceName};

/// Where secrets are read from: secrets-broker, or a test's fake.
#[async_trait::async_trait]
pub trait SecretReader: Send + Sync + fmt::Debug {
    /// The current value of secret `name`, exactly as stored; `Ok(None)` when it does not
    /// exist or is empty.
    async fn read(&self, name: &str) -> Result<Option<Secret>, SecretReadError>;

    /// What changes among the secrets whose names start with `prefix`, for as long as the
    /// stream is polled (it reconnects by itself); `None` when this reader cannot watch.
    fn watch(&self, _prefix: &str) -> Option<BoxStream<'static, SecretNotice>> {
        None
    }
}

/// What a watcher of secrets learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretNotice {
    /// Secret `name` has a new current version (or was created or deleted).
    Changed(String),
    /// The watch was (re)established and changes may have been missed meanwhile: every
    /// cached secret may be out of date.
    Resync,
}

/// First pause before watching again after the watch failed.
const WATCH_RETRY_FIRST: Duration = Duration::from_millis(500);

/// Longest pause between attempts to watch again.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a secret could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("secrets-broker: {0}")]
pub struct SecretReadError(pub String);

/// Reads secrets from secrets-broker over the mesh.
#[derive(Clone)]
pub struct SecretsBroker {
    client: SecretsServiceClient<ServiceChannel>,
}

impl SecretsBroker {
    /// A reader over `channel` (to secrets-broker, acting as the calling service).
    pub fn new(channel: ServiceChannel) -> Self {
        Self { client: SecretsServiceClient::new(channel) }
    }

    /// A reader for `service`, over a lazily connected channel to secrets-broker as
    /// `config` places it, carrying `service`'s actor token.
    pub fn connect(config: &Config, service: ServiceName) -> Result<Self, ClientError> {
        let identity = ServiceIdentity::from_config(config, service);
        let channel = ServiceChannel::connect_with(
            ServiceName::SecretsBroker.as_str(),
            &config.endpoints.get(ServiceName::SecretsBroker).url,
            &config.resilience.internal,
            &Discovery::new(config.peers.clone()),
        )?
        .acting_as(&identity);
        Ok(Self::new(channel))
    }
}

impl fmt::Debug for SecretsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsBroker")
    }
}

#[async_trait::async_trait]
impl SecretReader for SecretsBroker {
    async fn read(&self, name: &str) -> Result<Option<Secret>, SecretReadError> {
        let request = GetSecretRequest { name: name.to_owned(), ..GetSecretRequest::default() };
        match self.client.clone().get_secret(request).await {
            Ok(response) => {
                let value = response.into_inner().secret.map(|secret| secret.value).unwrap_or_default();
                let text = String::from_utf8(value).map_err(|_| SecretReadError(format!("{name} is not UTF-8")))?;
                Ok((!text.is_empty()).then(|| Secret::new(text)))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(SecretReadError(format!("{:?}", status.code()))),
        }
    }

    fn watch(&self, prefix: &str) -> Option<BoxStream<'static, SecretNotice>> {
        let watch =
            Watch { client: self.client.clone(), prefix: prefix.to_owned(), changes: None, pause: WATCH_RETRY_FIRST };
        Some(Box::pin(futures::stream::unfold(watch, |mut watch| async move {
            let notice = watch.next().await;
            Some((notice, watch))
        })))
    }
}

/// One service's watch of secrets-broker, reconnecting with backoff.
struct Watch {
    client: SecretsServiceClient<ServiceChannel>,
    prefix: String,
    changes: Option<tonic::Streaming<WatchSecretsResponse>>,
    pause: Duration,
}

impl Watch {
    /// The next notice: a change, or a resync after each (re)connection.
    async fn next(&mut self) -> SecretNotice {
        loop {
            let Some(changes) = &mut self.changes else {
                let request = WatchSecretsRequest { prefix: self.prefix.clone() };
                match self.client.watch_secrets(request).await {
                    Ok(response) => {
                        self.changes = Some(response.into_inner());
                        self.pause = WATCH_RETRY_FIRST;
                        return SecretNotice::Resync;
                    }
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), "secret changes not watched; trying again");
                        self.back_off().await;
                        continue;
                    }
                }
            };
            match changes.message().await {
                Ok(Some(WatchSecretsResponse { change: Some(change) })) => return SecretNotice::Changed(change.name),
                Ok(Some(_)) => {}
                Ok(None) => self.changes = None,
                Err(status) => {
                    tracing::info!(code = ?status.code(), "secret watch ended; watching again");
                    self.changes = None;
                    self.back_off().await;
                }
            }
        }
    }

    async fn back_off(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(WATCH_RETRY_MAX);
    }
}
