//! The `azure` provider against local fakes of Microsoft Entra and Key Vault that answer
//! with recorded bodies (`tests/fixtures/azure/`, sources in its README) and check what the
//! provider sends: the token request's form, the bearer token, the api-version and paths.

#![cfg(feature = "azure")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use agentmesh_resilience::{Preset, Resilience, ResilienceError};
use agentmesh_runtime::config::Secret;
use agentmesh_secrets_broker::provider::azure::AzureProvider;
use agentmesh_secrets_broker::provider::{OpenError, Provider, ProviderClassifier, ProviderError, SecretValue};
use agentmesh_secrets_broker::settings::AzureSettings;
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "fad7d5b3-69d6-4b48-9259-8d12124e1cf1";
const CLIENT_SECRET: &str = "test-only-client-secret~Q8x.never-real";
/// The recorded current value of `openai-api-key` (`secret-current.json`).
const VALUE: &str = "sk-test-openai-0123456789abcdef";
const CURRENT_VERSION: &str = "4387e9f3d6e14c459867679a90fd0f79";
const OLD_VERSION: &str = "0b6f1a2c3d4e4f5a8b9c0d1e2f3a4b5c";
/// Where recorded list pages point their `nextLink`.
const RECORDED_VAULT: &str = "https://myvault.vault.azure.net:443";

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/azure/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn json(status: u16, name: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(fixture(name), "application/json; charset=utf-8")
}

/// The `access_token` of a recorded token answer.
fn token_in(name: &str) -> String {
    let body: serde_json::Value = serde_json::from_str(&fixture(name)).unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

fn bearer(name: &str) -> String {
    format!("Bearer {}", token_in(name))
}

/// Entra and the vault, each on its own port.
struct Fake {
    entra: MockServer,
    vault: MockServer,
}

impl Fake {
    async fn start() -> Self {
        Self { entra: MockServer::start().await, vault: MockServer::start().await }
    }

    fn settings(&self) -> AzureSettings {
        AzureSettings {
            vault_url: Some(self.vault.uri()),
            tenant_id: Some(TENANT.to_owned()),
            client_id: Some(CLIENT_ID.to_owned()),
            client_secret: Some(Secret::new(CLIENT_SECRET)),
            authority_host: self.entra.uri(),
        }
    }

    fn provider(&self) -> AzureProvider {
        AzureProvider::open(&self.settings()).unwrap()
    }

    /// The token endpoint, accepting only the client-credentials form of our application.
    fn token_request() -> wiremock::MockBuilder {
        Mock::given(method("POST"))
            .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .and(ClientCredentialsForm)
    }

    /// Entra hands out the recorded token, `times` times.
    async fn token(&self, times: u64) {
        Self::token_request().respond_with(json(200, "token.json")).expect(times).mount(&self.entra).await;
    }

    /// A vault request carrying the recorded token and api-version 7.5.
    fn vault_request(verb: &str, at: &str) -> wiremock::MockBuilder {
        Mock::given(method(verb))
            .and(path(at))
            .and(query_param("api-version", "7.5"))
            .and(header("authorization", bearer("token.json").as_str()))
    }
}

/// The form of a client-credentials token request for Key Vault, field by field.
struct ClientCredentialsForm;

impl Match for ClientCredentialsForm {
    fn matches(&self, request: &Request) -> bool {
        let mut fields: Vec<(String, String)> =
            form_urlencoded::parse(&request.body).map(|(key, value)| (key.into_owned(), value.into_owned())).collect();
        fields.sort();
        fields
            == [
                ("client_id".to_owned(), CLIENT_ID.to_owned()),
                ("client_secret".to_owned(), CLIENT_SECRET.to_owned()),
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("scope".to_owned(), "https://vault.azure.net/.default".to_owned()),
            ]
    }
}

/// Neither the value, the client secret nor a token shows in `error`'s texts.
fn assert_discreet(error: &ProviderError) {
    for text in [error.to_string(), format!("{error:?}")] {
        for secret in [VALUE, CLIENT_SECRET, &token_in("token.json"), &token_in("token-renewed.json")] {
            assert!(!text.contains(secret), "{text:?} reveals a secret");
        }
    }
}

#[tokio::test]
async fn get_reads_the_current_version_and_reuses_the_token() {
    let fake = Fake::start().await;
    fake.token(1).await;
    Fake::vault_request("GET", "/secrets/openai-api-key")
        .respond_with(json(200, "secret-current.json"))
        .expect(2)
        .mount(&fake.vault)
        .await;
    let provider = fake.provider();

    for _ in 0..2 {
        let secret = provider.get("openai-api-key", None).await.unwrap();
        assert_eq!(secret.value.expose(), VALUE.as_bytes());
        assert_eq!(secret.info.name, "openai-api-key");
        assert_eq!(secret.info.version, CURRENT_VERSION);
        assert_eq!(secret.info.created_at, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_761_984_000)));
        assert_eq!(secret.info.expires_at, None);
        assert!(!format!("{secret:?}").contains(VALUE));
    }
    assert!(!format!("{provider:?}").contains(CLIENT_SECRET), "{provider:?}");
}

