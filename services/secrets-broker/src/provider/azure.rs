//! The `azure` provider: Azure Key Vault secrets (`SECRET_PROVIDER=azure`), read and
//! written through the Key Vault REST API (api-version 7.5) with a Microsoft Entra
//! client-credentials token ([`entra`]).
//!
//! Why REST over the workspace's `reqwest` and not the official SDK
//! (`azure_security_keyvault_secrets` + `azure_identity`): the SDK refuses any authority
//! host and any authorized request that is not `https`, so it cannot be pointed at a local
//! fake, and it brings `time`, `typespec` and (in 1.1) `clap` into the build. The REST
//! surface the broker needs is four calls. Plain `http` is accepted here only for loopback
//! addresses, where the tests' fakes listen; anything else must be `https`.
//!
//! - `get`: `GET {vault}/secrets/{name}[/{version}]`.
//! - `put`: `PUT {vault}/secrets/{name}` creates the secret or adds a version; the version
//!   current before is read first to report it.
//! - `list`: `GET {vault}/secrets` page by page (`nextLink`, only to the same vault). Key
//!   Vault lists secrets without their versions, so each listed secret's current version
//!   is read too (its value is dropped at once): one request, where listing its versions
//!   would take a page per 25 rotations.
//!
//! Key Vault stores text: a value that is not UTF-8 is refused. A vault answer of 401
//! drops the cached token and tries once more with a new one; 429 and 5xx are returned as
//! they are, since the broker's resilience stack does the retrying.

mod entra;

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::{Response, StatusCode, Url};
use serde::{Deserialize, Serialize};

use self::entra::Entra;
use super::{
    OpenError, Provider, ProviderError, ProviderKind, Rotation, SecretValue, SecretVersion, Subject, VersionInfo,
};
use crate::settings::AzureSettings;

/// The Key Vault REST API version spoken.
pub const API_VERSION: &str = "7.5";

/// The token scope of the public cloud's Key Vault, used when the vault's host does not
/// name its cloud (a local fake).
pub const DEFAULT_SCOPE: &str = "https://vault.azure.net/.default";

/// Secrets per list page (Key Vault's maximum).
const PAGE_SIZE: &str = "25";

/// Longest part of a Key Vault error message kept in an error text.
const MAX_MESSAGE: usize = 300;

/// One request's time limit (the broker's own deadline is 10 s per attempt).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An Azure Key Vault.
#[derive(Debug)]
pub struct AzureProvider {
    http: reqwest::Client,
    /// The vault's base URL (`https://my-vault.vault.azure.net/`).
    vault: Url,
    entra: Entra,
}

/// A secret bundle (Get Secret, Set Secret).
#[derive(Deserialize)]
struct SecretBundle {
    /// Absent only for secrets Key Vault will not show (never for ours).
    value: Option<String>,
    /// `{vault}/secrets/{name}/{version}`.
    id: String,
    #[serde(default)]
    attributes: Attributes,
}

/// A list page (Get Secrets).
#[derive(Deserialize)]
struct SecretList {
    #[serde(default)]
    value: Vec<SecretItem>,
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

/// A listed secret: its identifier without a version, and its attributes.
#[derive(Deserialize)]
struct SecretItem {
    id: String,
    #[serde(default)]
    attributes: Attributes,
}

/// A secret's attributes; times are Unix seconds.
#[derive(Deserialize, Default)]
struct Attributes {
    enabled: Option<bool>,
    created: Option<u64>,
    exp: Option<u64>,
}

/// Set Secret's body.
#[derive(Serialize)]
struct SetSecret<'a> {
    value: &'a str,
}

