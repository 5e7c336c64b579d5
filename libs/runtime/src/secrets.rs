//! Reading secrets from secrets-broker: llm-proxy's provider keys and mcp-broker's server
//! credentials are the same read (by name, as the calling service), so it lives here once,
//! behind a trait that tests replace with a fake.

use std::fmt;

use agentmesh_proto::agentmesh::secrets::v1::GetSecretRequest;
use agentmesh_proto::agentmesh::secrets::v1::secrets_service_client::SecretsServiceClient;

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
}

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
}
