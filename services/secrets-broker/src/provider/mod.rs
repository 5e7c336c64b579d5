//! Where secrets are held: one [`Provider`] trait, one module per provider (ARCHITECTURE
//! §2). The broker's cache, policy and audit sit above this line and know nothing of a
//! provider's wire protocol; a provider knows nothing of callers, caching or events.
//!
//! Providers speak in the provider's own names (the broker maps the seed's names to them,
//! `SECRET_*_NAME`) and in its own version identifiers. Values travel as [`SecretValue`],
//! which is wiped from memory when dropped and never shows in `Debug` output; errors carry
//! names, versions and the provider's reason, never a value.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "gcp")]
pub mod gcp;
pub mod local;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_proto::agentmesh::secrets::v1 as pb;
use agentmesh_resilience::{Classify, Outcome};
use async_trait::async_trait;
use tokio::sync::broadcast;
use zeroize::Zeroizing;

use agentmesh_runtime::background::BackgroundTasks;

use crate::settings::SecretsSettings;

/// A secret's value: wiped when dropped, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    /// The value itself, for the one place that hands it over.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, when it is UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        Self::new(value.into_bytes())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

/// Which provider holds the secrets (the seed's `provider`: `local`, `aws`, `azure`, `gcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// The environment and a watched file.
    Local,
    /// AWS Secrets Manager.
    Aws,
    /// Azure Key Vault.
    Azure,
    /// GCP Secret Manager.
    Gcp,
}

impl ProviderKind {
    /// The seed's name of the provider.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Aws => "aws",
            Self::Azure => "azure",
            Self::Gcp => "gcp",
        }
    }

    /// The contract's enum value.
    pub fn to_proto(self) -> pb::SecretProvider {
        match self {
            Self::Local => pb::SecretProvider::Local,
            Self::Aws => pb::SecretProvider::Aws,
            Self::Azure => pb::SecretProvider::Azure,
            Self::Gcp => pb::SecretProvider::Gcp,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One version of a secret, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The provider's name of the secret.
    pub name: String,
    /// The provider's identifier of this version.
    pub version: String,
    /// When this version was created, when the provider says.
    pub created_at: Option<SystemTime>,
    /// When this version expires, when the provider records an expiry.
    pub expires_at: Option<SystemTime>,
}

/// One version of a secret and its value.
#[derive(Debug, Clone)]
pub struct SecretVersion {
    /// Which version it is.
    pub info: VersionInfo,
    /// The value.
    pub value: SecretValue,
}

/// What a rotation left: the new current version and the one it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new current version.
    pub current: VersionInfo,
    /// The version current until now; `None` when the secret is new.
    pub previous: Option<VersionInfo>,
}

/// What happened to a secret, as a provider reports it by itself (a watched file changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new secret appeared.
    Created,
    /// A new version became current.
    Rotated,
    /// The secret was removed.
    Deleted,
}

/// A change a provider reports: names and versions, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The provider's name of the secret.
    pub name: String,
    /// The version after the change (the removed one for deletions).
    pub version: String,
    /// The version current before, when there was one.
    pub previous_version: Option<String>,
    /// What happened.
    pub kind: ChangeKind,
    /// When it was noticed.
    pub time: SystemTime,
}

/// Why a provider call failed. Never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The secret does not exist.
    #[error("secret {name} not found")]
    NotFound {
        /// The provider's name asked for.
        name: String,
    },
    /// The secret exists but not that version.
    #[error("version {version} of secret {name} not found")]
    VersionNotFound {
        /// The provider's name asked for.
        name: String,
        /// The version asked for.
        version: String,
    },
    /// The provider refused our credentials or permissions.
    #[error("the provider refused the broker's credentials: {reason}")]
    Unauthorized {
        /// The provider's reason.
        reason: String,
    },
    /// The provider asked us to slow down.
    #[error("the provider is throttling requests")]
    Throttled {
        /// When the provider said to retry.
        retry_after: Option<Duration>,
    },
    /// The provider could not be reached or failed.
    #[error("the provider is unavailable: {reason}")]
    Unavailable {
        /// What went wrong (transport error, 5xx).
        reason: String,
    },
    /// The provider refused the request itself (a value it does not accept, a secret
    /// scheduled for deletion).
    #[error("the provider refused the request: {reason}")]
    Rejected {
        /// The provider's reason.
        reason: String,
    },
    /// This provider cannot do that (for example rotating a value from the environment
    /// when no file is configured).
    #[error("the {provider} provider cannot {operation}")]
    Unsupported {
        /// The provider.
        provider: ProviderKind,
        /// What was asked.
        operation: &'static str,
    },
}

