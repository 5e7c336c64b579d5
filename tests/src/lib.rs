//! Harness for end-to-end tests: start the real binaries as processes, talk to them over
//! loopback, stop them with signals.
//!
//! Binaries are looked up next to the test executable's directory (`target/<profile>/`);
//! the test command builds them first (`cargo build --workspace --bins`).

pub mod mcp;
mod mesh;
pub mod rest;

pub use mesh::{ALICE, BOB, Mesh, serve_fake_provider};
pub use rest::{Rest, SseEvent, names, parse_sse};

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use agentmesh_events::{NatsBus, NatsConfig};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a binary may take to start serving or to stop.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure of the harness itself, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The binary has not been built.
    #[error("{0} is missing: build it first with `cargo build --workspace --bins`")]
    MissingBinary(PathBuf),
    /// Spawning or signalling the process failed.
    #[error("process error: {0}")]
    Io(#[from] std::io::Error),
    /// The process did not reach the expected state in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// No port could be reserved for a process.
    #[error(transparent)]
    Port(#[from] agentmesh_testkit::ports::PortError),
    /// The process exited early.
    #[error("exited early with {status}; stderr:\n{stderr}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed to stderr.
        stderr: String,
    },
}

/// Rate limits (gateway tiers and routes, llm-proxy per provider) that no end-to-end test
/// reaches, for tests that are about something else.
pub const NO_RATE_LIMITS: [(&str, &str); 5] = [
    ("RATE_LIMIT_API_PREMIUM_LIMIT", "100000"),
    ("RATE_LIMIT_EXECUTE_AGENT_LIMIT", "100000"),
    ("RATE_LIMIT_CREATE_SESSION_LIMIT", "100000"),
    ("RATE_LIMIT_LLM_REQUESTS_PER_MINUTE", "100000"),
    ("RATE_LIMIT_LLM_TOKENS_PER_MINUTE", "100000000"),
];

/// The path of a workspace binary built into the same target directory as this test.
pub fn binary(name: &str) -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let dir = exe.parent().and_then(|deps| deps.parent()).map(PathBuf::from).unwrap_or_default();
    let path = dir.join(name);
    if path.is_file() { Ok(path) } else { Err(HarnessError::MissingBinary(path)) }
}

/// A loopback port for a binary under test, reserved for this test process (see
/// `agentmesh_testkit::ports`: no other test, and no port-0 bind, is handed it).
pub fn free_port() -> Result<u16, HarnessError> {
    Ok(agentmesh_testkit::ports::reserve()?)
}

/// A running binary, killed if the test ends without stopping it.
pub struct Process {
    child: Child,
}

impl Process {
    /// Starts `name` with `env` added to a clean-ish environment (JSON logs off the
    /// terminal, no inherited agentmesh variables that could change the test).
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, String)]) -> Result<Self, HarnessError> {
        let mut command = Command::new(binary(name)?);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(Self { child: command.spawn()? })
    }

    /// Sends SIGTERM, as Kubernetes does.
    pub async fn terminate(&self) -> Result<(), HarnessError> {
        let pid = self.child.id().ok_or_else(|| HarnessError::Timeout("a pid".into()))?;
        let status = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await?;
        if status.success() { Ok(()) } else { Err(HarnessError::Timeout(format!("kill -TERM {pid}"))) }
    }

    /// Sends SIGKILL, as a crash or an OOM kill does, and waits for the process to be gone.
    pub async fn kill(mut self) -> Result<ExitStatus, HarnessError> {
        self.child.start_kill()?;
        tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait())
            .await
            .map_err(|_| HarnessError::Timeout("the killed process to exit".into()))?
            .map_err(HarnessError::from)
    }

    /// Waits for exit, returning the status and everything written to stderr.
    pub async fn wait(mut self) -> Result<(ExitStatus, String), HarnessError> {
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            tokio::time::timeout(PROCESS_TIMEOUT, pipe.read_to_string(&mut stderr))
                .await
                .map_err(|_| HarnessError::Timeout("stderr to close".into()))??;
        }
        let status = tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait())
            .await
            .map_err(|_| HarnessError::Timeout("the process to exit".into()))??;
        Ok((status, stderr))
    }

    /// Fails with the process' stderr if it has already exited.
    pub async fn check_alive(&mut self) -> Result<(), HarnessError> {
        if let Some(status) = self.child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut pipe) = self.child.stderr.take() {
                pipe.read_to_string(&mut stderr).await?;
            }
            return Err(HarnessError::Exited { status, stderr });
        }
        Ok(())
    }
}

/// Connects to `port` and waits until the overall health status is SERVING.
pub async fn wait_serving(process: &mut Process, port: u16) -> Result<Channel, HarnessError> {
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|_| HarnessError::Timeout(format!("a valid endpoint for port {port}")))?;
    let deadline = tokio::time::Instant::now() + PROCESS_TIMEOUT;
    loop {
        process.check_alive().await?;
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest { service: String::new() })
                .await
                .map(|r| r.into_inner().status);
            if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
                return Ok(channel);
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(HarnessError::Timeout(format!("port {port} to report SERVING")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `url` answers 200, failing early if the process exits.
pub async fn wait_http(process: &mut Process, url: &str) -> Result<(), HarnessError> {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PROCESS_TIMEOUT;
    loop {
        process.check_alive().await?;
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(HarnessError::Timeout(format!("{url} to answer 200")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JetStream stream and subject root of one test, deleted when dropped (also when the
/// test panics), so tests on the real NATS run in parallel and leave nothing behind.
pub struct TestStream(NatsConfig);

impl TestStream {
    /// A stream on the NATS server at `url`, named after `prefix`.
    pub fn new(url: &str, prefix: &str) -> Self {
        Self(NatsConfig {
            url: url.to_owned(),
            stream_name: agentmesh_testkit::unique_name(prefix),
            subject_root: agentmesh_testkit::unique_name(prefix),
            ..NatsConfig::default()
        })
    }

    /// Its configuration (`NATS_STREAM` is `stream_name`, `NATS_SUBJECT_ROOT` is `subject_root`).
    pub fn config(&self) -> &NatsConfig {
        &self.0
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let config = self.0.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime
                .block_on(async { NatsBus::connect(config).await?.delete_stream().await })
                .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("warning: could not delete the test stream {}: {deleted:?}", self.0.stream_name);
        }
    }
}
