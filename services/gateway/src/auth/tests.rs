//! Unit tests of the gateway authenticator: credential headers, API keys (stored and
//! static), access tokens, `last_used_at` throttling and scope checks, on the memory
//! store and a manual clock.

use std::time::Duration;

use agentmesh_runtime::Config;
use agentmesh_runtime::auth::Tier;
use http::HeaderValue;

use super::*;

const STATIC_KEY: &str = "sk-staticDevKey_0123456789abcdefghijklmn";

fn config(extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![("SECURITY_API_KEYS".to_owned(), format!("{STATIC_KEY}=dev:premium"))];
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Config::load(None, vars).unwrap()
}

struct Fixture {
    auth: GatewayAuth,
    store: Arc<MemoryKeyStore>,
    clock: ManualClock,
}

fn fixture() -> Fixture {
    let store = Arc::new(MemoryKeyStore::new());
    let clock = ManualClock::new(DateTime::from_timestamp(1_800_000_000, 0).unwrap());
    let auth = GatewayAuth::with_clock(&config(&[]).security, store.clone(), Arc::new(clock.clone()));
    Fixture { auth, store, clock }
}

impl Fixture {
    async fn create(&self, user: &str, scopes: &[&str]) -> (String, ApiKeyRecord) {
        let new = NewApiKey {
            user_id: user.into(),
            tenant_id: "acme".into(),
            tier: Tier::Authenticated,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            name: Some("ci".into()),
        };
        let created = create_key(self.store.as_ref(), self.auth.key_settings(), new, self.clock.now()).await.unwrap();
        (created.secret.expose().to_owned(), created.record)
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

async fn refused(auth: &GatewayAuth, pairs: &[(&str, &str)]) -> ApiError {
    let error = auth.authenticate(&headers(pairs)).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Authentication, "{error}");
    assert_eq!(error.http_status(), http::StatusCode::UNAUTHORIZED);
    error
}

#[tokio::test]
async fn no_credentials_is_anonymous() {
    let f = fixture();
    assert_eq!(f.auth.authenticate(&HeaderMap::new()).await.unwrap(), None);
}

#[tokio::test]
async fn stored_keys_authenticate_by_bearer_or_x_api_key_until_revoked() {
    let f = fixture();
    let (key, record) = f.create("alice", &["sessions:read"]).await;
    let bearer = format!("Bearer {key}");
    for pairs in [vec![("authorization", bearer.as_str())], vec![("x-api-key", key.as_str())]] {
        let principal = f.auth.authenticate(&headers(&pairs)).await.unwrap().unwrap();
        assert_eq!(principal.user_id, "alice");
        assert_eq!(principal.tenant_id, "acme");
        assert_eq!(principal.tier, Tier::Authenticated);
        assert_eq!(principal.scopes, ["sessions:read"]);
    }
    let lower = format!("bearer {key}");
    assert!(f.auth.authenticate(&headers(&[("authorization", &lower), ("x-api-key", &key)])).await.is_ok());

    f.store.revoke(Some("acme"), record.id, f.clock.now()).await.unwrap();
    let error = refused(&f.auth, &[("x-api-key", &key)]).await;
    assert_eq!(error.message, "API key has been revoked");
}

#[tokio::test]
async fn bad_credentials_are_401_without_echoing_them() {
    let f = fixture();
    let (key, _) = f.create("alice", &[]).await;
    let unknown = format!("sk-{}", "Z".repeat(40));
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![("authorization", format!("Bearer {unknown}"))], "Invalid API key"),
        (vec![("x-api-key", unknown.clone())], "Invalid API key"),
        (vec![("x-api-key", "not-a-key-at-all".into())], "Invalid API key"),
        (vec![("authorization", "Bearer eyJhbGciOiJub25lIn0.e30.".into())], "Invalid access token"),
        (vec![("authorization", "Bearer garbage".into())], "Invalid access token"),
        (vec![("authorization", format!("Basic {key}"))], "Unsupported authorization scheme"),
        (vec![("authorization", "Bearer ".into())], "Missing bearer token"),
        (vec![("authorization", "Bearer".into())], "Missing bearer token"),
        (vec![("authorization", format!("Bearer {key}")), ("x-api-key", unknown.clone())], "Conflicting credentials"),
        (vec![("x-api-key", key.clone()), ("x-api-key", key.clone())], "Send one X-API-Key header"),
        (vec![("x-api-key", format!("sk-{}", "a".repeat(9000)))], "X-API-Key header is too long"),
    ];
    for (pairs, expected) in cases {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let error = refused(&f.auth, &pairs).await;
        assert!(error.message.starts_with(expected), "{pairs:?}: {}", error.message);
        let shown = format!("{error:?}");
        assert!(!shown.contains(&key) && !shown.contains(&unknown), "credential echoed: {shown}");
    }
}

#[tokio::test]
async fn static_development_keys_authenticate_with_every_scope() {
    let f = fixture();
    let principal = f.auth.authenticate(&headers(&[("x-api-key", STATIC_KEY)])).await.unwrap().unwrap();
    assert_eq!((principal.user_id.as_str(), principal.tier), ("dev", Tier::Premium));
    assert!(principal.has_scope("api_keys:write"));
    assert!(!format!("{:?}", f.auth).contains(STATIC_KEY), "Debug must hide static keys");
}

