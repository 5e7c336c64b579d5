//! What can go wrong talking to an MCP server, classified for the broker's resilience.
//!
//! Each variant says who is at fault — the network or process (transient), the server's
//! protocol, the call itself, or the configuration — so that retries and the circuit
//! breaker can decide without reading messages. Messages are safe to show callers: no
//! header or environment values, no endpoint URL (it may carry credentials), bounded length.

use std::time::Duration;

use rmcp::model::{ErrorCode, ErrorData};

/// The longest server-provided text kept in an error message, in characters.
const MAX_SERVER_MESSAGE_CHARS: usize = 500;

/// An MCP connection or call failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The operation did not finish in time. A timed-out `initialize` closes the
    /// connection; a timed-out call is cancelled and the connection stays usable.
    #[error("{operation} timed out after {} ms", .after.as_millis())]
    Timeout {
        /// What timed out, for example `initialize` or `tools/call`.
        operation: &'static str,
        /// The limit that was exceeded.
        after: Duration,
    },

    /// The transport failed or closed: the process exited, the HTTP server is unreachable
    /// or answered with an HTTP error. A new connection may succeed.
    #[error("MCP transport failed: {message}")]
    Transport {
        /// What happened.
        message: String,
    },

    /// The stdio server's program could not be started (not found, not executable, bad
    /// working directory). Retrying does not help.
    #[error("could not start the MCP server: {message}")]
    Spawn {
        /// Why.
        message: String,
    },

    /// The server broke the protocol: output that is not JSON-RPC, a response of the wrong
    /// shape, or a result the specification forbids.
    #[error("MCP protocol error: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },

    /// The server has no tool of that name.
    #[error("the MCP server has no tool named {tool:?}")]
    ToolNotFound {
        /// The name called.
        tool: String,
    },

    /// The server rejected the arguments (JSON-RPC `-32602`).
    #[error("the MCP server rejected the arguments: {message}")]
    InvalidParams {
        /// The server's explanation.
        message: String,
    },

    /// The server answered with another JSON-RPC error.
    #[error("the MCP server answered error {code}: {message}")]
    Server {
        /// The JSON-RPC error code.
        code: i32,
        /// The server's message.
        message: String,
    },

    /// The server refused the credentials (HTTP 401 or 403).
    #[error("the MCP server refused the credentials")]
    Unauthorized,

    /// The connection's specification is unusable (an invalid URL or header).
    #[error("invalid MCP server configuration: {message}")]
    InvalidSpec {
        /// What is invalid.
        message: String,
    },
}

/// The class of a [`ConnectionError`], for retry and circuit-breaker decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`ConnectionError::Timeout`].
    Timeout,
    /// [`ConnectionError::Transport`].
    Transport,
    /// [`ConnectionError::Spawn`].
    Spawn,
    /// [`ConnectionError::Protocol`].
    Protocol,
    /// [`ConnectionError::ToolNotFound`].
    ToolNotFound,
    /// [`ConnectionError::InvalidParams`].
    InvalidParams,
    /// [`ConnectionError::Server`].
    Server,
    /// [`ConnectionError::Unauthorized`].
    Unauthorized,
    /// [`ConnectionError::InvalidSpec`].
    InvalidSpec,
}

