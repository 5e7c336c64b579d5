//! The HTTP plumbing every provider shares: one pooled client, JSON requests, error
//! statuses with their retry hints, server-sent events, and keeping API keys out of
//! every message that could reach a log or a caller.

use std::time::{Duration, SystemTime};

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;

use super::ProviderError;

/// Longest error message kept from a provider's body.
const MAX_ERROR_MESSAGE: usize = 500;

/// An HTTP client for one provider: connections are pooled per client, so a provider
/// keeps one and clones it.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    /// Finds the human-readable message in the provider's error body.
    error_message: fn(&serde_json::Value) -> Option<String>,
    /// Finds what else the provider's error body says (see [`ErrorHints`]), for providers
    /// whose bodies say more than their status and headers.
    error_hints: Option<fn(&serde_json::Value) -> ErrorHints>,
}

/// What a provider's error body says besides its message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorHints {
    /// The wait the body asks for before a retry (Google's `RetryInfo`); a `Retry-After`
    /// header wins over it.
    pub retry_after: Option<Duration>,
    /// The status the error stands for when the provider's own would mislead retries,
    /// fallback and key refresh (Google answers a wrong API key with 400, not 401).
    pub status: Option<u16>,
}

impl HttpClient {
    /// A client whose error bodies are read with `error_message`.
    pub fn new(error_message: fn(&serde_json::Value) -> Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self { client, error_message, error_hints: None }
    }

    /// The same client, also reading retry hints and corrected statuses from error bodies
    /// with `error_hints`.
    pub fn with_error_hints(self, error_hints: fn(&serde_json::Value) -> ErrorHints) -> Self {
        Self { error_hints: Some(error_hints), ..self }
    }

    /// The underlying client, to build requests with.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` and reads a JSON answer of type `T`; an error status becomes
    /// [`ProviderError::Status`] with the provider's message. `secret` is redacted from
    /// every message.
    pub async fn json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        secret: Option<&str>,
    ) -> Result<T, ProviderError> {
        let response = self.send(request, secret).await?;
        let body = response.bytes().await.map_err(|error| transport(&error, secret))?;
        serde_json::from_slice(&body).map_err(|error| ProviderError::Malformed(redact(&error.to_string(), secret)))
    }

    /// Sends `request` and returns its server-sent events once the provider accepted it.
    pub async fn events(
        &self,
        request: RequestBuilder,
        secret: Option<&str>,
    ) -> Result<impl Stream<Item = Result<Event, ProviderError>> + Send + 'static, ProviderError> {
        let response = self.send(request, secret).await?;
        let secret = secret.map(str::to_owned);
        Ok(response.bytes_stream().eventsource().map(move |event| {
            event.map_err(|error| match error {
                eventsource_stream::EventStreamError::Transport(error) => transport(&error, secret.as_deref()),
                other => ProviderError::Malformed(redact(&other.to_string(), secret.as_deref())),
            })
        }))
    }

    /// Sends `request`; a non-success status becomes an error.
    async fn send(&self, request: RequestBuilder, secret: Option<&str>) -> Result<Response, ProviderError> {
        let response = request.send().await.map_err(|error| transport(&error, secret))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let hints = json.as_ref().zip(self.error_hints).map(|(json, hints)| hints(json)).unwrap_or_default();
        let message = json
            .as_ref()
            .and_then(|json| (self.error_message)(json))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let message = if message.trim().is_empty() {
            status.canonical_reason().unwrap_or("no message").to_owned()
        } else {
            message
        };
        Err(ProviderError::Status {
            status: hints.status.unwrap_or(status.as_u16()),
            retry_after: retry_after.or(hints.retry_after),
            message: redact(&message, secret),
        })
    }
}

/// The provider's retry hint: `retry-after-ms` (OpenAI, Azure) or `Retry-After`.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(delay) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
    {
        return Some(delay);
    }
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| agentmesh_resilience::parse_retry_after(value, SystemTime::now()))
}

fn transport(error: &reqwest::Error, secret: Option<&str>) -> ProviderError {
    // reqwest's messages include the URL, which for Gemini may carry a key parameter.
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection refused or unreachable"
    } else if error.is_body() || error.is_decode() {
        "the connection broke while reading the answer"
    } else {
        "request failed"
    };
    ProviderError::Transport(redact(kind, secret))
}

/// `text` without `secret` or anything shaped like a provider key (`sk-…`, `sk-ant-…`,
/// `AIza…`), cut to a readable length.
pub fn redact(text: &str, secret: Option<&str>) -> String {
    let mut text = match secret {
        Some(secret) if secret.len() >= 4 => text.replace(secret, "[redacted]"),
        _ => text.to_owned(),
    };
    for prefix in ["sk-", "AIza"] {
        let mut from = 0;
        while let Some(found) = text[from..].find(prefix) {
            let start = from + found;
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*'))
                .map_or(text.len(), |offset| start + offset);
            if end - start >= 8 {
                text.replace_range(start..end, "[redacted]");
                from = start + "[redacted]".len();
            } else {
                from = end;
            }
        }
    }
    if text.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted_by_value_and_by_shape() {
        let text = "Incorrect API key provided: sk-proj-abcdEFGH1234****wxyz. key=my-own-secret, AIzaSyA1234567890";
        let redacted = redact(text, Some("my-own-secret"));
        assert_eq!(redacted, "Incorrect API key provided: [redacted]. key=[redacted], [redacted]");
        assert_eq!(redact("ask-me sk-1", None), "ask-me sk-1", "short look-alikes stay");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let text = "é".repeat(400);
        let redacted = redact(&text, None);
        assert!(redacted.len() <= MAX_ERROR_MESSAGE + '…'.len_utf8());
        assert!(redacted.ends_with('…'));
    }

    #[test]
    fn retry_after_reads_milliseconds_first_then_seconds() {
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", http::HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }

    #[test]
    fn an_unusable_milliseconds_hint_gives_way_to_retry_after() {
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", http::HeaderValue::from_static("7"));
        for unusable in ["1e300", "-5", "NaN", "inf", "soon"] {
            headers.insert("retry-after-ms", http::HeaderValue::from_static(unusable));
            assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)), "{unusable}");
        }
    }
}
