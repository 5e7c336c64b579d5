//! Secret values for MCP servers: stdio environment variables marked `secret` and HTTP
//! authentication headers name secrets, whose values are read from secrets-broker (as
//! mcp-broker) only when a session is opened, and never stored or logged here. Tests
//! give a fake [`SecretReader`].

use std::fmt;

use agentmesh_proto::agentmesh::secrets::v1::GetSecretRequest;
use agentmesh_proto::agentmesh::secrets::v1::secrets_service_client::SecretsServiceClient;
use agentmesh_runtime::client::ServiceChannel;
use agentmesh_runtime::config::Secret;

/// Where secrets are read from: secrets-broker, or a test's fake.
#[async_trait::async_trait]
pub trait SecretReader: Send + Sync + fmt::Debug {
    /// The current value of secret `name`; `Ok(None)` when it does not exist.
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
    /// A reader over `channel` (to secrets-broker, acting as mcp-broker).
    pub fn new(channel: ServiceChannel) -> Self {
        Self { client: SecretsServiceClient::new(channel) }
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
        let request = GetSecretRequest { name: name.to_owned(), version: None };
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
