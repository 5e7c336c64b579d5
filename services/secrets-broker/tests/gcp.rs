//! The `gcp` provider against a local fake of Secret Manager's v1 REST API that answers
//! with recorded bodies (`tests/fixtures/gcp/`, sources in its README) and checks what the
//! provider sends: paths, bodies, and a bearer JWT signed (RS256) by the service-account
//! key, with its claims. Keys are throwaway RSA keys made by each test, never committed.

#![cfg(feature = "gcp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_resilience::{Preset, Resilience, ResilienceError};
use agentmesh_secrets_broker::provider::gcp::GcpProvider;
use agentmesh_secrets_broker::provider::{OpenError, Provider, ProviderClassifier, ProviderError, SecretValue};
use agentmesh_secrets_broker::settings::GcpSettings;
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tempfile::TempDir;
use wiremock::matchers::{any, body_json, method, path, query_param};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const PROJECT: &str = "my-project";
const EMAIL: &str = "secrets-broker@my-project.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The recorded value of `openai-api-key` version 3 (`access-latest.json`).
const VALUE: &str = "sk-test-gcp-openai-0123456789abcdef";
const SECRETS: &str = "/v1/projects/my-project/secrets";

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/gcp/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn json_body(status: u16, body: String) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body, "application/json; charset=UTF-8")
}

fn recorded(status: u16, name: &str) -> ResponseTemplate {
    json_body(status, fixture(name))
}

/// A throwaway service-account key.
struct ServiceAccount {
    key: KeyPair,
    key_id: String,
}

impl ServiceAccount {
    fn new(key_id: &str) -> Self {
        Self { key: KeyPair::generate(KeySize::Rsa2048).unwrap(), key_id: key_id.to_owned() }
    }

    /// The private key, PEM-encoded PKCS#8 as Google writes it.
    fn pem(&self) -> String {
        let der = self.key.as_der().unwrap();
        let body = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).unwrap()).collect();
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
    }

    /// Writes the key file as the Cloud console downloads it.
    fn write(&self, file: &Path) {
        let key = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": self.key_id,
            "private_key": self.pem(),
            "client_email": EMAIL,
            "client_id": "109876543210987654321",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": "https://oauth2.googleapis.com/token",
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/secrets-broker%40my-project.iam.gserviceaccount.com",
            "universe_domain": "googleapis.com"
        });
        std::fs::write(file, serde_json::to_vec_pretty(&key).unwrap()).unwrap();
    }

    /// Requests whose bearer token is a JWT this key signed for this account.
    fn signed(&self) -> SignedBy {
        SignedBy { public_key: self.key.public_key().as_ref().to_vec(), key_id: self.key_id.clone() }
    }
}

/// Matches a request whose `Authorization` is a self-signed service-account JWT: RS256
/// under the key, its `kid`, the account as issuer and subject, the cloud-platform scope,
/// and a lifetime around now.
struct SignedBy {
    public_key: Vec<u8>,
    key_id: String,
}

impl Match for SignedBy {
    fn matches(&self, request: &Request) -> bool {
        let Some(token) = bearer(request) else { return false };
        let parts: Vec<&str> = token.split('.').collect();
        let [header, claims, signature] = parts[..] else { return false };
        let decode = |part: &str| -> Option<Value> { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok() };
        let (Some(header_json), Some(claims_json), Ok(signature)) =
            (decode(header), decode(claims), URL_SAFE_NO_PAD.decode(signature))
        else {
            return false;
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let (iat, exp) = (claims_json["iat"].as_u64().unwrap_or(u64::MAX), claims_json["exp"].as_u64().unwrap_or(0));
        header_json["alg"] == "RS256"
            && header_json["typ"] == "JWT"
            && header_json["kid"] == self.key_id.as_str()
            && claims_json["iss"] == EMAIL
            && claims_json["sub"] == EMAIL
            && claims_json["scope"] == SCOPE
            && iat <= now + 5
            && exp > now
            && exp - iat <= 3600 + 60
            && UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public_key)
                .verify(format!("{header}.{claims}").as_bytes(), &signature)
                .is_ok()
    }
}

