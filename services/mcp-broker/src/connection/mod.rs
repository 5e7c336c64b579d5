//! The broker's MCP client: one [`Connection`] per MCP server session.
//!
//! Registry code decides *which* servers to talk to; this module only talks. It opens a
//! session over stdio (a child process it supervises, see [`stdio`], started by a
//! [`Launcher`] so that it dies with the broker) or streamable HTTP,
//! runs `initialize`, lists tools page by page, calls them with a time limit, and turns
//! every failure into a [`ConnectionError`] whose class drives retries and the circuit
//! breaker. It is built on `rmcp`, the official Rust SDK, and speaks the MCP specification
//! of 2025-06-18 (the version it asks for; the server's answer is recorded).
//!
//! The broker advertises no client capabilities (no sampling, elicitation or roots), so
//! servers have no reason to call back; `notifications/tools/list_changed` is surfaced
//! through [`Connection::tools_changed`].

mod content;
mod error;
mod http;
pub mod launcher;
pub mod ledger;
mod spec;
mod stdio;

use std::future::Future;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest, Implementation, PaginatedRequestParams,
    PingRequest, ProtocolVersion, ServerResult,
};
use rmcp::service::{ClientCacheConfig, ClientInitializeError, NotificationContext, RunningService};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::{Map, Value};
use tokio::sync::watch;

pub use self::content::{DiscoveredTool, ToolHints, ToolResult};
pub use self::error::{ConnectionError, ErrorKind};
pub use self::launcher::Launcher;
pub use self::ledger::{GroupLedger, LedgerError};
pub use self::spec::{HttpSpec, ServerSpec, StdioSpec, Timeouts, TransportSpec};

/// The MCP version the broker asks for at `initialize` (its contract tracks it).
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// The most `tools/list` pages read in one listing, against a server that never stops.
const MAX_TOOL_PAGES: usize = 1000;
/// How long closing an HTTP session (its `DELETE`) may take.
const HTTP_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a server said about itself at `initialize`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerDetails {
    /// The protocol version agreed.
    pub protocol_version: String,
    /// The server's name (`serverInfo.name`), empty when it gave none.
    pub name: String,
    /// The server's version (`serverInfo.version`), empty when it gave none.
    pub version: String,
    /// Its human-readable title, if any.
    pub title: Option<String>,
    /// Its instructions for clients, if any.
    pub instructions: Option<String>,
    /// The capabilities it advertises, by name (`tools`, `resources`, `prompts`, …), sorted.
    pub capabilities: Vec<String>,
    /// Whether it promises `notifications/tools/list_changed`.
    pub tools_list_changed: bool,
}

impl ServerDetails {
    /// `name version`, as the registry shows it (for example `mcp-servers/everything 2.0.0`).
    pub fn server_info(&self) -> String {
        format!("{} {}", self.name, self.version).trim().to_owned()
    }
}

/// An open MCP session with one server.
///
/// Calls may run concurrently (`&self`). Close it with [`Connection::close`]; a connection
/// that is only dropped still kills a stdio server's process group at once.
pub struct Connection {
    service: RunningService<RoleClient, ClientEvents>,
    details: ServerDetails,
    timeouts: Timeouts,
    tools_changed: watch::Receiver<u64>,
    closed: watch::Receiver<bool>,
    child: Option<stdio::StdioChild>,
    violation: stdio::Violation,
    endpoint: Option<String>,
    label: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("label", &self.label)
            .field("details", &self.details)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the server (starting a stdio server directly, see [`Launcher::direct`])
    /// and runs `initialize` within `spec.timeouts.initialize`. On any failure a started
    /// child is ended before returning.
    pub async fn open(spec: &ServerSpec) -> Result<Connection, ConnectionError> {
        Connection::open_with(spec, &Launcher::direct()).await
    }

    /// [`Connection::open`], starting a stdio server with `launcher`.
    pub async fn open_with(spec: &ServerSpec, launcher: &Launcher) -> Result<Connection, ConnectionError> {
        let (tools_changed_sender, tools_changed) = watch::channel(0);
        let (closed_sender, closed) = watch::channel(false);
        let handler = ClientEvents { tools_changed: tools_changed_sender, label: spec.label.clone() };
        let limit = spec.timeouts.initialize;
        let (service, child, violation, endpoint) = match &spec.transport {
            TransportSpec::Stdio(stdio_spec) => {
                let (child, transport) = stdio::spawn(stdio_spec, &spec.label, launcher).await?;
                let violation = transport.violation();
                let transport = Watched { inner: transport, closed: closed_sender };
                match initialize(handler.serve(transport), limit, &violation, None).await {
                    Ok(service) => (service, Some(child), violation, None),
                    Err(error) => {
                        tracing::warn!(server = %spec.label, pid = child.pid(), %error, "stdio MCP server failed to initialize");
                        child.terminate(spec.timeouts.shutdown_grace).await;
                        return Err(error);
                    }
                }
            }
            TransportSpec::StreamableHttp(http_spec) => {
                let transport = Watched { inner: http::transport(http_spec, limit)?, closed: closed_sender };
                let violation = stdio::Violation::default();
                let service = initialize(handler.serve(transport), limit, &violation, Some(&http_spec.url)).await?;
                (service, None, violation, Some(http_spec.url.clone()))
            }
        };
        // rmcp's response cache would answer `tools/list` from memory, and even serve a
        // stale list when the server is down: discovery must see the server itself.
        service.peer().set_response_cache_config(ClientCacheConfig::disabled()).await;
        let details = service.peer().peer_info().map(|info| server_details(&info)).unwrap_or_default();
        tracing::info!(server = %spec.label, server_info = %details.server_info(), protocol = %details.protocol_version, "MCP session open");
        Ok(Connection {
            service,
            details,
            timeouts: spec.timeouts,
            tools_changed,
            closed,
            child,
            violation,
            endpoint,
            label: spec.label.clone(),
        })
    }

