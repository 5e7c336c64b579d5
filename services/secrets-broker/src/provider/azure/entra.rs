//! Microsoft Entra ID access tokens for Key Vault: the OAuth 2.0 client-credentials grant
//! (`POST {authority}/{tenant}/oauth2/v2.0/token` with the application's client id and
//! secret), cached until shortly before they expire so a vault call costs one request.
//!
//! Only one token request runs at a time: callers that find no usable token wait for the
//! one being fetched instead of each asking Entra. The client secret goes into that form
//! body and nowhere else; tokens and the secret never reach an error text or a log.

use std::fmt;
use std::time::Duration;

use agentmesh_runtime::config::Secret;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{retry_after, transport};
use crate::provider::ProviderError;

/// How long before its expiry a token is replaced (at most half its lifetime), so a token
/// never expires between being handed out and reaching the vault.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Longest lifetime believed (Entra's tokens live about an hour).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Longest part of Entra's error description kept in an error text.
const MAX_DESCRIPTION: usize = 300;

/// The application's credentials and the token they last bought.
pub(super) struct Entra {
    /// Shared with the vault requests (one connection pool).
    http: reqwest::Client,
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    /// What the token is for: the vault's resource with `/.default`.
    scope: String,
    /// The token in use; the lock also makes concurrent callers share one token request.
    cached: Mutex<Option<AccessToken>>,
}

impl fmt::Debug for Entra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entra")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A bearer token and when to stop using it. Its `Debug` never shows it.
#[derive(Clone)]
pub(super) struct AccessToken {
    value: String,
    refresh_at: Instant,
}

impl AccessToken {
    /// The token, for the `Authorization` header.
    pub(super) fn secret(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

/// Entra's answer to a token request (Microsoft identity platform, client credentials).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds; a number on the v2.0 endpoint.
    expires_in: u64,
}

/// Entra's error answer (`error` is an OAuth code such as `invalid_client`).
#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: String,
}

impl Entra {
    /// Credentials for `scope`, asking `token_url`.
    pub(super) fn new(
        http: reqwest::Client,
        token_url: Url,
        client_id: String,
        client_secret: Secret,
        scope: String,
    ) -> Self {
        Self { http, token_url, client_id, client_secret, scope, cached: Mutex::new(None) }
    }

    /// A token good for a while yet: the cached one, or a new one from Entra.
    pub(super) async fn token(&self) -> Result<AccessToken, ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref().filter(|token| Instant::now() < token.refresh_at) {
            return Ok(token.clone());
        }
        let token = self.request().await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Drops `rejected` (the vault refused it) so the next [`token`](Self::token) asks
    /// Entra again, unless another caller already replaced it.
    pub(super) async fn forget(&self, rejected: &AccessToken) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|token| token.value == rejected.value) {
            *cached = None;
        }
    }

    async fn request(&self) -> Result<AccessToken, ProviderError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", self.client_secret.expose())
            .append_pair("scope", &self.scope)
            .append_pair("grant_type", "client_credentials")
            .finish();
        let sent = Instant::now();
        let response = self
            .http
            .post(self.token_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|error| transport("Microsoft Entra", &error))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|error| transport("Microsoft Entra", &error))?;
        if status.is_success() {
            let answer: TokenResponse = serde_json::from_slice(&body).map_err(|_| ProviderError::Unavailable {
                reason: "Microsoft Entra answered without an access token".to_owned(),
            })?;
            let lifetime = Duration::from_secs(answer.expires_in.min(MAX_LIFETIME.as_secs()));
            let margin = REFRESH_MARGIN.min(lifetime / 2);
            return Ok(AccessToken { value: answer.access_token, refresh_at: sent + lifetime - margin });
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::Throttled { retry_after });
        }
        if status.is_server_error() {
            return Err(ProviderError::Unavailable { reason: format!("Microsoft Entra answered {status}") });
        }
        // 400 and 401: invalid_client (a wrong or expired secret), unauthorized_client,
        // invalid_scope, an unknown tenant. None of them heals by retrying.
        let reason = match serde_json::from_slice::<TokenError>(&body) {
            Ok(error) => {
                let description = error.error_description.lines().next().unwrap_or_default();
                format!("Microsoft Entra refused the client credentials: {}: {}", error.error, cut(description))
            }
            Err(_) => format!("Microsoft Entra refused the client credentials ({status})"),
        };
        Err(ProviderError::Unauthorized { reason })
    }
}

/// `text` cut to [`MAX_DESCRIPTION`] bytes on a character boundary.
fn cut(text: &str) -> &str {
    if text.len() <= MAX_DESCRIPTION {
        return text;
    }
    let mut end = MAX_DESCRIPTION;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