/// Key Vault's error body: `{"error":{"code":"SecretNotFound","message":"…"}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl AzureProvider {
    /// The vault `settings` name, with their client credentials. Nothing is sent yet: a
    /// wrong secret shows on the first call as [`ProviderError::Unauthorized`].
    pub fn open(settings: &AzureSettings) -> Result<Self, OpenError> {
        let setup = |reason: String| OpenError::Setup { provider: ProviderKind::Azure, reason };
        let vault_url =
            settings.vault_url.as_deref().ok_or_else(|| setup("SECRET_AZURE_VAULT_URL is not set".into()))?;
        let vault = parse_url("SECRET_AZURE_VAULT_URL", vault_url).map_err(setup)?;
        let (Some(tenant), Some(client_id), Some(client_secret)) =
            (&settings.tenant_id, &settings.client_id, &settings.client_secret)
        else {
            return Err(setup(
                "SECRET_AZURE_TENANT_ID, SECRET_AZURE_CLIENT_ID and SECRET_AZURE_CLIENT_SECRET are required (client \
                 secret credentials)"
                    .into(),
            ));
        };
        let mut token_url = parse_url("SECRET_AZURE_AUTHORITY_HOST", &settings.authority_host).map_err(setup)?;
        token_url
            .path_segments_mut()
            .map_err(|()| setup("SECRET_AZURE_AUTHORITY_HOST cannot carry a path".into()))?
            .pop_if_empty()
            .extend([tenant.as_str(), "oauth2", "v2.0", "token"]);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            // A redirect would carry the bearer token or the client secret somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| setup(format!("HTTP client: {error}")))?;
        let scope = scope(&vault);
        let entra = Entra::new(http.clone(), token_url, client_id.clone(), client_secret.clone(), scope);
        Ok(Self { http, vault, entra })
    }

    /// `{vault}/{segments…}?api-version=7.5`.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.vault.clone();
        // The vault URL was checked to be http(s), which always has a path.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.query_pairs_mut().append_pair("api-version", API_VERSION);
        url
    }

    /// Sends the request `build` makes with a bearer token. A 401 drops the token and the
    /// request is sent once more with a new one (rebuilt, body and all).
    async fn send(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<Response, ProviderError> {
        let token = self.entra.token().await?;
        let response = build().bearer_auth(token.secret()).send().await.map_err(|e| transport("Key Vault", &e))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        // Revoked, or the vault now wants another tenant's token: one fresh token, once.
        self.entra.forget(&token).await;
        let token = self.entra.token().await?;
        build().bearer_auth(token.secret()).send().await.map_err(|e| transport("Key Vault", &e))
    }

    /// The body of a successful answer, or the error its status stands for.
    async fn read(response: Response, subject: Subject<'_>) -> Result<Bytes, ProviderError> {
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|error| transport("Key Vault", &error))?;
        if status.is_success() {
            return Ok(body);
        }
        let reason = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => format!("Key Vault answered {status}: {}: {}", error.code, tidy(&error.message)),
            Err(_) => format!("Key Vault answered {status}"),
        };
        Err(ProviderError::from_http_status(status.as_u16(), subject, reason, retry_after))
    }

    /// A list page's `nextLink`, when it points into this vault (the bearer token goes
    /// nowhere else).
    fn next_page(&self, link: &str) -> Result<Url, ProviderError> {
        match Url::parse(link) {
            Ok(url) if url.origin() == self.vault.origin() => Ok(url),
            _ => Err(ProviderError::Unavailable { reason: "Key Vault's nextLink leaves the vault".to_owned() }),
        }
    }
}

