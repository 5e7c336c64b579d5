//! The `aws` provider: AWS Secrets Manager through the official SDK, for deployments whose
//! secrets live in AWS (compiled only with the cargo feature `aws`).
//!
//! - Versions are Secrets Manager's version ids. The current one is the version staged
//!   `AWSCURRENT`; a put stages the new version there and AWS moves the one it replaced to
//!   `AWSPREVIOUS`, which stays readable by its id while clients move over.
//! - A UTF-8 value is stored as `SecretString`, any other as `SecretBinary`; both read back.
//! - No retries here: the broker calls every provider through its resilience stack
//!   (attempts, backoff, retry budget, breaker), so the SDK's own retries are disabled
//!   rather than multiplied underneath it.
//! - Error texts are built from AWS's error codes and messages only. An SDK error's `Debug`
//!   holds the raw HTTP exchange (a value, for a response that failed to parse), so it is
//!   never formatted. The SDK's own trace logs redact bodies unless `LOG_SIGNABLE_BODY` or
//!   `LOG_SENSITIVE_BODIES` is set (tests/aws.rs checks it).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::{Credentials, ProvideCredentials, Region};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::primitives::{Blob, DateTime};
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};

use super::{OpenError, Provider, ProviderError, ProviderKind, Rotation, SecretValue, SecretVersion, VersionInfo};
use crate::settings::AwsSettings;

/// The staging label of a secret's current version.
const CURRENT: &str = "AWSCURRENT";
/// The staging label AWS moves to the version a put replaced.
const PREVIOUS: &str = "AWSPREVIOUS";
/// Secrets Manager's version ids are 32 to 64 characters; no other id can exist.
const VERSION_ID_LENGTH: std::ops::RangeInclusive<usize> = 32..=64;
/// Secrets per `ListSecrets` page (the API's maximum).
const LIST_PAGE: i32 = 100;

/// AWS Secrets Manager in one region.
pub struct AwsProvider {
    /// The SDK client (connection pool, credentials cache); cheap to share.
    client: Client,
    /// The region, for `Debug` and logs.
    region: String,
    /// The endpoint override, when one is set (moto in tests, a VPC endpoint).
    endpoint_url: Option<String>,
}

impl fmt::Debug for AwsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsProvider").field("region", &self.region).field("endpoint_url", &self.endpoint_url).finish()
    }
}

