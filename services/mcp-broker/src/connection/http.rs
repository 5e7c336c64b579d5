//! Streamable HTTP MCP servers: the transport, and what its failures mean.
//!
//! Headers (authentication included) go on every request; failures are classified from
//! rmcp's and reqwest's error types — an unreachable server is a transport failure, 401 or
//! 403 is [`ConnectionError::Unauthorized`], a body that is not JSON-RPC is a protocol
//! error — and the endpoint URL is cut out of messages, since it may carry credentials.

use std::collections::HashMap;
use std::error::Error;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError};

use super::error::{ConnectionError, bounded};
use super::spec::HttpSpec;

/// The transport for `spec`; `connect_timeout` bounds each TCP (and TLS) connection.
pub(crate) fn transport(
    spec: &HttpSpec,
    connect_timeout: Duration,
) -> Result<StreamableHttpClientTransport<reqwest::Client>, ConnectionError> {
    let url = reqwest::Url::parse(&spec.url)
        .map_err(|error| ConnectionError::InvalidSpec { message: format!("the endpoint is not a URL: {error}") })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConnectionError::InvalidSpec { message: "the endpoint is not an http(s) URL".into() });
    }
    let mut headers = HashMap::with_capacity(spec.headers.len());
    for (name, value) in &spec.headers {
        let header_name = HeaderName::try_from(name.as_str())
            .map_err(|_| ConnectionError::InvalidSpec { message: format!("invalid header name {name:?}") })?;
        let mut header_value = HeaderValue::try_from(value.as_str())
            .map_err(|_| ConnectionError::InvalidSpec { message: format!("invalid value for header {name:?}") })?;
        header_value.set_sensitive(true);
        headers.insert(header_name, header_value);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|error| ConnectionError::InvalidSpec { message: format!("HTTP client: {error}") })?;
    let config = StreamableHttpClientTransportConfig::with_uri(spec.url.as_str()).custom_headers(headers);
    Ok(StreamableHttpClientTransport::with_client(client, config))
}

/// Classifies a transport failure; `endpoint` is removed from the message.
pub(crate) fn classify(error: &(dyn Error + 'static), endpoint: Option<&str>) -> ConnectionError {
    let mut source: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(http_error) = current.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            return classify_http(http_error, endpoint);
        }
        if let Some(reqwest_error) = current.downcast_ref::<reqwest::Error>() {
            return classify_reqwest(reqwest_error);
        }
        source = current.source();
    }
    ConnectionError::transport(scrubbed(&error.to_string(), endpoint))
}

fn classify_http(error: &StreamableHttpError<reqwest::Error>, endpoint: Option<&str>) -> ConnectionError {
    match error {
        StreamableHttpError::Client(reqwest_error) => classify_reqwest(reqwest_error),
        StreamableHttpError::HttpStatus(status) => {
            ConnectionError::transport(format!("the server answered HTTP {}", status.status))
        }
        StreamableHttpError::AuthRequired(_) | StreamableHttpError::InsufficientScope(_) => {
            ConnectionError::Unauthorized
        }
        StreamableHttpError::Deserialize(_)
        | StreamableHttpError::UnexpectedServerResponse(_)
        | StreamableHttpError::UnexpectedContentType(_)
        | StreamableHttpError::ResponseBodyTooLarge { .. }
        | StreamableHttpError::Sse(_)
        | StreamableHttpError::MissingSessionIdInResponse => {
            ConnectionError::protocol(scrubbed(&error.to_string(), endpoint))
        }
        other => ConnectionError::transport(scrubbed(&other.to_string(), endpoint)),
    }
}

fn classify_reqwest(error: &reqwest::Error) -> ConnectionError {
    if let Some(status) = error.status() {
        if matches!(status.as_u16(), 401 | 403) {
            return ConnectionError::Unauthorized;
        }
        return ConnectionError::transport(format!("the server answered HTTP {}", status.as_u16()));
    }
    let what = if error.is_connect() {
        "could not connect to the server"
    } else if error.is_timeout() {
        "the HTTP request timed out"
    } else if error.is_body() || error.is_decode() {
        "reading the HTTP response failed"
    } else {
        "the HTTP request failed"
    };
    ConnectionError::transport(what)
}

/// `message` without `endpoint`, bounded.
fn scrubbed(message: &str, endpoint: Option<&str>) -> String {
    let message = match endpoint {
        Some(endpoint) if !endpoint.is_empty() => message.replace(endpoint, "<endpoint>"),
        _ => message.to_owned(),
    };
    bounded(&message)
}
