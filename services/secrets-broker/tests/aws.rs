//! The `aws` provider against a real AWS Secrets Manager API: moto's server, started by each
//! test on a free loopback port and killed when the test ends. Reads of the current version
//! and of a version by id, creation and rotation (the previous version stays readable),
//! binary values, listing by prefix, missing secrets and versions; throttling (a loopback
//! proxy in front of moto answers AWS's throttling error once) retried by the broker's
//! resilience stack, not by the SDK; refused credentials (AWS's answer from a wiremock
//! server) not retried. No error text shows a value (tests/aws_logs.rs checks the logs).
//!
//! moto is installed by `tests/cloud/install.sh` (`$MOTO_SERVER`, that venv, or `PATH`);
//! without it each test skips with a one-line reason, unless `AGENTMESH_REQUIRE_SERVICES=1`.

#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod moto;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentmesh_resilience::{Preset, Resilience, ResilienceError};
use agentmesh_secrets_broker::provider::aws::AwsProvider;
use agentmesh_secrets_broker::provider::{
    OpenError, Provider, ProviderClassifier, ProviderError, ProviderKind, SecretValue,
};
use agentmesh_secrets_broker::settings::AwsSettings;
use agentmesh_testkit::unique_name;
use moto::{Moto, provider, settings, text, value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Asserts that neither the error's text nor its `Debug` shows `value`.
fn assert_hides(error: &impl std::fmt::Debug, shown: &str, value: &SecretValue) {
    let value = text(value);
    assert!(!shown.contains(value), "the error text shows the value: {shown}");
    assert!(!format!("{error:?}").contains(value), "the error's Debug shows the value: {error:?}");
}

#[tokio::test]
async fn put_creates_a_secret_that_get_reads() {
    let Some(moto) = Moto::start().await else { return };
    let aws = provider(&moto.endpoint()).await;
    let name = unique_name("created");
    let secret = value("first");

    let rotation = aws.put(&name, secret.clone()).await.unwrap();
    assert_eq!(rotation.previous, None, "a new secret replaces no version");
    assert_eq!(rotation.current.name, name);
    assert!(rotation.current.created_at.is_some());

    let read = aws.get(&name, None).await.unwrap();
    assert_eq!(read.value, secret);
    assert_eq!(read.info.version, rotation.current.version);
    assert_eq!(read.info.name, name);
    assert!(read.info.created_at.is_some());
    assert_eq!(aws.kind(), ProviderKind::Aws);
}

#[tokio::test]
async fn rotation_returns_current_and_previous_and_both_stay_readable() {
    let Some(moto) = Moto::start().await else { return };
    let aws = provider(&moto.endpoint()).await;
    let name = unique_name("rotated");
    let (old, new) = (value("old"), value("new"));

    let first = aws.put(&name, old.clone()).await.unwrap().current;
    let rotation = aws.put(&name, new.clone()).await.unwrap();
    assert_ne!(rotation.current.version, first.version);
    assert_eq!(rotation.previous.as_ref().map(|previous| &previous.version), Some(&first.version));
    assert!(rotation.previous.unwrap().created_at.is_some());

    assert_eq!(aws.get(&name, None).await.unwrap().value, new);
    let previous = aws.get(&name, Some(&first.version)).await.unwrap();
    assert_eq!((previous.value, previous.info.version), (old, first.version.clone()));
    let current = aws.get(&name, Some(&rotation.current.version)).await.unwrap();
    assert_eq!(current.value, new);

    // A third value moves AWSPREVIOUS on: the second value is now the previous one.
    let third = aws.put(&name, value("third")).await.unwrap();
    assert_eq!(third.previous.map(|previous| previous.version), Some(rotation.current.version));
}

#[tokio::test]
async fn binary_values_round_trip() {
    let Some(moto) = Moto::start().await else { return };
    let aws = provider(&moto.endpoint()).await;
    let name = unique_name("binary");
    let bytes = SecretValue::new(vec![0, 159, 146, 150, 255, 1]);

    let rotation = aws.put(&name, bytes.clone()).await.unwrap();
    let read = aws.get(&name, Some(&rotation.current.version)).await.unwrap();
    assert_eq!(read.value, bytes);
}

#[tokio::test]
async fn list_returns_current_versions_under_a_prefix() {
    let Some(moto) = Moto::start().await else { return };
    let aws = provider(&moto.endpoint()).await;
    let prefix = unique_name("listed");
    let other = unique_name("other");
    let (a, b) = (format!("{prefix}/a"), format!("{prefix}/b"));
    aws.put(&a, value("a")).await.unwrap();
    let b_first = aws.put(&b, value("b1")).await.unwrap().current;
    let b_current = aws.put(&b, value("b2")).await.unwrap().current;
    let a_current = aws.get(&a, None).await.unwrap().info;
    aws.put(&other, value("other")).await.unwrap();

    let listed = aws.list(&prefix).await.unwrap();
    let names: Vec<_> = listed.iter().map(|info| info.name.as_str()).collect();
    assert_eq!(names, [a.as_str(), b.as_str()], "only the prefix's secrets, by name");
    assert_eq!(listed[0].version, a_current.version);
    assert_eq!(listed[0].created_at, a_current.created_at, "a single version's date is the secret's");
    assert_eq!(listed[1].version, b_current.version);
    assert_ne!(listed[1].version, b_first.version);

    let everything = aws.list("").await.unwrap();
    assert!(everything.iter().any(|info| info.name == other));
    assert!(everything.len() >= 3);
    assert_eq!(aws.list(&format!("{prefix}/c")).await.unwrap(), []);
    assert_eq!(aws.list("!listed").await.unwrap(), [], "a negated filter is not a prefix");
}

#[tokio::test]
async fn missing_secrets_and_versions_are_not_found() {
    let Some(moto) = Moto::start().await else { return };
    let aws = provider(&moto.endpoint()).await;
    let name = unique_name("present");
    let missing = unique_name("absent");
    aws.put(&name, value("present")).await.unwrap();
    let unknown_version = uuid::Uuid::new_v4().to_string();

    assert_eq!(aws.get(&missing, None).await.unwrap_err(), ProviderError::NotFound { name: missing.clone() });
    assert_eq!(
        aws.get(&missing, Some(&unknown_version)).await.unwrap_err(),
        ProviderError::NotFound { name: missing.clone() },
        "the secret is what is missing, not its version"
    );
    assert_eq!(
        aws.get(&name, Some(&unknown_version)).await.unwrap_err(),
        ProviderError::VersionNotFound { name: name.clone(), version: unknown_version }
    );
    assert_eq!(
        aws.get(&name, Some("1")).await.unwrap_err(),
        ProviderError::VersionNotFound { name: name.clone(), version: "1".to_owned() },
        "no AWS version id is that short"
    );
    assert_eq!(ProviderError::NotFound { name }.outcome(), agentmesh_resilience::Outcome::Success);
}

#[tokio::test]
async fn a_secret_scheduled_for_deletion_is_rejected_and_not_listed() {
    let Some(moto) = Moto::start().await else { return };
    let aws = provider(&moto.endpoint()).await;
    let name = unique_name("deleted");
    aws.put(&name, value("deleted")).await.unwrap();
    // Deleting is not the broker's business: an operator did it with the SDK.
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(moto.endpoint())
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config).delete_secret().secret_id(&name).send().await.unwrap();

    let error = aws.get(&name, None).await.unwrap_err();
    let ProviderError::Rejected { reason } = &error else { panic!("{error:?}") };
    assert!(reason.starts_with("InvalidRequestException: "), "{reason}");
    assert_eq!(error.outcome(), agentmesh_resilience::Outcome::Success, "the provider itself is healthy");
    assert_eq!(aws.list(&name).await.unwrap(), []);
}