#[tokio::test]
async fn get_reads_a_version_by_its_identifier() {
    let fake = Fake::start().await;
    fake.token(1).await;
    Fake::vault_request("GET", &format!("/secrets/openai-api-key/{OLD_VERSION}"))
        .respond_with(json(200, "secret-version.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;

    let secret = fake.provider().get("openai-api-key", Some(OLD_VERSION)).await.unwrap();
    assert_eq!(secret.value.as_text(), Some("sk-test-openai-previous-fedcba9876543210"));
    assert_eq!(secret.info.version, OLD_VERSION);
}

#[tokio::test]
async fn missing_secrets_and_versions_are_told_apart() {
    let fake = Fake::start().await;
    fake.token(1).await;
    Fake::vault_request("GET", "/secrets/missing-secret")
        .respond_with(json(404, "error-secret-not-found.json"))
        .mount(&fake.vault)
        .await;
    Fake::vault_request("GET", "/secrets/openai-api-key/00000000000000000000000000000000")
        .respond_with(json(404, "error-version-not-found.json"))
        .mount(&fake.vault)
        .await;
    let provider = fake.provider();

    let error = provider.get("missing-secret", None).await.unwrap_err();
    assert_eq!(error, ProviderError::NotFound { name: "missing-secret".to_owned() });
    let error = provider.get("openai-api-key", Some("00000000000000000000000000000000")).await.unwrap_err();
    assert_eq!(
        error,
        ProviderError::VersionNotFound {
            name: "openai-api-key".to_owned(),
            version: "00000000000000000000000000000000".to_owned()
        }
    );
}

#[tokio::test]
async fn put_creates_a_secret_that_does_not_exist() {
    let fake = Fake::start().await;
    fake.token(1).await;
    Fake::vault_request("GET", "/secrets/new-secret")
        .respond_with(json(404, "error-secret-not-found.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;
    Fake::vault_request("PUT", "/secrets/new-secret")
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({ "value": "sk-test-openai-rotated-13579bdf" })))
        .respond_with(json(200, "secret-set-new.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;

    let rotation =
        fake.provider().put("new-secret", SecretValue::from("sk-test-openai-rotated-13579bdf".to_owned())).await;
    let rotation = rotation.unwrap();
    assert_eq!(rotation.current.name, "new-secret");
    assert_eq!(rotation.current.version, "5d4c3b2a19084f7e8d6c5b4a39281706");
    assert_eq!(rotation.previous, None);
}

#[tokio::test]
async fn put_adds_a_version_and_reports_the_one_it_replaced() {
    let fake = Fake::start().await;
    fake.token(1).await;
    Fake::vault_request("GET", "/secrets/openai-api-key")
        .respond_with(json(200, "secret-current.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;
    Fake::vault_request("PUT", "/secrets/openai-api-key")
        .and(body_json(serde_json::json!({ "value": "sk-test-openai-rotated-13579bdf" })))
        .respond_with(json(200, "secret-set.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;

    let rotation =
        fake.provider().put("openai-api-key", SecretValue::from("sk-test-openai-rotated-13579bdf".to_owned())).await;
    let rotation = rotation.unwrap();
    assert_eq!(rotation.current.version, "c2a2f4e1b7d84f0e9a3b5c6d7e8f9012");
    assert_eq!(rotation.current.created_at, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_762_070_400)));
    let previous = rotation.previous.unwrap();
    assert_eq!((previous.name.as_str(), previous.version.as_str()), ("openai-api-key", CURRENT_VERSION));
}

#[tokio::test]
async fn put_refuses_values_that_are_not_text() {
    let fake = Fake::start().await;
    Mock::given(method("PUT")).respond_with(ResponseTemplate::new(500)).expect(0).mount(&fake.vault).await;

    let error = fake.provider().put("openai-api-key", SecretValue::new(vec![0xff, 0xfe, 0x00])).await.unwrap_err();
    assert!(matches!(error, ProviderError::Rejected { .. }), "{error:?}");
}

#[tokio::test]
async fn list_follows_next_links_filters_by_prefix_and_reads_current_versions() {
    let fake = Fake::start().await;
    fake.token(1).await;
    let page_one = fixture("list-page-1.json").replace(RECORDED_VAULT, &fake.vault.uri());
    Fake::vault_request("GET", "/secrets")
        .and(query_param("maxresults", "25"))
        .and(query_param_is_missing("$skiptoken"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(page_one, "application/json; charset=utf-8"))
        .expect(1)
        .mount(&fake.vault)
        .await;
    Fake::vault_request("GET", "/secrets")
        .and(query_param("$skiptoken", "eyJOZXh0TWFya2VyIjoiMiExMjQhTURBd01EUXpJWE5sWTNKbGRDOVBVRVZPUVVrdFQxSkhMVWxFSVRBd01EQXlPQ0V5TURJMkxURXhMVEF5VkRFd09qRTFPalF5TGpjek1EWXdOemRhSVEtLSIsIlRhcmdldExvY2F0aW9uIjowfQ"))
        .respond_with(json(200, "list-page-2.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;
    Fake::vault_request("GET", "/secrets/openai-api-key")
        .respond_with(json(200, "secret-current.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;
    Fake::vault_request("GET", "/secrets/openai-project-key")
        .respond_with(json(200, "secret-project-key.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;

    // openai-org-id is disabled: it has no version to read.
    let listed = fake.provider().list("openai-").await.unwrap();
    let listed: Vec<_> =
        listed.iter().map(|info| (info.name.as_str(), info.version.as_str(), info.created_at)).collect();
    assert_eq!(
        listed,
        [
            ("openai-api-key", CURRENT_VERSION, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_761_984_000))),
            (
                "openai-project-key",
                "9f8e7d6c5b4a43210fedcba987654321",
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_760_000_000))
            ),
        ]
    );
}

#[tokio::test]
async fn a_next_link_out_of_the_vault_is_not_followed() {
    let fake = Fake::start().await;
    fake.token(1).await;
    // The recorded page points at the real vault, not at this fake.
    Fake::vault_request("GET", "/secrets")
        .respond_with(json(200, "list-page-1.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;

    let error = fake.provider().list("").await.unwrap_err();
    assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
}

#[tokio::test]
async fn a_refused_client_secret_is_unauthorized() {
    let fake = Fake::start().await;
    Fake::token_request().respond_with(json(401, "token-invalid-client.json")).expect(1).mount(&fake.entra).await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(500)).expect(0).mount(&fake.vault).await;

    let error = fake.provider().get("openai-api-key", None).await.unwrap_err();
    let ProviderError::Unauthorized { reason } = &error else { panic!("{error:?}") };
    assert!(reason.contains("invalid_client") && reason.contains("AADSTS7000215"), "{reason}");
    assert_discreet(&error);
}

#[tokio::test]
async fn a_vault_401_fetches_a_fresh_token_once() {
    let fake = Fake::start().await;
    Fake::token_request().respond_with(json(200, "token.json")).up_to_n_times(1).expect(1).mount(&fake.entra).await;
    Fake::token_request().respond_with(json(200, "token-renewed.json")).expect(1).mount(&fake.entra).await;
    // The first token was revoked after it was issued.
    Fake::vault_request("GET", "/secrets/openai-api-key")
        .respond_with(json(401, "error-unauthorized.json").insert_header(
            "www-authenticate",
            format!(r#"Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net""#)
                .as_str(),
        ))
        .expect(1)
        .mount(&fake.vault)
        .await;
    Mock::given(method("GET"))
        .and(path("/secrets/openai-api-key"))
        .and(query_param("api-version", "7.5"))
        .and(header("authorization", bearer("token-renewed.json").as_str()))
        .respond_with(json(200, "secret-current.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;

    let secret = fake.provider().get("openai-api-key", None).await.unwrap();
    assert_eq!(secret.value.expose(), VALUE.as_bytes());
}

#[tokio::test]
async fn a_vault_that_refuses_fresh_tokens_too_is_unauthorized() {
    let fake = Fake::start().await;
    Fake::token_request().respond_with(json(200, "token.json")).expect(2).mount(&fake.entra).await;
    Mock::given(method("GET"))
        .and(path("/secrets/openai-api-key"))
        .respond_with(json(401, "error-unauthorized.json"))
        .expect(2)
        .mount(&fake.vault)
        .await;

    let error = fake.provider().get("openai-api-key", None).await.unwrap_err();
    let ProviderError::Unauthorized { reason } = &error else { panic!("{error:?}") };
    assert!(reason.contains("TokenExpired"), "{reason}");
    assert_discreet(&error);
}

#[tokio::test]
async fn a_vault_403_is_unauthorized() {
    let fake = Fake::start().await;
    fake.token(1).await;
    Fake::vault_request("GET", "/secrets/openai-api-key")
        .respond_with(json(403, "error-forbidden.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;

    let error = fake.provider().get("openai-api-key", None).await.unwrap_err();
    let ProviderError::Unauthorized { reason } = &error else { panic!("{error:?}") };
    assert!(reason.starts_with("Key Vault answered 403 Forbidden: Forbidden: Caller is not authorized"), "{reason}");
}

#[tokio::test]
async fn throttling_says_when_to_retry_and_outages_are_unavailable() {
    let fake = Fake::start().await;
    fake.token(1).await;
    Fake::vault_request("GET", "/secrets/openai-api-key")
        .respond_with(json(429, "error-throttled.json").insert_header("retry-after", "7"))
        .mount(&fake.vault)
        .await;
    Fake::vault_request("GET", "/secrets/redis-password")
        .respond_with(ResponseTemplate::new(503))
        .mount(&fake.vault)
        .await;
    let provider = fake.provider();

    let error = provider.get("openai-api-key", None).await.unwrap_err();
    assert_eq!(error, ProviderError::Throttled { retry_after: Some(Duration::from_secs(7)) });
    let error = provider.get("redis-password", None).await.unwrap_err();
    assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
}

#[tokio::test]
async fn the_resilience_stack_retries_a_throttled_read() {
    let fake = Fake::start().await;
    fake.token(1).await;
    Fake::vault_request("GET", "/secrets/openai-api-key")
        .respond_with(json(429, "error-throttled.json").insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&fake.vault)
        .await;
    Fake::vault_request("GET", "/secrets/openai-api-key")
        .respond_with(json(200, "secret-current.json"))
        .expect(1)
        .mount(&fake.vault)
        .await;
    let provider = fake.provider();
    let resilience = Resilience::new("secret-provider", &Preset::secret());

    let secret = resilience.call(&ProviderClassifier, || provider.get("openai-api-key", None)).await;
    let secret = secret.map_err(|error| match error {
        ResilienceError::Inner(error) => error,
        other => panic!("{other:?}"),
    });
    assert_eq!(secret.unwrap().value.expose(), VALUE.as_bytes());
}

#[tokio::test]
async fn an_unreachable_vault_is_unavailable() {
    let fake = Fake::start().await;
    fake.token(1).await;
    let mut settings = fake.settings();
    // Nothing listens on port 1.
    settings.vault_url = Some("http://127.0.0.1:1".to_owned());

    let error = AzureProvider::open(&settings).unwrap().get("openai-api-key", None).await.unwrap_err();
    assert_eq!(error, ProviderError::Unavailable { reason: "Key Vault could not be reached".to_owned() });
}

#[tokio::test]
async fn settings_without_credentials_or_with_plain_http_do_not_open() {
    let fake = Fake::start().await;
    let without_secret = AzureSettings { client_secret: None, ..fake.settings() };
    let plain_http = AzureSettings { vault_url: Some("http://myvault.vault.azure.net".to_owned()), ..fake.settings() };

    for settings in [without_secret, plain_http] {
        let error = AzureProvider::open(&settings).unwrap_err();
        assert!(matches!(error, OpenError::Setup { .. }), "{error:?}");
        assert!(!error.to_string().contains(CLIENT_SECRET), "{error}");
    }
}
