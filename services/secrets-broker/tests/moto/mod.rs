//! A moto server per test (a real AWS Secrets Manager API on loopback) and the `aws`
//! provider pointed at it, for tests/aws.rs and tests/aws_logs.rs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentmesh_runtime::config::Secret;
use agentmesh_secrets_broker::provider::SecretValue;
use agentmesh_secrets_broker::provider::aws::AwsProvider;
use agentmesh_secrets_broker::settings::AwsSettings;
use agentmesh_testkit::{REQUIRE_SERVICES_ENV, services_required};
use tokio::net::TcpStream;

/// `moto_server`: `$MOTO_SERVER`, the venv of tests/cloud/install.sh, or one on `PATH`.
fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let tools = std::env::var_os("AGENTMESH_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/agentmesh-tools"));
    let venv = tools.join("moto/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("moto_server"))
        .find(|path| path.is_file());
    if on_path.is_none() {
        let reason = "moto_server is not installed (run tests/cloud/install.sh, or set MOTO_SERVER)";
        assert!(!services_required(), "{reason} and {REQUIRE_SERVICES_ENV}=1");
        eprintln!("skipped: {reason}");
    }
    on_path
}

/// A moto server of this test's own, killed when dropped.
pub struct Moto {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts one; `None` (after a one-line reason) when moto is not installed.
    pub async fn start() -> Option<Self> {
        let program = moto_server()?;
        // The port is reserved for this test process, yet something outside the tests may
        // still take it before moto binds it; moto then exits and a new port is tried.
        for _ in 0..3 {
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], agentmesh_testkit::ports::reserve().unwrap()));
            let child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &address.port().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|error| panic!("{} does not start: {error}", program.display()));
            let mut moto = Self { child, address };
            for _ in 0..400 {
                if moto.child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect(address).await.is_ok() {
                    return Some(moto);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("{} did not start listening on a free loopback port (3 tries)", program.display());
    }

    /// Its URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// moto's dummy credentials, in `region`, at `endpoint`.
pub fn settings(endpoint: &str) -> AwsSettings {
    AwsSettings {
        region: "us-east-1".to_owned(),
        access_key_id: Some("testing".to_owned()),
        secret_access_key: Some(Secret::new("testing")),
        endpoint_url: Some(endpoint.to_owned()),
    }
}

/// The provider with those settings.
pub async fn provider(endpoint: &str) -> AwsProvider {
    AwsProvider::open(&settings(endpoint)).await.unwrap()
}

/// A value no other text contains, so that finding it anywhere is a leak.
pub fn value(label: &str) -> SecretValue {
    SecretValue::from(format!("{label}-{}", uuid::Uuid::new_v4().simple()))
}

/// A value made by [`value`], as text.
pub fn text(value: &SecretValue) -> &str {
    value.as_text().unwrap()
}