impl AwsProvider {
    /// A client for `settings`: static credentials when both keys are set, otherwise the
    /// SDK's default chain (environment, profile, web identity, container, instance
    /// metadata). Fails when no credentials can be found at all or the settings are
    /// unusable; a credential source that is only slow or failing now is logged and tried
    /// again on the first call.
    pub async fn open(settings: &AwsSettings) -> Result<Self, OpenError> {
        let setup = |reason: String| OpenError::Setup { provider: ProviderKind::Aws, reason };
        if settings.region.trim().is_empty() {
            return Err(setup("SECRET_AWS_REGION is empty".to_owned()));
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            // The broker's resilience stack retries each provider call; SDK retries under
            // it would multiply the attempts and hide throttling from its breaker.
            .retry_config(RetryConfig::disabled());
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(key_id), Some(secret)) => {
                let credentials = Credentials::new(key_id, secret.expose(), None, None, "SECRET_AWS_ACCESS_KEY_ID");
                loader = loader.credentials_provider(credentials);
            }
            (None, None) => {}
            _ => {
                return Err(setup("SECRET_AWS_ACCESS_KEY_ID and SECRET_AWS_SECRET_ACCESS_KEY go together".to_owned()));
            }
        }
        if let Some(url) = &settings.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(setup(format!("SECRET_AWS_ENDPOINT_URL {url:?} is not an http(s) URL")));
            }
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        if let Some(credentials) = config.credentials_provider() {
            match credentials.provide_credentials().await {
                Ok(_) => {}
                Err(
                    error @ (CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_)),
                ) => {
                    return Err(setup(format!(
                        "no usable AWS credentials ({error}): set SECRET_AWS_ACCESS_KEY_ID and \
                         SECRET_AWS_SECRET_ACCESS_KEY, or give the pod a role"
                    )));
                }
                Err(error) => tracing::warn!(error = %error, "AWS credentials not available yet; retried on first use"),
            }
        }
        Ok(Self {
            client: Client::new(&config),
            region: settings.region.clone(),
            endpoint_url: settings.endpoint_url.clone(),
        })
    }

    /// Whether secret `name` exists, to tell a missing secret from a missing version (AWS
    /// answers `ResourceNotFoundException` for both).
    async fn not_found(&self, name: &str, version: &str) -> ProviderError {
        match self.client.describe_secret().secret_id(name).send().await {
            Err(error) if error.code() == Some("ResourceNotFoundException") => {
                ProviderError::NotFound { name: name.to_owned() }
            }
            _ => ProviderError::VersionNotFound { name: name.to_owned(), version: version.to_owned() },
        }
    }

    /// `PutSecretValue`, or `CreateSecret` for a secret that does not exist yet: the new
    /// version's id and whether the secret already existed.
    async fn write(&self, name: &str, value: &SecretValue) -> Result<(String, bool), ProviderError> {
        let (text, binary) = match value.as_text() {
            Some(text) => (Some(text.to_owned()), None),
            None => (None, Some(Blob::new(value.expose()))),
        };
        let put = || {
            self.client
                .put_secret_value()
                .secret_id(name)
                .set_secret_string(text.clone())
                .set_secret_binary(binary.clone())
                .send()
        };
        match put().await {
            Ok(output) => return Ok((required(output.version_id, "PutSecretValue", "VersionId")?, true)),
            Err(error) if error.code() != Some("ResourceNotFoundException") => return Err(failure(&error, name, None)),
            Err(_) => {}
        }
        let created = self
            .client
            .create_secret()
            .name(name)
            .set_secret_string(text.clone())
            .set_secret_binary(binary.clone())
            .send()
            .await;
        match created {
            Ok(output) => Ok((required(output.version_id, "CreateSecret", "VersionId")?, false)),
            // Another writer created it since: write over it as a new version after all.
            Err(error) if error.code() == Some("ResourceExistsException") => {
                let output = put().await.map_err(|error| failure(&error, name, None))?;
                Ok((required(output.version_id, "PutSecretValue", "VersionId")?, true))
            }
            Err(error) => Err(failure(&error, name, None)),
        }
    }

    /// The staged versions of `name` with their creation dates, by id.
    async fn versions(&self, name: &str) -> Result<HashMap<String, (Vec<String>, Option<SystemTime>)>, ProviderError> {
        let mut versions = HashMap::new();
        let mut pages = self.client.list_secret_version_ids().secret_id(name).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| failure(&error, name, None))?;
            for version in page.versions.unwrap_or_default() {
                if let Some(id) = version.version_id {
                    versions.insert(id, (version.version_stages.unwrap_or_default(), time(version.created_date)));
                }
            }
        }
        Ok(versions)
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Aws
    }

    async fn get(&self, name: &str, version: Option<&str>) -> Result<SecretVersion, ProviderError> {
        if let Some(version) = version
            && !VERSION_ID_LENGTH.contains(&version.len())
        {
            return Err(ProviderError::VersionNotFound { name: name.to_owned(), version: version.to_owned() });
        }
        let output = match self
            .client
            .get_secret_value()
            .secret_id(name)
            .set_version_id(version.map(str::to_owned))
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) => {
                return Err(match version {
                    Some(version) if error.code() == Some("ResourceNotFoundException") => {
                        self.not_found(name, version).await
                    }
                    _ => failure(&error, name, version),
                });
            }
        };
        let value = match (output.secret_string, output.secret_binary) {
            (Some(text), _) => SecretValue::from(text),
            (None, Some(binary)) => SecretValue::new(binary.into_inner()),
            (None, None) => return Err(missing("GetSecretValue", "SecretString")),
        };
        let info = VersionInfo {
            name: name.to_owned(),
            version: required(output.version_id, "GetSecretValue", "VersionId")?,
            created_at: time(output.created_date),
            expires_at: None,
        };
        Ok(SecretVersion { info, value })
    }

    /// Secrets Manager's `ListSecrets` gives each secret's staged versions but no version's
    /// creation date: `created_at` is the secret's when it has a single version, else unset
    /// (`get` gives the exact date).
    async fn list(&self, prefix: &str) -> Result<Vec<VersionInfo>, ProviderError> {
        if !prefix.chars().all(is_name_char) {
            // No secret name has that prefix (and a leading `!` would negate AWS's filter).
            return Ok(Vec::new());
        }
        let filter =
            (!prefix.is_empty()).then(|| Filter::builder().key(FilterNameStringType::Name).values(prefix).build());
        let mut pages = self
            .client
            .list_secrets()
            .set_filters(filter.map(|filter| vec![filter]))
            .max_results(LIST_PAGE)
            .into_paginator()
            .send();
        let mut listed = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| failure(&error, prefix, None))?;
            for entry in page.secret_list.unwrap_or_default() {
                // AWS documents a case-sensitive prefix match; the trait's prefix stays exact
                // whatever the service's matching does.
                let Some(name) = entry.name.filter(|name| name.starts_with(prefix)) else { continue };
                let stages = entry.secret_versions_to_stages.unwrap_or_default();
                let Some(current) = stages.iter().find(|(_, labels)| labels.iter().any(|label| label == CURRENT))
                else {
                    continue;
                };
                let created_at = if stages.len() == 1 { time(entry.created_date) } else { None };
                listed.push(VersionInfo { name, version: current.0.clone(), created_at, expires_at: None });
            }
        }
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    }

    async fn put(&self, name: &str, value: SecretValue) -> Result<Rotation, ProviderError> {
        let (version, existed) = self.write(name, &value).await?;
        drop(value);
        let info =
            |version: String, created_at| VersionInfo { name: name.to_owned(), version, created_at, expires_at: None };
        // The value is written: a failure to read the labels back must not report the
        // rotation as failed (a retry would write yet another version).
        let versions = match self.versions(name).await {
            Ok(versions) => versions,
            Err(error) => {
                tracing::warn!(secret = name, error = %error, "AWS secret rotated; its previous version is unknown");
                return Ok(Rotation { current: info(version, None), previous: None });
            }
        };
        let staged = |label: &str| versions.iter().find(|(_, (labels, _))| labels.iter().any(|staged| staged == label));
        let created_at = versions.get(&version).and_then(|(_, created_at)| *created_at);
        // AWSPREVIOUS is the version this put replaced only while this one is still
        // current: a later writer's put would have moved the label on again.
        let previous = match staged(CURRENT) {
            Some((current, _)) if existed && *current == version => {
                staged(PREVIOUS).map(|(id, (_, created_at))| info(id.clone(), *created_at))
            }
            _ => None,
        };
        Ok(Rotation { current: info(version, created_at), previous })
    }
}

