//! `agentmesh.secrets.v1.SecretsService` over gRPC: contract validation, the access policy
//! against the caller's verified identity, the cache in front of the provider, the audit
//! record of every access, and rotations announced to every replica and watcher.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_events::Publisher;
use agentmesh_proto::agentmesh::events::v1::{SecretAccessOutcome, SecretOperation, SecretRotated};
use agentmesh_proto::agentmesh::secrets::v1::secrets_service_server::SecretsService;
use agentmesh_proto::agentmesh::secrets::v1::{
    GetSecretRequest, GetSecretResponse, ListSecretsRequest, ListSecretsResponse, RotateSecretRequest,
    RotateSecretResponse, Secret, SecretMetadata, WatchSecretsRequest, WatchSecretsResponse,
};
use agentmesh_runtime::error::{ErrorCode, FieldViolation};
use agentmesh_runtime::validate::validate;
use agentmesh_runtime::{ApiError, RequestContext, ServiceName};
use base64::Engine as _;
use futures::Stream;
use rand::TryRng as _;
use rand::rngs::SysRng;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::audit::{Access, Audit, EVENTS};
use crate::cache::{FetchError, SecretCache};
use crate::changes::{ChangeHub, ROTATED_TOPIC};
use crate::policy::AccessPolicy;
use crate::provider::{ProviderClassifier, ProviderError, SecretValue, VersionInfo};
use crate::settings::SecretsSettings;

/// Random bytes of a generated secret (256 bits).
const GENERATED_BYTES: usize = 32;

/// The name the provider's breaker and errors go by.
pub const PROVIDER_TARGET: &str = "secret-provider";

/// The gRPC service.
#[derive(Clone)]
pub struct SecretsBroker {
    settings: Arc<SecretsSettings>,
    cache: SecretCache,
    read_policy: Arc<AccessPolicy>,
    rotate_policy: Arc<AccessPolicy>,
    audit: Audit,
    changes: ChangeHub,
    publisher: Arc<dyn Publisher>,
}

impl std::fmt::Debug for SecretsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsBroker")
            .field("cache", &self.cache)
            .field("read_policy", &self.read_policy)
            .field("rotate_policy", &self.rotate_policy)
            .finish_non_exhaustive()
    }
}

impl SecretsBroker {
    /// Serves `cache`'s provider under `settings`' policies (`production` decides the
    /// default), auditing and announcing through `publisher`.
    pub fn new(
        settings: Arc<SecretsSettings>,
        cache: SecretCache,
        changes: ChangeHub,
        publisher: Arc<dyn Publisher>,
        production: bool,
    ) -> Self {
        Self {
            read_policy: Arc::new(AccessPolicy::new(settings.read_policy.clone(), production)),
            rotate_policy: Arc::new(AccessPolicy::new(settings.rotate_policy.clone(), production)),
            audit: Audit::new(publisher.clone(), cache.provider().kind()),
            settings,
            cache,
            changes,
            publisher,
        }
    }

    fn metadata(&self, info: &VersionInfo) -> SecretMetadata {
        SecretMetadata {
            name: self.settings.seed_name(&info.name).to_owned(),
            version: info.version.clone(),
            source: self.cache.provider().kind().to_proto().into(),
            created_at: info.created_at.map(Into::into),
            expires_at: info.expires_at.map(Into::into),
        }
    }

    /// A value for an internal secret nobody gave one for.
    fn generate(&self, name: &str) -> Result<SecretValue, ApiError> {
        if !self.settings.generated.iter().any(|generated| generated == name) {
            return Err(ApiError::validation(vec![FieldViolation::new(
                "value",
                "is required: only the secrets in SECRET_GENERATED_NAMES are generated",
                serde_json::Value::Null,
            )]));
        }
        let mut bytes = zeroize::Zeroizing::new([0_u8; GENERATED_BYTES]);
        SysRng.try_fill_bytes(bytes.as_mut()).map_err(|error| {
            tracing::error!(%error, "the operating system's random generator failed");
            ApiError::internal()
        })?;
        Ok(SecretValue::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())))
    }
}

fn caller() -> Option<ServiceName> {
    RequestContext::current().and_then(|context| context.actor)
}

