//! What it takes to reach one MCP server: plain, already-resolved values.
//!
//! The registry stores servers with secret *names*; whoever opens a connection resolves them
//! first and hands this module the values, so nothing here knows about secrets-broker.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach an MCP server, and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// A short label for logs, usually the server's registered name (never a secret).
    pub label: String,
    /// The transport and its parameters.
    pub transport: TransportSpec,
    /// Time limits of the connection's own requests.
    pub timeouts: Timeouts,
}

/// The transport of an MCP server, with resolved values.
#[derive(Clone, PartialEq, Eq)]
pub enum TransportSpec {
    /// A child process spoken to over its stdin and stdout.
    Stdio(StdioSpec),
    /// The streamable HTTP transport.
    StreamableHttp(HttpSpec),
}

/// How to start a stdio server.
#[derive(Clone, PartialEq, Eq)]
pub struct StdioSpec {
    /// The program: a path, or a name looked up in the broker's `PATH`.
    pub command: String,
    /// Its arguments, in order.
    pub args: Vec<String>,
    /// Environment variables added to the minimal environment (`PATH`, `HOME`, `LANG`
    /// from the broker); values are resolved (secrets included).
    pub env: Vec<(String, String)>,
    /// Working directory; `None` means the broker's.
    pub working_directory: Option<PathBuf>,
}

/// How to reach a streamable HTTP server.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpSpec {
    /// The MCP endpoint, for example `https://example.com/mcp`.
    pub url: String,
    /// Headers sent with every request (authentication included), with resolved values.
    pub headers: Vec<(String, String)>,
}

/// Time limits of a connection (a tool call's limit is given per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting (starting the process, or the first HTTP exchange) and `initialize`.
    pub initialize: Duration,
    /// `tools/list` (each page) and `ping`.
    pub request: Duration,
    /// On close, how long a stdio server may take to exit after its stdin closes, and again
    /// after `SIGTERM`, before it is killed.
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            initialize: Duration::from_secs(30),
            request: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

// Hand-written so that environment values and header values (secrets) never reach logs.
impl std::fmt::Debug for TransportSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportSpec::Stdio(stdio) => f.debug_tuple("Stdio").field(stdio).finish(),
            TransportSpec::StreamableHttp(http) => f.debug_tuple("StreamableHttp").field(http).finish(),
        }
    }
}

impl std::fmt::Debug for StdioSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("StdioSpec")
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &env_names)
            .field("working_directory", &self.working_directory)
            .finish()
    }
}

impl std::fmt::Debug for HttpSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HttpSpec").field("url", &self.url).field("headers", &header_names).finish()
    }
}
