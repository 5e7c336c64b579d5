//! Stdio MCP servers: the child process, its JSON-RPC framing, and its end.
//!
//! The broker spawns each server itself rather than through rmcp's child-process transport,
//! for these guarantees:
//! - **Its own process group** (`process_group(0)`), so that closing the connection signals
//!   every process the server started, not only the one the broker spawned.
//! - **No orphan, no zombie on close:** stdin is closed first (the MCP way of asking a stdio
//!   server to exit), then after a grace period the group gets `SIGTERM`, then `SIGKILL`;
//!   the group is killed *before* the leader is reaped, so its id cannot have been reused.
//!   Dropping a child without closing it kills the group at once and tokio reaps the leader.
//! - **A minimal environment:** `PATH`, `HOME`, `LANG` from the broker plus the server's own
//!   variables; nothing else of the broker's (its credentials included) leaks in.
//! - **Strict framing:** one JSON-RPC message per line. A line that is not one is a protocol
//!   violation that closes the connection and is reported as such, where rmcp would skip it
//!   and leave the caller waiting for a timeout. Stderr is drained into the logs, bounded.
//!
//! - **Nothing left when the broker is killed:** a [`Launcher`] gives the server a
//!   parent-death signal (through `setpriv`) and records its process group in a
//!   [`GroupLedger`](super::ledger::GroupLedger), from which the group is removed once the
//!   server has ended; a broker that starts again kills the groups a killed one left.

use std::future::Future;
use std::io;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use rmcp::RoleClient;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::error::ConnectionError;
use super::launcher::Launcher;
use super::ledger::GroupLedger;
use super::spec::StdioSpec;

/// Variables passed on from the broker's environment to every stdio server.
const INHERITED_VARIABLES: [&str; 3] = ["PATH", "HOME", "LANG"];
/// The longest JSON-RPC line accepted from a server (rmcp's own default).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// The longest stderr line logged; the rest of a longer line is dropped.
const MAX_STDERR_LINE_BYTES: usize = 2048;
/// Stderr lines logged per child; later ones are drained but not logged.
const MAX_STDERR_LINES: usize = 500;
/// How often a closing connection checks whether its child has exited.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long reaping a killed child and draining its stderr may take.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a stdio transport saw that broke the protocol, shared with the connection so that
/// "the transport closed" can be reported as the protocol error it was.
#[derive(Debug, Clone, Default)]
pub(crate) struct Violation(Arc<Mutex<Option<String>>>);

impl Violation {
    fn record(&self, what: String) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(what);
        }
    }

    /// The first violation seen, if any.
    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A running stdio server: the leader of its own process group.
#[derive(Debug)]
pub(crate) struct StdioChild {
    child: Child,
    pid: u32,
    group: Option<Pid>,
    stderr_drain: Option<JoinHandle<()>>,
    label: String,
    terminated: bool,
    /// Where the group is recorded, until the child is dropped.
    ledger: Option<Arc<GroupLedger>>,
}

/// Starts the server described by `spec` with `launcher`; returns the child and the
/// transport on its pipes.
pub(crate) async fn spawn(
    spec: &StdioSpec,
    label: &str,
    launcher: &Launcher,
) -> Result<(StdioChild, StdioTransport), ConnectionError> {
    let spawn_error = |error: io::Error| ConnectionError::Spawn { message: format!("`{}`: {error}", spec.command) };
    let mut command = launcher.command(spec).map_err(spawn_error)?;
    command
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in INHERITED_VARIABLES {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.envs(spec.env.iter().map(|(name, value)| (name, value)));
    if let Some(directory) = &spec.working_directory {
        command.current_dir(directory);
    }
    let mut child = launcher.spawn(command).await.map_err(spawn_error)?;
    let pid = child.id().unwrap_or_default();
    let group = i32::try_from(pid).ok().and_then(Pid::from_raw);
    let ledger = launcher.ledger().cloned();
    if let Some(ledger) = &ledger {
        ledger.record(pid);
    }
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(ConnectionError::Spawn { message: "the child's stdin or stdout is missing".into() });
    };
    let stderr_drain = child.stderr.take().map(|stderr| tokio::spawn(drain_stderr(stderr, label.to_owned())));
    tracing::info!(server = %label, pid, command = %spec.command, "started stdio MCP server");
    let transport = StdioTransport {
        stdin: Arc::new(tokio::sync::Mutex::new(Some(stdin))),
        stdout: FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_MESSAGE_BYTES)),
        violation: Violation::default(),
    };
    let child = StdioChild { child, pid, group, stderr_drain, label: label.to_owned(), terminated: false, ledger };
    Ok((child, transport))
}