#[async_trait]
impl Provider for AzureProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Azure
    }

    async fn get(&self, name: &str, version: Option<&str>) -> Result<SecretVersion, ProviderError> {
        let (url, subject) = match version {
            Some(version) => (self.url(&["secrets", name, version]), Subject::Version(name, version)),
            None => (self.url(&["secrets", name]), Subject::Secret(name)),
        };
        let response = self.send(|| self.http.get(url.clone())).await?;
        let body = Self::read(response, subject).await?;
        let bundle: SecretBundle = parse(&body)?;
        let info = version_info(name, &bundle.id, &bundle.attributes)?;
        let value = bundle.value.ok_or_else(|| ProviderError::Unavailable {
            reason: format!("Key Vault answered without a value for secret {name}"),
        })?;
        Ok(SecretVersion { info, value: SecretValue::from(value) })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<VersionInfo>, ProviderError> {
        let mut names = Vec::new();
        let mut page = Some(self.url(&["secrets"]));
        if let Some(first) = &mut page {
            first.query_pairs_mut().append_pair("maxresults", PAGE_SIZE);
        }
        while let Some(url) = page.take() {
            let response = self.send(|| self.http.get(url.clone())).await?;
            let body = Self::read(response, Subject::List).await?;
            let list: SecretList = parse(&body)?;
            for item in list.value {
                // A disabled secret has no version that can be read.
                if item.attributes.enabled == Some(false) {
                    continue;
                }
                if let Some(name) = secret_name(&item.id).filter(|name| name.starts_with(prefix)) {
                    names.push(name);
                }
            }
            page = list.next_link.filter(|link| !link.is_empty()).map(|link| self.next_page(&link)).transpose()?;
        }
        names.sort();
        names.dedup();
        let mut current = Vec::with_capacity(names.len());
        for name in names {
            match self.get(&name, None).await {
                Ok(version) => current.push(version.info),
                // Deleted since it was listed.
                Err(ProviderError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(current)
    }

    async fn put(&self, name: &str, value: SecretValue) -> Result<Rotation, ProviderError> {
        let text = value.as_text().ok_or_else(|| ProviderError::Rejected {
            reason: "Azure Key Vault stores text and the value is not UTF-8".to_owned(),
        })?;
        let previous = match self.get(name, None).await {
            Ok(version) => Some(version.info),
            Err(ProviderError::NotFound { .. }) => None,
            Err(error) => return Err(error),
        };
        let body = serde_json::to_vec(&SetSecret { value: text })
            .map_err(|error| ProviderError::Rejected { reason: format!("the value cannot be sent: {error}") })?;
        let url = self.url(&["secrets", name]);
        let response = self
            .send(|| {
                self.http.put(url.clone()).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone())
            })
            .await?;
        let body = Self::read(response, Subject::Secret(name)).await?;
        let bundle: SecretBundle = parse(&body)?;
        let current = version_info(name, &bundle.id, &bundle.attributes)?;
        Ok(Rotation { current, previous })
    }
}

/// The token scope for the vault's cloud: `https://vault.azure.net/.default` for
/// `*.vault.azure.net`, `https://vault.azure.cn/.default` for `*.vault.azure.cn`, and so
/// on; the public cloud's for a host that names none.
fn scope(vault: &Url) -> String {
    let host = vault.host_str().unwrap_or_default();
    match host.split_once('.') {
        Some((_, cloud)) if cloud.starts_with("vault.") => format!("https://{cloud}/.default"),
        _ => DEFAULT_SCOPE.to_owned(),
    }
}

/// `value` as a URL that may carry credentials: `https`, or `http` to a loopback address.
fn parse_url(variable: &str, value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|error| format!("{variable}: {error}"))?;
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(host) => {
            host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!("{variable} must be an https URL (plain http only to a loopback address)")),
    }
}

/// The secret's name in a Key Vault identifier (`{vault}/secrets/{name}[/{version}]`).
fn secret_name(id: &str) -> Option<String> {
    let url = Url::parse(id).ok()?;
    let mut segments = url.path_segments()?;
    (segments.next()? == "secrets").then_some(())?;
    segments.next().filter(|name| !name.is_empty()).map(str::to_owned)
}