/// What a failed call on secret `name` (its `version`, when one was asked) means for the
/// broker. Only codes, AWS's messages and transport errors make up the text, never a body.
fn failure<E>(error: &SdkError<E, HttpResponse>, name: &str, version: Option<&str>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = error.code().unwrap_or_default();
            let reason = match (error.code(), error.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                (None, _) => format!("unreadable answer (HTTP {status})"),
            };
            match code {
                "ResourceNotFoundException" => match version {
                    Some(version) => {
                        ProviderError::VersionNotFound { name: name.to_owned(), version: version.to_owned() }
                    }
                    None => ProviderError::NotFound { name: name.to_owned() },
                },
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "SignatureDoesNotMatch"
                | "IncompleteSignature"
                | "MissingAuthenticationToken"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "ExpiredToken"
                | "RequestExpired" => ProviderError::Unauthorized { reason },
                "ThrottlingException" | "Throttling" | "TooManyRequestsException" | "RequestLimitExceeded" => {
                    ProviderError::Throttled { retry_after: retry_after(service.raw()) }
                }
                "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => {
                    ProviderError::Unavailable { reason }
                }
                _ if status == 429 => ProviderError::Throttled { retry_after: retry_after(service.raw()) },
                _ if status == 401 || status == 403 => ProviderError::Unauthorized { reason },
                // A 5xx, or an answer that is no error AWS sends (a 200 cut short).
                _ if !(400..500).contains(&status) => ProviderError::Unavailable { reason },
                // InvalidRequestException, InvalidParameterException, ResourceExistsException,
                // DecryptionFailure, EncryptionFailure, LimitExceededException, ...
                _ => ProviderError::Rejected { reason },
            }
        }
        SdkError::TimeoutError(_) => ProviderError::Unavailable { reason: "AWS Secrets Manager timed out".to_owned() },
        SdkError::DispatchFailure(_) => match credentials_error(error) {
            Some(CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_)) => {
                ProviderError::Unauthorized {
                    reason: format!("no usable AWS credentials: {}", DisplayErrorContext(error)),
                }
            }
            _ => ProviderError::Unavailable { reason: DisplayErrorContext(error).to_string() },
        },
        // The body of a response that could not be read may hold a value: only its status.
        SdkError::ResponseError(response) => ProviderError::Unavailable {
            reason: format!("unreadable answer from AWS Secrets Manager (HTTP {})", response.raw().status().as_u16()),
        },
        SdkError::ConstructionFailure(_) => ProviderError::Rejected { reason: DisplayErrorContext(error).to_string() },
        _ => ProviderError::Unavailable { reason: "AWS Secrets Manager call failed".to_owned() },
    }
}

/// The credentials error behind a failed dispatch, when resolving credentials failed.
fn credentials_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a CredentialsError> {
    let mut cause = error.source();
    while let Some(error) = cause {
        if let Some(credentials) = error.downcast_ref::<CredentialsError>() {
            return Some(credentials);
        }
        cause = error.source();
    }
    None
}

/// A `Retry-After` in seconds, when the answer has one (AWS seldom sends it).
fn retry_after(response: &HttpResponse) -> Option<Duration> {
    response.headers().get("retry-after")?.trim().parse().ok().map(Duration::from_secs)
}

/// A field AWS always sends, or `Unavailable`.
fn required<T>(field: Option<T>, operation: &str, name: &str) -> Result<T, ProviderError> {
    field.ok_or_else(|| missing(operation, name))
}

fn missing(operation: &str, name: &str) -> ProviderError {
    ProviderError::Unavailable { reason: format!("{operation} answered without {name}") }
}

fn time(date: Option<DateTime>) -> Option<SystemTime> {
    date.and_then(|date| SystemTime::try_from(date).ok())
}

/// Whether `c` may appear in a Secrets Manager secret name.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/_+=.@-".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_characters_are_aws_ones() {
        assert!("prod/db-password_1+x=y.z@w".chars().all(is_name_char));
        assert!(!"!negated".chars().all(is_name_char));
        assert!(!"with space".chars().all(is_name_char));
    }
}