fn bearer(request: &Request) -> Option<&str> {
    request.headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

/// Secret Manager's fake, a key file and the key in it.
struct Fake {
    server: MockServer,
    account: ServiceAccount,
    key_file: PathBuf,
    _dir: TempDir,
}

impl Fake {
    async fn start() -> Self {
        let server = MockServer::start().await;
        // What no test expects is answered so that the failure names it.
        Mock::given(any())
            .respond_with(json_body(
                400,
                json!({"error": {"code": 400, "message": "the fake did not expect this request", "status": "INVALID_ARGUMENT"}})
                    .to_string(),
            ))
            .with_priority(u8::MAX)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("service-account.json");
        let account = ServiceAccount::new("3c1b7a9d2e4f6a8b0c1d2e3f4a5b6c7d8e9f0a1b");
        account.write(&key_file);
        Self { server, account, key_file, _dir: dir }
    }

    fn settings(&self) -> GcpSettings {
        GcpSettings {
            project_id: Some(PROJECT.to_owned()),
            credentials_path: Some(self.key_file.clone()),
            endpoint: Some(self.server.uri()),
        }
    }

    async fn provider(&self) -> GcpProvider {
        GcpProvider::open(&self.settings()).await.unwrap()
    }

    /// A request signed by the current key, asking for JSON with enums as numbers (as
    /// Google's clients do).
    fn request(&self, verb: &str, at: &str) -> wiremock::MockBuilder {
        Mock::given(method(verb))
            .and(path(at))
            .and(query_param("$alt", "json;enum-encoding=int"))
            .and(self.account.signed())
    }

    /// Neither the value, the private key nor a bearer token sent shows in `error`'s texts.
    async fn assert_discreet(&self, error: &ProviderError) {
        let pem = self.account.pem();
        let key_line = pem.lines().nth(1).unwrap();
        let mut secrets = vec![VALUE.to_owned(), key_line.to_owned()];
        for request in self.server.received_requests().await.unwrap_or_default() {
            secrets.extend(bearer(&request).map(str::to_owned));
        }
        for text in [error.to_string(), format!("{error:?}")] {
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{text:?} reveals a secret");
            }
        }
    }
}

fn at(rfc3339_seconds: u64, nanos: u32) -> Option<SystemTime> {
    Some(UNIX_EPOCH + Duration::new(rfc3339_seconds, nanos))
}

#[tokio::test]
async fn get_accesses_the_latest_version_with_a_signed_token() {
    let fake = Fake::start().await;
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/latest:access"))
        .respond_with(recorded(200, "access-latest.json"))
        .expect(2)
        .mount(&fake.server)
        .await;
    let provider = fake.provider().await;

    for _ in 0..2 {
        let secret = provider.get("openai-api-key", None).await.unwrap();
        assert_eq!(secret.value.expose(), VALUE.as_bytes());
        assert_eq!((secret.info.name.as_str(), secret.info.version.as_str()), ("openai-api-key", "3"));
        assert!(!format!("{secret:?}").contains(VALUE));
    }
    let pem = fake.account.pem();
    let described = format!("{provider:?}");
    assert!(!described.contains(pem.lines().nth(1).unwrap()), "{described}");
}

#[tokio::test]
async fn get_accesses_a_version_by_number() {
    let fake = Fake::start().await;
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/2:access"))
        .respond_with(recorded(200, "access-version.json"))
        .expect(1)
        .mount(&fake.server)
        .await;

    let secret = fake.provider().await.get("openai-api-key", Some("2")).await.unwrap();
    assert_eq!(secret.value.as_text(), Some("sk-test-gcp-openai-previous-fedcba98"));
    assert_eq!(secret.info.version, "2");
}

#[tokio::test]
async fn a_payload_that_fails_its_checksum_is_not_served() {
    let fake = Fake::start().await;
    let mut body: Value = serde_json::from_str(&fixture("access-latest.json")).unwrap();
    body["payload"]["dataCrc32c"] = json!("12345");
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/latest:access"))
        .respond_with(json_body(200, body.to_string()))
        .mount(&fake.server)
        .await;

    let error = fake.provider().await.get("openai-api-key", None).await.unwrap_err();
    assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
    fake.assert_discreet(&error).await;
}

#[tokio::test]
async fn missing_secrets_and_versions_are_told_apart() {
    let fake = Fake::start().await;
    fake.request("GET", &format!("{SECRETS}/missing-secret/versions/latest:access"))
        .respond_with(recorded(404, "error-secret-not-found.json"))
        .mount(&fake.server)
        .await;
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/9:access"))
        .respond_with(recorded(404, "error-version-not-found.json"))
        .mount(&fake.server)
        .await;
    let provider = fake.provider().await;

    let error = provider.get("missing-secret", None).await.unwrap_err();
    assert_eq!(error, ProviderError::NotFound { name: "missing-secret".to_owned() });
    let error = provider.get("openai-api-key", Some("9")).await.unwrap_err();
    assert_eq!(error, ProviderError::VersionNotFound { name: "openai-api-key".to_owned(), version: "9".to_owned() });
}