/// The version a secret bundle's identifier names, with its times.
fn version_info(name: &str, id: &str, attributes: &Attributes) -> Result<VersionInfo, ProviderError> {
    let version = Url::parse(id)
        .ok()
        .and_then(|url| url.path_segments().and_then(|mut segments| segments.nth(2).map(str::to_owned)))
        .filter(|version| !version.is_empty())
        .ok_or_else(|| ProviderError::Unavailable { reason: format!("Key Vault's secret id {id} names no version") })?;
    let time = |seconds: Option<u64>| seconds.map(|seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
    Ok(VersionInfo {
        name: name.to_owned(),
        version,
        created_at: time(attributes.created),
        expires_at: time(attributes.exp),
    })
}

/// A successful answer's JSON.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ProviderError> {
    // serde's message could quote the body, which may hold a value: not kept.
    serde_json::from_slice(body)
        .map_err(|_| ProviderError::Unavailable { reason: "Key Vault's answer is not the JSON expected".to_owned() })
}

/// The provider's retry hint (`Retry-After`, seconds or an HTTP date).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| agentmesh_resilience::parse_retry_after(value, SystemTime::now()))
}

/// A request that got no answer from `service`.
fn transport(service: &str, error: &reqwest::Error) -> ProviderError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not be reached"
    } else {
        "broke off"
    };
    ProviderError::Unavailable { reason: format!("{service} {what}") }
}

/// `text` on one line, cut to [`MAX_MESSAGE`] bytes on a character boundary (Key Vault's
/// 403 messages run over several lines).
fn tidy(text: &str) -> String {
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_follows_the_vaults_cloud() {
        let scope_of = |url: &str| scope(&Url::parse(url).unwrap());
        assert_eq!(scope_of("https://my-vault.vault.azure.net"), "https://vault.azure.net/.default");
        assert_eq!(scope_of("https://my-vault.vault.azure.cn/"), "https://vault.azure.cn/.default");
        assert_eq!(scope_of("https://v.vault.usgovcloudapi.net"), "https://vault.usgovcloudapi.net/.default");
        assert_eq!(scope_of("http://127.0.0.1:8080"), DEFAULT_SCOPE);
    }

    #[test]
    fn credentials_travel_over_https_or_to_loopback_only() {
        assert!(parse_url("V", "https://my-vault.vault.azure.net").is_ok());
        assert!(parse_url("V", "http://127.0.0.1:1234").is_ok());
        assert!(parse_url("V", "http://localhost:1234").is_ok());
        assert!(parse_url("V", "http://[::1]:1234").is_ok());
        let error = parse_url("SECRET_AZURE_VAULT_URL", "http://my-vault.vault.azure.net").unwrap_err();
        assert!(error.starts_with("SECRET_AZURE_VAULT_URL must be an https URL"), "{error}");
        assert!(parse_url("V", "ftp://127.0.0.1").is_err());
    }

    #[test]
    fn identifiers_name_the_secret_and_the_version() {
        let id = "https://my-vault.vault.azure.net/secrets/openai-api-key/4387e9f3d6e14c459867679a90fd0f79";
        assert_eq!(secret_name(id).as_deref(), Some("openai-api-key"));
        assert_eq!(secret_name("https://my-vault.vault.azure.net/secrets/x").as_deref(), Some("x"));
        assert_eq!(secret_name("https://my-vault.vault.azure.net/keys/x"), None);
        let info =
            version_info("openai-api-key", id, &Attributes { created: Some(1_700_000_000), ..Default::default() })
                .unwrap();
        assert_eq!(info.version, "4387e9f3d6e14c459867679a90fd0f79");
        assert_eq!(info.created_at, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
        assert!(version_info("x", "https://my-vault.vault.azure.net/secrets/x", &Attributes::default()).is_err());
    }

    #[test]
    fn messages_are_kept_on_one_short_line() {
        assert_eq!(tidy("Caller is not authorized.\r\nAction: 'get'\r\n"), "Caller is not authorized. Action: 'get'");
        let long = tidy(&"é".repeat(400));
        assert!(long.len() <= MAX_MESSAGE && long.starts_with('é'));
    }
}
