//! The `gcp` provider: GCP Secret Manager (`SECRET_PROVIDER=gcp`) through Google's
//! official Rust client, `google-cloud-secretmanager-v1`, which speaks the v1 REST API over
//! the workspace's reqwest and rustls and can be pointed at a local fake
//! (`SECRET_GCP_ENDPOINT`).
//!
//! Credentials: a service-account key file (`SECRET_GCP_CREDENTIALS_PATH`), else the
//! environment's default credentials. `google-cloud-auth` turns a key into self-signed
//! RS256 JWTs (Google's recommended form for service accounts calling Google APIs), so no
//! token endpoint is involved; the key is tried once at start so a broken one stops it.
//! A 401 from Secret Manager rebuilds the client, reading the key file again (a rotated
//! key is picked up), and tries once more.
//!
//! - `get`: `versions/{v}:access` (`latest` for the current version); the payload's CRC32C
//!   is checked when Secret Manager sends one.
//! - `put`: the current version is read (to report it), the secret is created when absent
//!   (automatic replication), then `:addVersion` with the payload's CRC32C.
//! - `list`: `secrets` page by page, filtered by name prefix here (Secret Manager's filter
//!   language matches substrings, not prefixes), then each secret's `versions/latest`
//!   without its value.
//!
//! The client's own retry loop is switched off (`NeverRetry`): the broker's resilience
//! stack retries 429 and 5xx, and the two would multiply. With
//! `GOOGLE_CLOUD_RUST_LOGGING=true` the client logs every request and answer, values
//! included, so the provider refuses to start then.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use google_cloud_gax::error::CredentialsError;
use google_cloud_gax::error::rpc::{Code, StatusDetails};
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_secretmanager_v1::Error;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::{
    Replication, Secret, SecretPayload, SecretVersion as GcpVersion, replication, secret_version,
};
use zeroize::Zeroizing;

use super::{
    OpenError, Provider, ProviderError, ProviderKind, Rotation, SecretValue, SecretVersion, Subject, VersionInfo,
};
use crate::settings::GcpSettings;

/// Secrets per list page.
const PAGE_SIZE: i32 = 100;

/// The variable that makes Google's client log each request and answer at debug level,
/// payloads included.
const SDK_LOGGING: &str = "GOOGLE_CLOUD_RUST_LOGGING";

/// One request's time limit (the broker's own deadline is 10 s per attempt).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest part of a Secret Manager error message kept in an error text.
const MAX_MESSAGE: usize = 300;

/// A GCP project's Secret Manager.
pub struct GcpProvider {
    /// `projects/{project}`.
    parent: String,
    /// Where to connect and with which key, to connect again after a 401.
    settings: GcpSettings,
    /// The client in use, replaced after a 401.
    client: RwLock<SecretManagerService>,
}

impl fmt::Debug for GcpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpProvider")
            .field("parent", &self.parent)
            .field("endpoint", &self.settings.endpoint)
            .field("credentials_path", &self.settings.credentials_path)
            .finish_non_exhaustive()
    }
}

impl GcpProvider {
    /// The project `settings` name, with their credentials (tried now when they are a key
    /// file).
    pub async fn open(settings: &GcpSettings) -> Result<Self, OpenError> {
        let setup = |reason: String| OpenError::Setup { provider: ProviderKind::Gcp, reason };
        let project = settings.project_id.as_deref().ok_or_else(|| setup("SECRET_GCP_PROJECT_ID is not set".into()))?;
        let client = connect(settings).await.map_err(setup)?;
        Ok(Self { parent: format!("projects/{project}"), settings: settings.clone(), client: RwLock::new(client) })
    }