#[tokio::test]
async fn access_tokens_authenticate_and_refresh_tokens_do_not() {
    let f = fixture();
    let (_, record) = f.create("alice", &["sessions:read"]).await;
    let access = f.auth.jwt().issue(&record.principal(), TokenType::Access).token;
    let refresh = f.auth.jwt().issue(&record.principal(), TokenType::Refresh).token;
    let principal = f.auth.authenticate(&headers(&[("authorization", &format!("Bearer {access}"))])).await.unwrap();
    assert_eq!(principal, Some(record.principal()));
    let error = refused(&f.auth, &[("authorization", &format!("Bearer {refresh}"))]).await;
    assert!(error.message.contains("refresh token"), "{}", error.message);
    f.clock.advance(Duration::from_secs(1800) + jwt::LEEWAY + Duration::from_secs(1));
    let error = refused(&f.auth, &[("authorization", &format!("Bearer {access}"))]).await;
    assert_eq!(error.message, "Access token has expired");
    let other = GatewayAuth::new(
        &config(&[("SECURITY_SECRET_KEY", "another-secret-another-secret-another-secret")]).security,
        f.store.clone(),
    );
    let fresh = f.auth.jwt().issue(&record.principal(), TokenType::Access).token;
    let error = refused(&other, &[("authorization", &format!("Bearer {fresh}"))]).await;
    assert_eq!(error.message, "Invalid access token");
}

#[tokio::test]
async fn last_used_at_is_written_at_most_once_a_minute() {
    let f = fixture();
    let (key, record) = f.create("alice", &[]).await;
    let first = f.clock.now();
    let use_key = || async { f.auth.authenticate(&headers(&[("x-api-key", &key)])).await.unwrap() };
    let last_used = || async { f.store.get(record.id).await.unwrap().unwrap().last_used_at };
    use_key().await;
    tokio::task::yield_now().await;
    assert_eq!(last_used().await, Some(first));
    f.clock.advance(Duration::from_secs(30));
    use_key().await;
    tokio::task::yield_now().await;
    assert_eq!(last_used().await, Some(first), "throttled");
    f.clock.advance(Duration::from_secs(31));
    use_key().await;
    tokio::task::yield_now().await;
    assert_eq!(last_used().await, Some(f.clock.now()));
    assert!(touch_due(None, first));
    assert!(!touch_due(Some(first), first + chrono::Duration::seconds(59)));
    assert!(touch_due(Some(first), first + chrono::Duration::seconds(60)));
}

#[test]
fn authorize_requires_every_scope_and_star_passes() {
    let principal = |scopes: &[&str]| Principal {
        user_id: "u".into(),
        tenant_id: String::new(),
        tier: Tier::Default,
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    };
    let required = ["sessions:read".to_owned(), "sessions:write".to_owned()];
    assert!(authorize(&principal(&["sessions:read", "sessions:write"]), &required).is_ok());
    assert!(authorize(&principal(&["*"]), &required).is_ok());
    assert!(authorize(&principal(&[]), &[]).is_ok());
    let error = authorize(&principal(&["sessions:read"]), &required).unwrap_err();
    assert_eq!(error.code, ErrorCode::Authorization);
    assert_eq!(error.http_status(), http::StatusCode::FORBIDDEN);
    assert_eq!(error.message, "Missing required scope: sessions:write");
    assert_eq!(error.details["missing_scopes"], serde_json::json!(["sessions:write"]));
    let error = authorize(&principal(&[]), &required).unwrap_err();
    assert_eq!(error.message, "Missing required scopes: sessions:read, sessions:write");
}

#[tokio::test]
async fn memory_store_looks_up_lists_and_revokes() {
    let f = fixture();
    let (key, alice) = f.create("alice", &[]).await;
    f.clock.advance(Duration::from_secs(1));
    let (_, bob) = f.create("bob", &["sessions:read"]).await;
    assert_eq!(f.store.find_by_hash(&keys::KeyHash::of(&key)).await.unwrap(), Some(alice.clone()));
    assert_eq!(alice.scopes, default_scopes());
    let query = store::KeyQuery {
        tenant_id: Some("acme".into()),
        user_id: None,
        include_revoked: false,
        limit: 10,
        offset: 0,
        after: None,
    };
    let page = f.store.list(&query).await.unwrap();
    assert_eq!(page.items, [bob.clone(), alice.clone()], "newest first");
    assert_eq!(f.store.revoke(Some("other"), alice.id, f.clock.now()).await.unwrap(), None);
    let revoked = f.store.revoke(Some("acme"), alice.id, f.clock.now()).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(f.clock.now()));
    f.clock.advance(Duration::from_secs(5));
    let again = f.store.revoke(None, alice.id, f.clock.now()).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at, "the first revocation time stays");
    assert_eq!(f.store.list(&query).await.unwrap().items, std::slice::from_ref(&bob));
    let all = f.store.list(&store::KeyQuery { include_revoked: true, ..query }).await.unwrap();
    assert_eq!(all.total, 2);
    assert_eq!(f.store.find_by_prefix(&bob.prefix).await.unwrap(), [bob]);
}

#[tokio::test]
async fn static_keys_can_be_exchanged_and_refreshed() {
    use agentmesh_proto::agentmesh::auth::v1 as pb;
    use agentmesh_proto::agentmesh::auth::v1::auth_service_server::AuthService as _;

    let f = fixture();
    let api = AuthApi::new(Arc::new(f.auth));
    let issued = api.issue_token(tonic::Request::new(pb::IssueTokenRequest { api_key: STATIC_KEY.into() })).await;
    let issued = issued.unwrap().into_inner();
    let refresh = pb::RefreshTokenRequest { refresh_token: issued.refresh_token.clone() };
    let refreshed = api.refresh_token(tonic::Request::new(refresh.clone())).await.unwrap().into_inner();
    assert_ne!(refreshed.refresh_token, issued.refresh_token);
    assert_eq!(api.refresh_token(tonic::Request::new(refresh)).await.unwrap_err().code(), tonic::Code::Unauthenticated);
}