#[tokio::test]
async fn put_creates_the_secret_then_adds_its_first_version() {
    let fake = Fake::start().await;
    let value = "sk-test-gcp-new-value-24680";
    fake.request("GET", &format!("{SECRETS}/new-secret/versions/latest"))
        .respond_with(recorded(404, "error-secret-not-found.json"))
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.request("POST", SECRETS)
        .and(query_param("secretId", "new-secret"))
        .and(body_json(json!({ "replication": { "automatic": {} } })))
        .respond_with(recorded(200, "secret-created.json"))
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.request("POST", &format!("{SECRETS}/new-secret:addVersion"))
        .and(body_json(json!({ "payload": { "data": STANDARD.encode(value), "dataCrc32c": "22833260" } })))
        .respond_with(recorded(200, "version-added-first.json"))
        .expect(1)
        .mount(&fake.server)
        .await;

    let rotation = fake.provider().await.put("new-secret", SecretValue::from(value.to_owned())).await.unwrap();
    assert_eq!((rotation.current.name.as_str(), rotation.current.version.as_str()), ("new-secret", "1"));
    assert_eq!(rotation.current.created_at, at(1_793_614_543, 123_456_000));
    assert_eq!(rotation.previous, None);
}

#[tokio::test]
async fn put_into_a_secret_created_meanwhile_still_adds_the_version() {
    let fake = Fake::start().await;
    fake.request("GET", &format!("{SECRETS}/new-secret/versions/latest"))
        .respond_with(recorded(404, "error-secret-not-found.json"))
        .mount(&fake.server)
        .await;
    fake.request("POST", SECRETS)
        .respond_with(recorded(409, "error-already-exists.json"))
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.request("POST", &format!("{SECRETS}/new-secret:addVersion"))
        .respond_with(recorded(200, "version-added-first.json"))
        .expect(1)
        .mount(&fake.server)
        .await;

    let rotation = fake.provider().await.put("new-secret", SecretValue::new(vec![0xff, 0x00, 0x7f])).await.unwrap();
    assert_eq!(rotation.current.version, "1");
}

#[tokio::test]
async fn put_adds_a_version_and_reports_the_one_it_replaced() {
    let fake = Fake::start().await;
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/latest"))
        .respond_with(recorded(200, "version-latest.json"))
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.request("POST", SECRETS).respond_with(ResponseTemplate::new(500)).expect(0).mount(&fake.server).await;
    fake.request("POST", &format!("{SECRETS}/openai-api-key:addVersion"))
        .respond_with(recorded(200, "version-added.json"))
        .expect(1)
        .mount(&fake.server)
        .await;

    let rotation =
        fake.provider().await.put("openai-api-key", SecretValue::from("sk-test-gcp-rotated".to_owned())).await.unwrap();
    assert_eq!(rotation.current.version, "4");
    assert_eq!(rotation.current.created_at, at(1_793_614_542, 987_654_000));
    let previous = rotation.previous.unwrap();
    assert_eq!((previous.version.as_str(), previous.created_at), ("3", at(1_790_843_412, 345_678_000)));
}

#[tokio::test]
async fn list_pages_filters_by_prefix_and_reads_current_versions() {
    let fake = Fake::start().await;
    fake.request("GET", SECRETS)
        .and(query_param("pageSize", "100"))
        .and(query_param("pageToken", ""))
        .respond_with(recorded(200, "list-page-1.json"))
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.request("GET", SECRETS)
        .and(query_param("pageToken", "CiRwcm9qZWN0cy8xMjM0NTY3ODkwMTIvc2VjcmV0cy9vcGVuYWktb3JnLWlk"))
        .respond_with(recorded(200, "list-page-2.json"))
        .expect(1)
        .mount(&fake.server)
        .await;
    for (secret, version) in [
        ("openai-api-key", "version-latest.json"),
        ("openai-org-id", "version-disabled.json"),
        ("openai-project-key", "version-project-key.json"),
    ] {
        fake.request("GET", &format!("{SECRETS}/{secret}/versions/latest"))
            .respond_with(recorded(200, version))
            .expect(1)
            .mount(&fake.server)
            .await;
    }

    // openai-org-id's latest version is disabled: it has no current value.
    let listed = fake.provider().await.list("openai-").await.unwrap();
    let listed: Vec<_> = listed
        .iter()
        .map(|info| (info.name.as_str(), info.version.as_str(), info.created_at, info.expires_at))
        .collect();
    assert_eq!(
        listed,
        [
            ("openai-api-key", "3", at(1_790_843_412, 345_678_000), None),
            ("openai-project-key", "7", at(1_789_491_765, 123_000), at(1_806_537_600, 0)),
        ]
    );
}

