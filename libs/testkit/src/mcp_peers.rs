//! The real MCP reference server (`@modelcontextprotocol/server-everything`) that tests run
//! agents and the broker against: where `tests/mcp/install.sh` put it, and a process of it
//! serving streamable HTTP on a port of its own.
//!
//! Its port is reserved for the test process ([`crate::ports`]), and a server counts as
//! started only when it says it listens (its own line on stderr, printed once its bind
//! succeeded), never when something answers on the port; should its port be taken after
//! all, it exits, and it is started again on another.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStderr, Command};

use crate::{REQUIRE_SERVICES_ENV, services_required};

/// What the reference server prints on stderr once it listens.
const LISTENING: &str = "MCP Streamable HTTP Server listening on port";
/// How many ports a start tries before it gives up.
const PORT_ATTEMPTS: u32 = 5;
/// How long one start may take to say it listens (node is slow on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `tests/mcp/install.sh` installs the test servers: `AGENTMESH_TOOLS_DIR`, else
/// `~/.cache/agentmesh-tools`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("AGENTMESH_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/agentmesh-tools"))
}

/// The reference server's entry point, or `None` (after a one-line reason) when it is not
/// installed.
///
/// # Panics
/// When it is missing and `AGENTMESH_REQUIRE_SERVICES=1`.
pub fn everything() -> Option<PathBuf> {
    let tools = tools_dir();
    let path = tools.join("mcp-everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if path.is_file() {
        return Some(path);
    }
    let reason = format!("the MCP test servers are not installed under {} (run tests/mcp/install.sh)", tools.display());
    assert!(!services_required(), "{reason} and {REQUIRE_SERVICES_ENV}=1");
    eprintln!("skipped: {reason}");
    None
}

/// The reference server serving streamable HTTP on `http://127.0.0.1:<port>/mcp`, killed
/// when dropped.
#[derive(Debug)]
pub struct HttpPeer {
    child: Child,
    port: u16,
}

impl HttpPeer {
    /// The reference server at `entry` (see [`everything`]) on a port nobody else holds.
    ///
    /// # Panics
    /// When node cannot be started, or no start on [`PORT_ATTEMPTS`] ports says it listens.
    pub async fn everything(entry: &Path) -> HttpPeer {
        let mut outcomes = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::ports::reserve().unwrap_or_else(|error| panic!("a port for the MCP server: {error}"));
            match start_everything(entry, port).await {
                Ok(peer) => return peer,
                Err(outcome) => outcomes.push(outcome),
            }
        }
        panic!("the MCP reference server did not start: {}", outcomes.join("; "));
    }

    /// The reference server at `entry` on `port`, for a test that needs the port before
    /// the server (see [`Self::everything`] for the usual case).
    ///
    /// # Panics
    /// When node cannot be started or does not say it listens (`port` was taken).
    pub async fn everything_on(entry: &Path, port: u16) -> HttpPeer {
        start_everything(entry, port).await.unwrap_or_else(|outcome| panic!("the MCP reference server: {outcome}"))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its MCP endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Kills it and waits until its port refuses connections.
    ///
    /// # Panics
    /// When it cannot be killed.
    pub async fn stop(&mut self) {
        self.child.kill().await.unwrap_or_else(|error| panic!("killing the MCP server: {error}"));
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The reference server at `entry` on `port`, or what became of it.
async fn start_everything(entry: &Path, port: u16) -> Result<HttpPeer, String> {
    let mut command = Command::new("node");
    command.arg(entry).arg("streamableHttp").env("PORT", port.to_string());
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().unwrap_or_else(|error| panic!("starting node {}: {error}", entry.display()));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("node's stderr was not piped"));
    match tokio::time::timeout(START_TIMEOUT, listening(stderr)).await {
        Ok(Ok(())) => Ok(HttpPeer { child, port }),
        Ok(Err(said)) => Err(format!("port {port}: exited ({said})")),
        Err(_) => Err(format!("port {port}: silent for {START_TIMEOUT:?}")),
    }
}

/// Reads `stderr` until the server says it listens (then keeps draining it in the
/// background, so that the server never blocks on a full pipe), or returns the last thing
/// it said before it exited.
async fn listening(stderr: ChildStderr) -> Result<(), String> {
    let mut lines = BufReader::new(stderr).lines();
    let mut last = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains(LISTENING) {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(());
        }
        last = line;
    }
    Err(last)
}