fn denied(caller: Option<ServiceName>, operation: &str, name: &str) -> ApiError {
    let who = caller.map_or("this caller", ServiceName::as_str);
    ApiError::new(ErrorCode::Authorization, format!("{who} may not {operation} secret {name}"))
}

/// What a failed provider read means to the caller (no provider detail beyond its kind).
fn fetch_error(name: &str, version: Option<&str>, error: &FetchError) -> ApiError {
    let error = match error {
        FetchError::Provider(ProviderError::NotFound { .. }) => ApiError::not_found(&format!("Secret {name}")),
        FetchError::Provider(ProviderError::VersionNotFound { version, .. }) => {
            ApiError::not_found(&format!("Version {version} of secret {name}"))
        }
        FetchError::CircuitOpen { retry_after } => ApiError::circuit_open(PROVIDER_TARGET, *retry_after),
        FetchError::Timeout { after } => ApiError::timeout(PROVIDER_TARGET, *after),
        FetchError::Provider(error) => provider_error(error),
        FetchError::Overloaded => {
            ApiError::external_service(PROVIDER_TARGET, "secret_manager", true).with_retry_after(Duration::from_secs(1))
        }
    };
    match version {
        Some(version) => error.with_detail("version", version),
        None => error,
    }
}

fn provider_error(error: &ProviderError) -> ApiError {
    tracing::warn!(%error, "secret provider call failed");
    let retryable = error.outcome().is_retryable();
    let api = ApiError::external_service(PROVIDER_TARGET, "secret_manager", retryable);
    match error {
        ProviderError::Throttled { retry_after } => api.with_retry_after(retry_after.unwrap_or(Duration::from_secs(1))),
        ProviderError::Rejected { reason } => api.with_detail("reason", reason.clone()),
        ProviderError::Unsupported { .. } => api.with_detail("reason", error.to_string()),
        _ => api,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchSecretsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SecretsService for SecretsBroker {
    async fn get_secret(&self, request: Request<GetSecretRequest>) -> Result<Response<GetSecretResponse>, Status> {
        let request = request.into_inner();
        validate(&request)?;
        let (name, version, caller) = (request.name.as_str(), request.version.as_deref(), caller());
        let mut access = Access {
            operation: SecretOperation::Read,
            name,
            caller,
            version,
            outcome: SecretAccessOutcome::Denied,
            cached: false,
        };
        if !self.read_policy.allows(caller, name) {
            self.audit.record(&access);
            return Err(denied(caller, "read", name).into());
        }
        let provider_name = self.settings.provider_name(name);
        match self.cache.get(provider_name, version, request.bypass_cache).await {
            Ok(served) => {
                let info = &served.secret.info;
                self.audit.record(&Access {
                    version: Some(&info.version),
                    outcome: SecretAccessOutcome::Allowed,
                    cached: served.cached,
                    ..access
                });
                Ok(Response::new(GetSecretResponse {
                    secret: Some(Secret {
                        name: name.to_owned(),
                        value: served.secret.value.expose().to_vec(),
                        version: info.version.clone(),
                        source: self.cache.provider().kind().to_proto().into(),
                        created_at: info.created_at.map(Into::into),
                        expires_at: info.expires_at.map(Into::into),
                    }),
                }))
            }
            Err(error) => {
                access.outcome = match error {
                    FetchError::Provider(ProviderError::NotFound { .. } | ProviderError::VersionNotFound { .. }) => {
                        SecretAccessOutcome::NotFound
                    }
                    _ => SecretAccessOutcome::Failed,
                };
                self.audit.record(&access);
                Err(fetch_error(name, version, &error).into())
            }
        }
    }

    async fn list_secrets(
        &self,
        request: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        let request = request.into_inner();
        validate(&request)?;
        let caller = caller();
        let provider = self.cache.provider().clone();
        // With names mapped to the provider's own, the prefix is matched on the seed's names.
        let provider_prefix = if self.settings.names.is_empty() { request.prefix.as_str() } else { "" };
        let listed = self
            .cache
            .resilience()
            .call(&ProviderClassifier, || provider.list(provider_prefix))
            .await
            .map_err(FetchError::from);
        let mut access = Access {
            operation: SecretOperation::List,
            name: &request.prefix,
            caller,
            version: None,
            outcome: SecretAccessOutcome::Allowed,
            cached: false,
        };
        let listed = match listed {
            Ok(listed) => listed,
            Err(error) => {
                access.outcome = SecretAccessOutcome::Failed;
                self.audit.record(&access);
                return Err(fetch_error(&request.prefix, None, &error).into());
            }
        };
        self.audit.record(&access);
        let mut secrets: Vec<SecretMetadata> = listed
            .iter()
            .map(|info| self.metadata(info))
            .filter(|metadata| metadata.name.starts_with(&request.prefix))
            .filter(|metadata| self.read_policy.allows(caller, &metadata.name))
            .collect();
        secrets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListSecretsResponse { secrets }))
    }

    async fn rotate_secret(
        &self,
        request: Request<RotateSecretRequest>,
    ) -> Result<Response<RotateSecretResponse>, Status> {
        let request = request.into_inner();
        validate(&request)?;
        let (name, caller) = (request.name.as_str(), caller());
        let mut access = Access {
            operation: SecretOperation::Rotate,
            name,
            caller,
            version: None,
            outcome: SecretAccessOutcome::Denied,
            cached: false,
        };
        if !self.rotate_policy.allows(caller, name) {
            self.audit.record(&access);
            return Err(denied(caller, "rotate", name).into());
        }
        let value = match request.value {
            Some(value) if value.is_empty() => {
                return Err(ApiError::validation(vec![FieldViolation::new(
                    "value",
                    "must not be empty",
                    serde_json::Value::Null,
                )])
                .into());
            }
            Some(value) => SecretValue::new(value),
            None => self.generate(name)?,
        };
        let provider_name = self.settings.provider_name(name);
        // Once: a write is not retried (a second attempt could make a second version).
        let rotation = match self.cache.provider().put(provider_name, value).await {
            Ok(rotation) => rotation,
            Err(error) => {
                access.outcome = SecretAccessOutcome::Failed;
                self.audit.record(&access);
                return Err(provider_error(&error).into());
            }
        };
        access.outcome = SecretAccessOutcome::Allowed;
        access.version = Some(&rotation.current.version);
        self.audit.record(&access);
        let rotated = SecretRotated {
            name: name.to_owned(),
            version: rotation.current.version.clone(),
            previous_version: rotation.previous.as_ref().map(|previous| previous.version.clone()),
            source: self.cache.provider().kind().to_proto().into(),
            time: Some(SystemTime::now().into()),
        };
        self.changes.rotated(&rotated);
        let event = EVENTS.event(ROTATED_TOPIC, name.to_owned(), None, "SecretRotated", &rotated);
        if let Err(error) = self.publisher.publish(event).await {
            // This replica and its watchers know; the others learn within one TTL.
            tracing::warn!(%error, secret = name, "secret rotation not announced to other replicas");
        }
        Ok(Response::new(RotateSecretResponse {
            secret: Some(self.metadata(&rotation.current)),
            previous: rotation.previous.as_ref().map(|previous| self.metadata(previous)),
        }))
    }

    async fn watch_secrets(&self, request: Request<WatchSecretsRequest>) -> Result<Response<WatchStream>, Status> {
        let request = request.into_inner();
        validate(&request)?;
        let (caller, policy, prefix) = (caller(), self.read_policy.clone(), request.prefix);
        let changes = self.changes.subscribe();
        let stream = futures::stream::unfold(changes, move |mut changes| {
            let (policy, prefix) = (policy.clone(), prefix.clone());
            async move {
                loop {
                    match changes.recv().await {
                        Ok(change) if change.name.starts_with(&prefix) && policy.allows(caller, &change.name) => {
                            return Some((Ok(WatchSecretsResponse { change: Some(change) }), changes));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            // The watcher cannot know what it missed: it must re-read.
                            let error = ApiError::external_service("secrets-broker", "internal_service", true)
                                .with_detail("reason", format!("{missed} changes missed; watch again and re-read"));
                            return Some((Err(error.into()), changes));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