impl ConnectionError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectionError::Timeout { .. } => ErrorKind::Timeout,
            ConnectionError::Transport { .. } => ErrorKind::Transport,
            ConnectionError::Spawn { .. } => ErrorKind::Spawn,
            ConnectionError::Protocol { .. } => ErrorKind::Protocol,
            ConnectionError::ToolNotFound { .. } => ErrorKind::ToolNotFound,
            ConnectionError::InvalidParams { .. } => ErrorKind::InvalidParams,
            ConnectionError::Server { .. } => ErrorKind::Server,
            ConnectionError::Unauthorized => ErrorKind::Unauthorized,
            ConnectionError::InvalidSpec { .. } => ErrorKind::InvalidSpec,
        }
    }

    /// Whether trying again (on a new connection, for transport failures) may succeed:
    /// timeouts and transport failures.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), ErrorKind::Timeout | ErrorKind::Transport)
    }

    /// Whether the failure is the server's (it counts against its circuit breaker), as
    /// opposed to the caller's (unknown tool, bad arguments) or the configuration's.
    pub fn is_server_failure(&self) -> bool {
        matches!(self.kind(), ErrorKind::Timeout | ErrorKind::Transport | ErrorKind::Protocol | ErrorKind::Server)
    }

    /// Whether the connection should be reopened after this error (a stdio connection is
    /// always closed by it; an HTTP one may survive, but cannot be trusted).
    pub fn closes_connection(&self) -> bool {
        matches!(self.kind(), ErrorKind::Transport | ErrorKind::Protocol | ErrorKind::Spawn | ErrorKind::Unauthorized)
    }

    pub(crate) fn transport(message: impl Into<String>) -> Self {
        ConnectionError::Transport { message: message.into() }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        ConnectionError::Protocol { message: message.into() }
    }

    /// Maps a JSON-RPC error from the server; `tool` is the tool called, if any.
    pub(crate) fn from_json_rpc(error: &ErrorData, tool: Option<&str>) -> Self {
        let message = bounded(&error.message);
        match error.code {
            ErrorCode::INVALID_PARAMS if tool.is_some_and(|tool| names_missing_tool(&message, tool)) => {
                ConnectionError::ToolNotFound { tool: tool.unwrap_or_default().to_owned() }
            }
            ErrorCode::INVALID_PARAMS => ConnectionError::InvalidParams { message },
            ErrorCode::PARSE_ERROR | ErrorCode::INVALID_REQUEST => ConnectionError::Protocol {
                message: format!("the server could not read the request ({}): {message}", error.code.0),
            },
            code => ConnectionError::Server { code: code.0, message },
        }
    }
}

/// Whether a `-32602` message says that `tool` does not exist, in the words of the
/// specification's example (`Unknown tool: x`) or of the TypeScript SDK (`Tool x not found`).
fn names_missing_tool(message: &str, tool: &str) -> bool {
    message == format!("Unknown tool: {tool}") || message == format!("Tool {tool} not found")
}

/// `text` cut to [`MAX_SERVER_MESSAGE_CHARS`] characters.
pub(crate) fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_SERVER_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tool_messages_of_both_sdks_are_tool_not_found() {
        for message in ["Unknown tool: nope", "Tool nope not found"] {
            let error = ErrorData::new(ErrorCode::INVALID_PARAMS, message.to_owned(), None);
            assert_eq!(
                ConnectionError::from_json_rpc(&error, Some("nope")),
                ConnectionError::ToolNotFound { tool: "nope".into() }
            );
        }
        let error = ErrorData::new(ErrorCode::INVALID_PARAMS, "a: expected number", None);
        assert_eq!(ConnectionError::from_json_rpc(&error, Some("nope")).kind(), ErrorKind::InvalidParams);
    }

    #[test]
    fn other_codes_are_server_errors_with_bounded_messages() {
        let error = ErrorData::new(ErrorCode::INTERNAL_ERROR, "x".repeat(2000), None);
        let ConnectionError::Server { code, message } = ConnectionError::from_json_rpc(&error, None) else {
            panic!("not a server error");
        };
        assert_eq!(code, -32603);
        assert_eq!(message.chars().count(), MAX_SERVER_MESSAGE_CHARS + 1);
    }

    #[test]
    fn classes_drive_resilience() {
        let timeout = ConnectionError::Timeout { operation: "tools/call", after: Duration::from_secs(1) };
        assert!(timeout.is_transient() && timeout.is_server_failure() && !timeout.closes_connection());
        let missing = ConnectionError::ToolNotFound { tool: "x".into() };
        assert!(!missing.is_transient() && !missing.is_server_failure());
        assert!(ConnectionError::transport("closed").closes_connection());
    }
}