impl ProviderError {
    /// What the failure says about the provider's health, for its breaker and retries:
    /// answers about the secret itself (not found, rejected) mean a healthy provider.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::NotFound { .. } | Self::VersionNotFound { .. } | Self::Rejected { .. } | Self::Unsupported { .. } => {
                Outcome::Success
            }
            Self::Unauthorized { .. } => Outcome::FATAL,
            Self::Throttled { retry_after } => Outcome::RETRYABLE.with_retry_after(*retry_after),
            Self::Unavailable { .. } => Outcome::RETRYABLE,
        }
    }
}

/// What a provider request was about, so that a 404 names the secret or the version.
#[cfg(any(feature = "azure", feature = "gcp"))]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    /// A secret's current value or its metadata.
    Secret(&'a str),
    /// One version of a secret.
    Version(&'a str, &'a str),
    /// A listing.
    List,
}

#[cfg(any(feature = "azure", feature = "gcp"))]
impl ProviderError {
    /// The error an HTTP status of a provider's REST API stands for, about `subject`:
    /// `reason` says what the provider answered (never a value), `retry_after` is its hint
    /// for a 429.
    pub(crate) fn from_http_status(
        status: u16,
        subject: Subject<'_>,
        reason: String,
        retry_after: Option<Duration>,
    ) -> Self {
        match (status, subject) {
            (404, Subject::Secret(name)) => Self::NotFound { name: name.to_owned() },
            (404, Subject::Version(name, version)) => {
                Self::VersionNotFound { name: name.to_owned(), version: version.to_owned() }
            }
            (401 | 403, _) => Self::Unauthorized { reason },
            (429, _) => Self::Throttled { retry_after },
            (500.., _) => Self::Unavailable { reason },
            _ => Self::Rejected { reason },
        }
    }
}

/// Judges provider results for the resilience stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderClassifier;

impl<T> Classify<T, ProviderError> for ProviderClassifier {
    fn classify(&self, result: &Result<T, ProviderError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) => error.outcome(),
        }
    }
}

/// A place secrets are held.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;

    /// The value of secret `name`: its current version, or `version` when given.
    async fn get(&self, name: &str, version: Option<&str>) -> Result<SecretVersion, ProviderError>;

    /// The current versions of the secrets whose names start with `prefix` (all when
    /// empty), by name.
    async fn list(&self, prefix: &str) -> Result<Vec<VersionInfo>, ProviderError>;

    /// Makes `value` the current version of `name`, creating the secret when it does not
    /// exist yet.
    async fn put(&self, name: &str, value: SecretValue) -> Result<Rotation, ProviderError>;

    /// Changes the provider notices by itself (the local file); `None` for providers that
    /// report none (the cloud ones: their rotations arrive through this service).
    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        None
    }
}

/// A shared provider.
pub type SharedProvider = Arc<dyn Provider>;

/// Why the configured provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The local file could not be read.
    #[error(transparent)]
    Local(#[from] local::LocalFileError),
    /// This binary was built without the provider's cargo feature.
    #[error("SECRET_PROVIDER={provider} needs secrets-broker built with the cargo feature `{provider}`")]
    NotBuilt {
        /// The provider asked for.
        provider: ProviderKind,
    },
    /// The provider's settings or credentials cannot be used.
    #[error("{provider} secret provider: {reason}")]
    Setup {
        /// The provider.
        provider: ProviderKind,
        /// What is wrong (never a secret).
        reason: String,
    },
}

/// The provider `settings` select, ready to serve; the local file's watcher runs in
/// `background`.
pub async fn open(settings: &SecretsSettings, background: &BackgroundTasks) -> Result<SharedProvider, OpenError> {
    match settings.provider {
        ProviderKind::Local => {
            let provider = Arc::new(
                local::LocalProvider::open(settings.local.environment.clone(), settings.local.file.clone()).await?,
            );
            let watched = provider.clone();
            let interval = settings.local.watch_interval;
            background.spawn(async move { watched.watch(interval).await });
            Ok(provider)
        }
        #[cfg(feature = "aws")]
        ProviderKind::Aws => Ok(Arc::new(aws::AwsProvider::open(&settings.aws).await?)),
        #[cfg(feature = "azure")]
        ProviderKind::Azure => Ok(Arc::new(azure::AzureProvider::open(&settings.azure)?)),
        #[cfg(feature = "gcp")]
        ProviderKind::Gcp => Ok(Arc::new(gcp::GcpProvider::open(&settings.gcp).await?)),
        #[allow(unreachable_patterns, reason = "every cloud provider may be compiled out")]
        provider => Err(OpenError::NotBuilt { provider }),
    }
}