impl StdioChild {
    /// The process id of the server (also its process group id).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Ends the server: waits `grace` for it to exit on its own (its stdin should be closed
    /// by now), then `SIGTERM`s its group and waits `grace` again, then `SIGKILL`s the group
    /// and reaps the leader.
    pub(crate) async fn terminate(mut self, grace: Duration) {
        let mut exited = self.wait_for_exit(grace).await;
        if !exited {
            self.signal_group(Signal::TERM);
            exited = self.wait_for_exit(grace).await;
        }
        // Whatever the leader did, nothing of its group may outlive it; the leader is not
        // reaped yet, so the group id is still ours.
        self.signal_group(Signal::KILL);
        match tokio::time::timeout(REAP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(server = %self.label, pid = self.pid, %status, exited_on_its_own = exited, "stdio MCP server ended")
            }
            Ok(Err(error)) => {
                tracing::warn!(server = %self.label, pid = self.pid, %error, "could not reap a stdio MCP server")
            }
            Err(_) => {
                tracing::warn!(server = %self.label, pid = self.pid, "a killed stdio MCP server was not reaped in time")
            }
        }
        self.terminated = true;
        if let Some(drain) = self.stderr_drain.take() {
            // A process that left the group may still hold stderr open: stop reading then.
            let abort = drain.abort_handle();
            if tokio::time::timeout(REAP_TIMEOUT, drain).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Kills the whole process group now, without waiting or reaping (the drop reaps).
    pub(crate) fn kill_group(&self) {
        self.signal_group(Signal::KILL);
    }

    /// Whether the leader exits within `limit`, checked without reaping it.
    async fn wait_for_exit(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.has_exited() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(EXIT_POLL_INTERVAL).await;
        }
    }

    /// Whether the leader has exited (it stays a zombie until reaped).
    fn has_exited(&self) -> bool {
        let Some(pid) = self.group else { return true };
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        match rustix::process::waitid(WaitId::Pid(pid), options) {
            Ok(status) => status.is_some(),
            // Not our child any more: gone.
            Err(_) => true,
        }
    }

    fn signal_group(&self, signal: Signal) {
        let Some(group) = self.group else { return };
        if let Err(error) = rustix::process::kill_process_group(group, signal)
            && error != rustix::io::Errno::SRCH
        {
            tracing::warn!(server = %self.label, pid = self.pid, %error, "could not signal a stdio MCP server's process group");
        }
    }
}

impl Drop for StdioChild {
    fn drop(&mut self) {
        if !self.terminated {
            // Not closed: kill the whole group now; `kill_on_drop` has tokio reap the leader.
            self.signal_group(Signal::KILL);
        }
        if let Some(ledger) = &self.ledger {
            ledger.forget(self.pid);
        }
    }
}

/// JSON-RPC over a child's stdin and stdout, one message per line.
pub(crate) struct StdioTransport {
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    stdout: FramedRead<ChildStdout, LinesCodec>,
    violation: Violation,
}

impl StdioTransport {
    /// Where this transport records a protocol violation.
    pub(crate) fn violation(&self) -> Violation {
        self.violation.clone()
    }
}

impl Transport<RoleClient> for StdioTransport {
    type Error = io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), io::Error>> + Send + 'static {
        let stdin = Arc::clone(&self.stdin);
        let line = serde_json::to_vec(&item);
        async move {
            let mut line = line.map_err(io::Error::other)?;
            line.push(b'\n');
            let mut stdin = stdin.lock().await;
            let Some(pipe) = stdin.as_mut() else {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the server's stdin is closed"));
            };
            pipe.write_all(&line).await?;
            pipe.flush().await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let line = match self.stdout.next().await? {
                Ok(line) => line,
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    self.violation.record(format!("the server wrote a message longer than {MAX_MESSAGE_BYTES} bytes"));
                    return None;
                }
                Err(LinesCodecError::Io(error)) if error.kind() == io::ErrorKind::InvalidData => {
                    self.violation.record("the server wrote output that is not UTF-8".into());
                    return None;
                }
                Err(LinesCodecError::Io(error)) => {
                    tracing::debug!(%error, "reading a stdio MCP server's stdout failed");
                    return None;
                }
            };
            let line = line.trim_start_matches('\u{feff}').trim();
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str(line) {
                Ok(message) => return Some(message),
                Err(error) => {
                    self.violation.record(format!("the server wrote a line that is not a JSON-RPC message ({error})"));
                    return None;
                }
            }
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), io::Error>> + Send {
        let stdin = Arc::clone(&self.stdin);
        async move {
            // Dropping the pipe closes it: the server's signal to exit.
            drop(stdin.lock().await.take());
            Ok(())
        }
    }
}

/// Logs the server's stderr line by line, bounded, until it closes.
async fn drain_stderr(stderr: ChildStderr, label: String) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::with_capacity(256);
    let mut lines = 0usize;
    loop {
        let buffer = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buffer) => buffer,
        };
        let newline = buffer.iter().position(|byte| *byte == b'\n');
        let taken = newline.unwrap_or(buffer.len());
        let room = MAX_STDERR_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&buffer[..taken.min(room)]);
        reader.consume(newline.map_or(taken, |at| at + 1));
        if newline.is_some() {
            log_stderr_line(&label, &line, &mut lines);
            line.clear();
        }
    }
    if !line.is_empty() {
        log_stderr_line(&label, &line, &mut lines);
    }
}

fn log_stderr_line(label: &str, line: &[u8], lines: &mut usize) {
    *lines += 1;
    if *lines < MAX_STDERR_LINES {
        tracing::info!(server = %label, stderr = %String::from_utf8_lossy(line).trim_end(), "stdio MCP server stderr");
    } else if *lines == MAX_STDERR_LINES {
        tracing::warn!(server = %label, "stdio MCP server stderr: {MAX_STDERR_LINES} lines logged, the rest is not");
    }
}