/// A loopback proxy in front of moto that answers the next `throttle` requests with AWS's
/// throttling error, as Secrets Manager does past its request quota, and forwards the rest.
struct ThrottlingProxy {
    address: SocketAddr,
    throttle: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Secrets Manager's answer when throttling (awsJson1.1).
const THROTTLED: &str = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;

impl ThrottlingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let throttle = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (left, seen) = (throttle.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                seen.fetch_add(1, Ordering::SeqCst);
                let throttled = left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                tokio::spawn(async move {
                    if throttled {
                        read_request(&mut client).await;
                        let response = format!(
                            "HTTP/1.1 400 Bad Request\r\nx-amzn-RequestId: 6a1b2c3d-0000-4000-8000-000000000000\r\n\
                             Content-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{THROTTLED}",
                            THROTTLED.len()
                        );
                        let _ = client.write_all(response.as_bytes()).await;
                        let _ = client.shutdown().await;
                    } else if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { address, throttle, connections, task }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for ThrottlingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request (headers and a `Content-Length` body), so that the answer
/// is not sent before the client finished writing.
async fn read_request(stream: &mut TcpStream) {
    let mut request = Vec::new();
    let mut chunk = [0_u8; 8192];
    loop {
        let read = stream.read(&mut chunk).await.unwrap_or(0);
        if read == 0 {
            return;
        }
        request.extend_from_slice(&chunk[..read]);
        let Some(end) = request.windows(4).position(|window| window == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|length| length.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if request.len() >= end + 4 + length {
            return;
        }
    }
}

#[tokio::test]
async fn throttling_is_reported_and_retried_by_the_broker_not_the_sdk() {
    let Some(moto) = Moto::start().await else { return };
    let proxy = ThrottlingProxy::start(moto.address).await;
    let aws = provider(&proxy.endpoint()).await;
    let name = unique_name("throttled");
    let secret = value("throttled");
    aws.put(&name, secret.clone()).await.unwrap();

    // The provider itself reports the throttling, once: the SDK does not retry.
    proxy.throttle.store(1, Ordering::SeqCst);
    let before = proxy.connections.load(Ordering::SeqCst);
    let error = aws.get(&name, None).await.unwrap_err();
    assert_eq!(error, ProviderError::Throttled { retry_after: None });
    assert!(error.outcome().is_retryable());
    assert_hides(&error, &error.to_string(), &secret);
    assert_eq!(proxy.connections.load(Ordering::SeqCst) - before, 1, "the SDK sent the request once");

    // The broker's path (the cache's resilience stack) retries and reads the value.
    let resilience = Resilience::new("secret-provider", &Preset::secret());
    proxy.throttle.store(1, Ordering::SeqCst);
    let before = proxy.connections.load(Ordering::SeqCst);
    let read = resilience.call(&ProviderClassifier, || aws.get(&name, None)).await.unwrap();
    assert_eq!(read.value, secret);
    assert_eq!(proxy.connections.load(Ordering::SeqCst) - before, 2, "one throttled attempt, one retry");

    // A throttled rotation does not show the value either.
    proxy.throttle.store(1, Ordering::SeqCst);
    let rotated = value("rotated");
    let error = aws.put(&name, rotated.clone()).await.unwrap_err();
    assert!(matches!(error, ProviderError::Throttled { .. }), "{error}");
    assert_hides(&error, &error.to_string(), &rotated);
}

/// Secrets Manager's answer to an unknown access key (awsJson1.1, HTTP 400).
const UNRECOGNIZED_CLIENT: &str =
    r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#;

#[tokio::test]
async fn refused_credentials_are_unauthorized_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("x-amzn-RequestId", "0c2a7a4e-0000-4000-8000-000000000000")
                .set_body_raw(UNRECOGNIZED_CLIENT, "application/x-amz-json-1.1"),
        )
        .mount(&server)
        .await;
    let aws = provider(&server.uri()).await;
    let name = unique_name("refused");
    let secret = value("refused");

    let error = aws.put(&name, secret.clone()).await.unwrap_err();
    let ProviderError::Unauthorized { reason } = &error else { panic!("{error:?}") };
    assert!(reason.contains("UnrecognizedClientException"), "{reason}");
    assert_hides(&error, &error.to_string(), &secret);

    let resilience = Resilience::new("secret-provider", &Preset::secret());
    let before = server.received_requests().await.unwrap().len();
    let result = resilience.call(&ProviderClassifier, || aws.get(&name, None)).await;
    assert!(matches!(result, Err(ResilienceError::Inner(ProviderError::Unauthorized { .. }))), "{result:?}");
    assert_eq!(server.received_requests().await.unwrap().len() - before, 1, "refused credentials are not retried");
}

/// A wiremock server answering every call with `status`, `headers` and `body`.
async fn answering(status: u16, headers: &[(&str, &str)], body: &str) -> MockServer {
    let server = MockServer::start().await;
    let mut response = ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/x-amz-json-1.1");
    for (name, value) in headers {
        response = response.insert_header(*name, *value);
    }
    Mock::given(method("POST")).respond_with(response).mount(&server).await;
    server
}

#[tokio::test]
async fn aws_errors_map_to_what_they_mean_for_the_broker() {
    let json = |code: &str, message: &str| format!(r#"{{"__type":"{code}","message":"{message}"}}"#);
    let cases = [
        (400, vec![], json("AccessDeniedException", "User is not authorized"), "Unauthorized"),
        (
            400,
            vec![],
            json("ExpiredTokenException", "The security token included in the request is expired"),
            "Unauthorized",
        ),
        (400, vec![], json("InvalidSignatureException", "Signature expired"), "Unauthorized"),
        (400, vec![("Retry-After", "2")], json("ThrottlingException", "Rate exceeded"), "Throttled(2s)"),
        (429, vec![], json("TooManyRequestsException", "Too many requests"), "Throttled"),
        (500, vec![], json("InternalServiceError", "An error occurred on the server side"), "Unavailable"),
        (503, vec![], "<html>Service Unavailable</html>".to_owned(), "Unavailable"),
        (400, vec![], json("DecryptionFailure", "Secrets Manager can't decrypt the protected secret text"), "Rejected"),
        (400, vec![], json("InvalidParameterException", "Invalid parameter"), "Rejected"),
        (400, vec![], json("InvalidRequestException", "You can't perform this operation"), "Rejected"),
    ];
    for (status, headers, body, expected) in cases {
        let server = answering(status, &headers, &body).await;
        let error = provider(&server.uri()).await.get("name", None).await.unwrap_err();
        let kind = match &error {
            ProviderError::Unauthorized { .. } => "Unauthorized".to_owned(),
            ProviderError::Throttled { retry_after: Some(after) } => format!("Throttled({after:?})"),
            ProviderError::Throttled { retry_after: None } => "Throttled".to_owned(),
            ProviderError::Unavailable { .. } => "Unavailable".to_owned(),
            ProviderError::Rejected { .. } => "Rejected".to_owned(),
            other => format!("{other:?}"),
        };
        assert_eq!(kind, expected, "HTTP {status} {body}: {error}");
    }

    // A value in an answer the SDK cannot read stays out of the error.
    let secret = value("truncated");
    let truncated = format!(r#"{{"Name":"name","SecretString":"{}","VersionId":"#, text(&secret));
    let server = answering(200, &[], &truncated).await;
    let error = provider(&server.uri()).await.get("name", None).await.unwrap_err();
    assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
    assert_hides(&error, &error.to_string(), &secret);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    let port = agentmesh_testkit::ports::reserve().unwrap();
    let aws = provider(&format!("http://127.0.0.1:{port}")).await;
    let error = aws.get("anything", None).await.unwrap_err();
    assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
    assert!(error.outcome().is_retryable());
}

#[tokio::test]
async fn unusable_settings_stop_the_start() {
    let setup = |result: Result<AwsProvider, OpenError>| match result {
        Err(OpenError::Setup { provider: ProviderKind::Aws, reason }) => reason,
        other => panic!("{other:?}"),
    };
    let half = AwsSettings { secret_access_key: None, ..settings("http://127.0.0.1:1") };
    assert!(setup(AwsProvider::open(&half).await).contains("go together"));
    let not_http = settings("ftp://127.0.0.1:1");
    assert!(setup(AwsProvider::open(&not_http).await).contains("SECRET_AWS_ENDPOINT_URL"));
    let no_region = AwsSettings { region: " ".to_owned(), ..settings("http://127.0.0.1:1") };
    assert!(setup(AwsProvider::open(&no_region).await).contains("SECRET_AWS_REGION"));
}