#[tokio::test]
async fn a_401_reads_the_key_file_again_and_retries_once() {
    let fake = Fake::start().await;
    let provider = fake.provider().await;
    // The key in use was revoked and the file now holds its replacement.
    let replacement = ServiceAccount::new("5e7f9a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1e3f");
    replacement.write(&fake.key_file);
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/latest:access"))
        .respond_with(recorded(401, "error-unauthenticated.json"))
        .expect(1)
        .mount(&fake.server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{SECRETS}/openai-api-key/versions/latest:access")))
        .and(replacement.signed())
        .respond_with(recorded(200, "access-latest.json"))
        .expect(1)
        .mount(&fake.server)
        .await;

    let secret = provider.get("openai-api-key", None).await.unwrap();
    assert_eq!(secret.value.expose(), VALUE.as_bytes());
}

#[tokio::test]
async fn refused_credentials_are_unauthorized() {
    let fake = Fake::start().await;
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/latest:access"))
        .respond_with(recorded(401, "error-unauthenticated.json"))
        .expect(2)
        .mount(&fake.server)
        .await;
    fake.request("GET", &format!("{SECRETS}/redis-password/versions/latest:access"))
        .respond_with(recorded(403, "error-permission-denied.json"))
        .expect(1)
        .mount(&fake.server)
        .await;
    let provider = fake.provider().await;

    let error = provider.get("openai-api-key", None).await.unwrap_err();
    let ProviderError::Unauthorized { reason } = &error else { panic!("{error:?}") };
    assert!(reason.contains("UNAUTHENTICATED"), "{reason}");
    fake.assert_discreet(&error).await;
    let error = provider.get("redis-password", None).await.unwrap_err();
    let ProviderError::Unauthorized { reason } = &error else { panic!("{error:?}") };
    assert!(reason.contains("PERMISSION_DENIED") && reason.contains("secretmanager.versions.access"), "{reason}");
}

#[tokio::test]
async fn a_key_that_cannot_sign_stops_the_start() {
    let fake = Fake::start().await;
    let mut key: Value = serde_json::from_slice(&std::fs::read(&fake.key_file).unwrap()).unwrap();
    key["private_key"] = json!(
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC-test-only\n-----END PRIVATE KEY-----\n"
    );
    std::fs::write(&fake.key_file, key.to_string()).unwrap();
    let error = GcpProvider::open(&fake.settings()).await.unwrap_err();
    let OpenError::Setup { reason, .. } = &error else { panic!("{error:?}") };
    assert!(reason.contains("cannot sign"), "{reason}");
    assert!(!reason.contains("test-only"), "{reason}");

    std::fs::write(&fake.key_file, "not json").unwrap();
    let error = GcpProvider::open(&fake.settings()).await.unwrap_err();
    assert!(matches!(error, OpenError::Setup { .. }), "{error:?}");
    let error = GcpProvider::open(&GcpSettings { project_id: None, ..fake.settings() }).await.unwrap_err();
    assert!(matches!(error, OpenError::Setup { .. }), "{error:?}");
}

#[tokio::test]
async fn throttling_says_when_to_retry_and_outages_are_unavailable() {
    let fake = Fake::start().await;
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/latest:access"))
        .respond_with(recorded(429, "error-resource-exhausted.json").insert_header("retry-after", "7"))
        .mount(&fake.server)
        .await;
    fake.request("GET", &format!("{SECRETS}/anthropic-api-key/versions/latest:access"))
        .respond_with(recorded(429, "error-resource-exhausted-retry-info.json"))
        .mount(&fake.server)
        .await;
    fake.request("GET", &format!("{SECRETS}/redis-password/versions/latest:access"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&fake.server)
        .await;
    let provider = fake.provider().await;

    let error = provider.get("openai-api-key", None).await.unwrap_err();
    assert_eq!(error, ProviderError::Throttled { retry_after: Some(Duration::from_secs(7)) });
    let error = provider.get("anthropic-api-key", None).await.unwrap_err();
    assert_eq!(error, ProviderError::Throttled { retry_after: Some(Duration::from_secs(5)) });
    let error = provider.get("redis-password", None).await.unwrap_err();
    assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
}

#[tokio::test]
async fn the_resilience_stack_retries_a_throttled_read() {
    let fake = Fake::start().await;
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/latest:access"))
        .respond_with(recorded(429, "error-resource-exhausted.json").insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.request("GET", &format!("{SECRETS}/openai-api-key/versions/latest:access"))
        .respond_with(recorded(200, "access-latest.json"))
        .expect(1)
        .mount(&fake.server)
        .await;
    let provider = fake.provider().await;
    let resilience = Resilience::new("secret-provider", &Preset::secret());

    let secret = resilience.call(&ProviderClassifier, || provider.get("openai-api-key", None)).await;
    let secret = secret.map_err(|error| match error {
        ResilienceError::Inner(error) => error,
        other => panic!("{other:?}"),
    });
    assert_eq!(secret.unwrap().value.expose(), VALUE.as_bytes());
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    let fake = Fake::start().await;
    // Nothing listens on port 1.
    let settings = GcpSettings { endpoint: Some("http://127.0.0.1:1".to_owned()), ..fake.settings() };

    let error = GcpProvider::open(&settings).await.unwrap().get("openai-api-key", None).await.unwrap_err();
    assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
}