    /// What the server said about itself at `initialize`.
    pub fn details(&self) -> &ServerDetails {
        &self.details
    }

    /// The stdio server's process id (also its process group id); `None` over HTTP.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(stdio::StdioChild::pid)
    }

    /// Whether the session has ended (the process exited, the transport failed or closed);
    /// every later request fails with a transport error, so open a new connection.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow() || self.service.is_closed() || self.service.peer().is_transport_closed()
    }

    /// Resolves when the session has ended (see [`Connection::is_closed`]): for example
    /// when a stdio server exits, so that its supervisor can start it again.
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        // An error means the transport is gone, which is closed too.
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// Like [`Connection::closed`], without borrowing the connection: for a supervisor that
    /// must not keep the connection alive while it waits.
    pub fn on_close(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closed = self.closed.clone();
        async move {
            // An error means the transport is gone, which is closed too.
            let _ = closed.wait_for(|closed| *closed).await;
        }
    }

    /// A receiver whose value changes each time the server sends
    /// `notifications/tools/list_changed` (it counts them); `changed().await` on it to
    /// learn when to list the tools again.
    pub fn tools_changed(&self) -> watch::Receiver<u64> {
        self.tools_changed.clone()
    }

    /// Lists every tool, following `nextCursor` page by page (each page within the
    /// request timeout).
    pub async fn list_tools(&self) -> Result<Vec<DiscoveredTool>, ConnectionError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_TOOL_PAGES {
            let params = cursor.take().map(|cursor| PaginatedRequestParams::default().with_cursor(Some(cursor)));
            let page =
                self.within("tools/list", self.timeouts.request, self.service.peer().list_tools(params), None).await?;
            tools.extend(page.tools.into_iter().map(DiscoveredTool::from));
            match page.next_cursor {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => return Ok(tools),
            }
        }
        Err(ConnectionError::protocol(format!("tools/list did not end after {MAX_TOOL_PAGES} pages")))
    }

    /// Calls the tool named `remote_name` on the server with `arguments`, within `timeout`.
    ///
    /// A tool that reports an error gives `Ok` with `is_error` set; an unknown tool, rejected
    /// arguments, a timeout (the call is then cancelled, the connection stays usable) or a
    /// failed transport give the matching [`ConnectionError`].
    pub async fn call_tool(
        &self,
        remote_name: &str,
        arguments: Map<String, Value>,
        timeout: Duration,
    ) -> Result<ToolResult, ConnectionError> {
        let params = CallToolRequestParams::new(remote_name.to_owned()).with_arguments(arguments);
        let result =
            self.within("tools/call", timeout, self.service.peer().call_tool(params), Some(remote_name)).await?;
        content::tool_result(result, remote_name)
    }

    /// Sends `ping` and waits for the answer, within the request timeout.
    pub async fn ping(&self) -> Result<(), ConnectionError> {
        let ping = self.service.peer().send_request(ClientRequest::PingRequest(PingRequest::default()));
        match self.within("ping", self.timeouts.request, ping, None).await? {
            ServerResult::EmptyResult(_) => Ok(()),
            _ => Err(ConnectionError::protocol("ping was answered with something other than an empty result")),
        }
    }

    /// Ends a session that others still hold, at once: the session is cancelled and a
    /// stdio server's process group killed (the last holder reaps it). [`Self::close`] is
    /// the orderly way when this is the only holder.
    pub fn kill(&self) {
        self.service.cancellation_token().cancel();
        if let Some(child) = &self.child {
            child.kill_group();
        }
    }

    /// Ends the session: over HTTP the session is deleted; a stdio server's stdin is closed,
    /// then its process group is terminated and the server reaped (see [`stdio`]).
    pub async fn close(mut self) {
        let grace = self.timeouts.shutdown_grace;
        let limit = if self.child.is_some() { grace } else { HTTP_CLOSE_TIMEOUT };
        if let Err(error) = self.service.close_with_timeout(limit).await {
            tracing::warn!(server = %self.label, %error, "closing an MCP session failed");
        }
        if let Some(child) = self.child.take() {
            child.terminate(grace).await;
        }
        tracing::info!(server = %self.label, "MCP session closed");
    }

    /// Runs `request` within `limit`, classifying its failure.
    async fn within<T>(
        &self,
        operation: &'static str,
        limit: Duration,
        request: impl Future<Output = Result<T, ServiceError>>,
        tool: Option<&str>,
    ) -> Result<T, ConnectionError> {
        match tokio::time::timeout(limit, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let error = service_error(error, &self.violation, self.endpoint.as_deref(), tool);
                tracing::debug!(server = %self.label, operation, %error, "MCP request failed");
                Err(error)
            }
            // Dropping the request sends `notifications/cancelled` for it.
            Err(_) => Err(ConnectionError::Timeout { operation, after: limit }),
        }
    }
}