    fn client(&self) -> SecretManagerService {
        self.client.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Runs `request` with the client; after a 401 once more with a new client (new
    /// credentials, new token).
    async fn call<T, F, Fut>(&self, subject: Subject<'_>, request: F) -> Result<T, ProviderError>
    where
        F: Fn(SecretManagerService) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        match request(self.client()).await {
            Ok(answer) => Ok(answer),
            Err(error) if unauthenticated(&error) => {
                let client = connect(&self.settings).await.map_err(|reason| ProviderError::Unauthorized { reason })?;
                *self.client.write().unwrap_or_else(PoisonError::into_inner) = client.clone();
                request(client).await.map_err(|error| failure(&error, subject))
            }
            Err(error) => Err(failure(&error, subject)),
        }
    }

    /// The metadata of the current version of secret `name`; `None` when it has none.
    async fn latest(&self, name: &str) -> Result<Option<GcpVersion>, ProviderError> {
        let version = format!("{}/secrets/{name}/versions/latest", self.parent);
        let answer = self
            .call(Subject::Secret(name), |client| {
                let version = version.clone();
                async move { client.get_secret_version().set_name(version).send().await }
            })
            .await;
        match answer {
            Ok(version) => Ok(Some(version)),
            Err(ProviderError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

#[async_trait]
impl Provider for GcpProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gcp
    }

    async fn get(&self, name: &str, version: Option<&str>) -> Result<SecretVersion, ProviderError> {
        let subject = version.map_or(Subject::Secret(name), |version| Subject::Version(name, version));
        let resource = format!("{}/secrets/{name}/versions/{}", self.parent, version.unwrap_or("latest"));
        let answer = self
            .call(subject, |client| {
                let resource = resource.clone();
                async move { client.access_secret_version().set_name(resource).send().await }
            })
            .await?;
        let payload = answer.payload.unwrap_or_default();
        if let Some(expected) = payload.data_crc32c
            && i64::from(crc32c(&payload.data)) != expected
        {
            return Err(ProviderError::Unavailable {
                reason: format!("the payload of secret {name} does not match its CRC32C"),
            });
        }
        let info = VersionInfo {
            name: name.to_owned(),
            version: version_id(&answer.name)?,
            // Accessing a version does not say when it was created.
            created_at: None,
            expires_at: None,
        };
        Ok(SecretVersion { info, value: SecretValue::new(payload.data.to_vec()) })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<VersionInfo>, ProviderError> {
        let mut secrets = Vec::new();
        let mut page_token = String::new();
        loop {
            let token = page_token.clone();
            let page = self
                .call(Subject::List, |client| {
                    let (parent, token) = (self.parent.clone(), token.clone());
                    async move {
                        client
                            .list_secrets()
                            .set_parent(parent)
                            .set_page_size(PAGE_SIZE)
                            .set_page_token(token)
                            .send()
                            .await
                    }
                })
                .await?;
            secrets.extend(page.secrets.into_iter().filter_map(|secret| {
                let name = secret.name.rsplit('/').next().unwrap_or_default().to_owned();
                let expires_at = secret.expire_time().and_then(|time| SystemTime::try_from(**time).ok());
                name.starts_with(prefix).then_some((name, expires_at))
            }));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        secrets.sort();
        let mut current = Vec::with_capacity(secrets.len());
        for (name, expires_at) in secrets {
            // A secret without versions, or whose latest is disabled or destroyed, has no
            // current value.
            let Some(version) = self.latest(&name).await? else { continue };
            if version.state != secret_version::State::Enabled {
                continue;
            }
            current.push(VersionInfo { expires_at, ..version_info(&name, &version)? });
        }
        Ok(current)
    }

    async fn put(&self, name: &str, value: SecretValue) -> Result<Rotation, ProviderError> {
        let previous = self.latest(name).await?;
        if previous.is_none() {
            let secret = Secret::new().set_replication(Replication::new().set_automatic(replication::Automatic::new()));
            self.call(Subject::Secret(name), |client| {
                let (parent, secret) = (self.parent.clone(), secret.clone());
                async move {
                    match client.create_secret().set_parent(parent).set_secret_id(name).set_secret(secret).send().await
                    {
                        // It exists without a version yet, or a concurrent put made it.
                        Err(error) if error.status().is_some_and(|status| status.code == Code::AlreadyExists) => Ok(()),
                        answer => answer.map(drop),
                    }
                }
            })
            .await?;
        }
        let payload = SecretPayload::new()
            .set_data(bytes::Bytes::copy_from_slice(value.expose()))
            .set_data_crc32c(i64::from(crc32c(value.expose())));
        let secret = format!("{}/secrets/{name}", self.parent);
        let added = self
            .call(Subject::Secret(name), |client| {
                let (secret, payload) = (secret.clone(), payload.clone());
                async move { client.add_secret_version().set_parent(secret).set_payload(payload).send().await }
            })
            .await?;
        Ok(Rotation {
            current: version_info(name, &added)?,
            previous: previous.map(|previous| version_info(name, &previous)).transpose()?,
        })
    }
}

/// A client for `settings`' endpoint and credentials; the reason (never a key) otherwise.
async fn connect(settings: &GcpSettings) -> Result<SecretManagerService, String> {
    // Its logs would carry secret values, and the client cannot be told to ignore it.
    if std::env::var(SDK_LOGGING).is_ok_and(|value| value == "true") {
        return Err(format!("{SDK_LOGGING}=true would log secret values: unset it"));
    }
    let mut builder = SecretManagerService::builder()
        // The broker's resilience stack retries (see the module doc).
        .with_retry_policy(NeverRetry)
        .with_attempt_timeout(REQUEST_TIMEOUT);
    if let Some(path) = &settings.credentials_path {
        builder = builder.with_credentials(service_account(path).await?);
    }
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder.build().await.map_err(|error| format!("Secret Manager client: {error}"))
}

/// Credentials from the service-account key file at `path`, tried once: making a token
/// signs a JWT locally, so a key that cannot sign shows here and not on the first read.
async fn service_account(path: &Path) -> Result<google_cloud_auth::credentials::Credentials, String> {
    let file = path.display();
    let bytes = Zeroizing::new(tokio::fs::read(path).await.map_err(|error| format!("{file}: {error}"))?);
    // serde's messages could quote the key: none is kept.
    let key: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| format!("{file} is not a service account key (JSON)"))?;
    let credentials = google_cloud_auth::credentials::service_account::Builder::new(key)
        .build()
        .map_err(|_| format!("{file} is not a service account key"))?;
    credentials
        .headers(http::Extensions::new())
        .await
        .map_err(|_| format!("the private key in {file} cannot sign tokens"))?;
    Ok(credentials)
}

/// Whether Secret Manager refused the credentials themselves (401, `UNAUTHENTICATED`).
fn unauthenticated(error: &Error) -> bool {
    error.http_status_code() == Some(401) || error.status().is_some_and(|status| status.code == Code::Unauthenticated)
}

/// The provider error `error` stands for.
fn failure(error: &Error, subject: Subject<'_>) -> ProviderError {
    if error.is_authentication() {
        let transient = std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<CredentialsError>())
            .is_some_and(CredentialsError::is_transient);
        let reason = "the credentials could not make a token".to_owned();
        return if transient { ProviderError::Unavailable { reason } } else { ProviderError::Unauthorized { reason } };
    }
    if error.is_timeout() {
        return ProviderError::Unavailable { reason: "Secret Manager timed out".to_owned() };
    }
    if error.is_connect() || error.is_io() || error.is_transport() {
        return ProviderError::Unavailable { reason: "Secret Manager could not be reached".to_owned() };
    }
    if error.is_binding() || error.is_serialization() {
        return ProviderError::Rejected { reason: "the request cannot be made for that name or version".to_owned() };
    }
    if error.is_deserialization() {
        return ProviderError::Unavailable { reason: "Secret Manager's answer is not the JSON expected".to_owned() };
    }
    let status = error.status();
    let reason = match status {
        Some(status) => format!("Secret Manager answered {}: {}", status.code.name(), cut(&status.message)),
        None => format!("Secret Manager answered HTTP {}", error.http_status_code().unwrap_or_default()),
    };
    // The HTTP status decides, as for every provider; the RPC code when there is none.
    let http = error.http_status_code().unwrap_or_else(|| status.map_or(500, |status| http_status(status.code)));
    ProviderError::from_http_status(http, subject, reason, retry_after(error))
}

/// The HTTP status Google maps an RPC code to.
fn http_status(code: Code) -> u16 {
    match code {
        Code::NotFound => 404,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

/// The wait Secret Manager asks for: `Retry-After`, else the status's `RetryInfo`.
fn retry_after(error: &Error) -> Option<Duration> {
    let header = error
        .http_headers()
        .and_then(|headers| headers.get(http::header::RETRY_AFTER))
        .and_then(|value| agentmesh_resilience::parse_retry_after(value, SystemTime::now()));
    header.or_else(|| {
        error.status()?.details.iter().find_map(|detail| match detail {
            StatusDetails::RetryInfo(info) => info.retry_delay.and_then(|delay| Duration::try_from(delay).ok()),
            _ => None,
        })
    })
}

/// The version number at the end of `projects/…/secrets/…/versions/{version}`.
fn version_id(resource: &str) -> Result<String, ProviderError> {
    resource
        .rsplit_once("/versions/")
        .map(|(_, version)| version.to_owned())
        .filter(|version| !version.is_empty())
        .ok_or_else(|| ProviderError::Unavailable { reason: format!("Secret Manager's {resource:?} names no version") })
}

fn version_info(name: &str, version: &GcpVersion) -> Result<VersionInfo, ProviderError> {
    Ok(VersionInfo {
        name: name.to_owned(),
        version: version_id(&version.name)?,
        created_at: version.create_time.and_then(|time| SystemTime::try_from(time).ok()),
        expires_at: None,
    })
}

/// CRC32C (Castagnoli), the checksum Secret Manager keeps of each payload. Bit by bit:
/// payloads are at most 64 KiB and read rarely.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// `text` cut to [`MAX_MESSAGE`] bytes on a character boundary.
fn cut(text: &str) -> &str {
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn version_ids_come_from_resource_names() {
        assert_eq!(version_id("projects/123/secrets/openai-api-key/versions/7").unwrap(), "7");
        assert!(version_id("projects/123/secrets/openai-api-key").is_err());
    }
}