/// Runs the `initialize` handshake within `limit`.
async fn initialize(
    handshake: impl Future<Output = Result<RunningService<RoleClient, ClientEvents>, ClientInitializeError>>,
    limit: Duration,
    violation: &stdio::Violation,
    endpoint: Option<&str>,
) -> Result<RunningService<RoleClient, ClientEvents>, ConnectionError> {
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(service)) => Ok(service),
        Ok(Err(error)) => Err(initialize_error(error, violation, endpoint)),
        Err(_) => Err(ConnectionError::Timeout { operation: "initialize", after: limit }),
    }
}

fn initialize_error(
    error: ClientInitializeError,
    violation: &stdio::Violation,
    endpoint: Option<&str>,
) -> ConnectionError {
    if let Some(what) = violation.get() {
        return ConnectionError::Protocol { message: what };
    }
    if error.is_authorization_required() {
        return ConnectionError::Unauthorized;
    }
    match error {
        ClientInitializeError::ConnectionClosed(_) => {
            ConnectionError::transport("the server closed the connection during initialize")
        }
        ClientInitializeError::TransportError { error, .. } => http::classify(error.error.as_ref(), endpoint),
        ClientInitializeError::JsonRpcError(data) => ConnectionError::from_json_rpc(&data, None),
        ClientInitializeError::Cancelled => ConnectionError::transport("initialize was cancelled"),
        ClientInitializeError::NoCompatibleProtocolVersion { server_supported, .. } => {
            ConnectionError::protocol(format!(
                "no protocol version in common (the server supports {})",
                server_supported.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ))
        }
        other => ConnectionError::protocol(format!("initialize failed: {}", error::bounded(&other.to_string()))),
    }
}

fn service_error(
    error: ServiceError,
    violation: &stdio::Violation,
    endpoint: Option<&str>,
    tool: Option<&str>,
) -> ConnectionError {
    if let Some(what) = violation.get() {
        return ConnectionError::Protocol { message: what };
    }
    if error.is_authorization_required() {
        return ConnectionError::Unauthorized;
    }
    match error {
        ServiceError::McpError(data) => ConnectionError::from_json_rpc(&data, tool),
        ServiceError::TransportSend(error) => http::classify(error.error.as_ref(), endpoint),
        ServiceError::TransportClosed => ConnectionError::transport("the connection to the server is closed"),
        ServiceError::UnexpectedResponse => {
            ConnectionError::protocol("the server answered with a result of the wrong type")
        }
        ServiceError::Timeout { timeout } => ConnectionError::Timeout { operation: "request", after: timeout },
        ServiceError::Cancelled { .. } => ConnectionError::transport("the request was cancelled"),
        other => ConnectionError::protocol(error::bounded(&other.to_string())),
    }
}

fn server_details(info: &rmcp::model::ServerPeerInfo) -> ServerDetails {
    let mut capabilities: Vec<String> = match serde_json::to_value(&info.capabilities) {
        Ok(Value::Object(object)) => object.keys().cloned().collect(),
        _ => Vec::new(),
    };
    capabilities.sort();
    let implementation = info.server_info.as_ref();
    ServerDetails {
        protocol_version: info.protocol_version.to_string(),
        name: implementation.map(|server| server.name.clone()).unwrap_or_default(),
        version: implementation.map(|server| server.version.clone()).unwrap_or_default(),
        title: implementation.and_then(|server| server.title.clone()),
        instructions: info.instructions.clone(),
        capabilities,
        tools_list_changed: info.capabilities.tools.as_ref().and_then(|tools| tools.list_changed).unwrap_or(false),
    }
}

/// A transport that reports its end on a watch channel (rmcp does not say when it ends).
struct Watched<T> {
    inner: T,
    closed: watch::Sender<bool>,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Watched<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await;
        if message.is_none() {
            self.closed.send_replace(true);
        }
        message
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        let result = self.inner.close().await;
        self.closed.send_replace(true);
        result
    }
}

/// The client side of a session: advertises nothing, and counts tool-list changes.
struct ClientEvents {
    tools_changed: watch::Sender<u64>,
    label: String,
}

impl ClientHandler for ClientEvents {
    fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) -> impl Future<Output = ()> + Send + '_ {
        tracing::info!(server = %self.label, "MCP server's tool list changed");
        self.tools_changed.send_modify(|count| *count += 1);
        std::future::ready(())
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("agentmesh-mcp-broker", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::V_2025_06_18)
    }
}
