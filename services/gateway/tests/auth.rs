//! API keys and tokens end to end below the router: the key-store contract on memory and
//! on a real PostgreSQL (own schema per test, dropped when the test ends, even on
//! failure), and the `AuthService` called in process with `tonic::Request`s carrying a
//! `RequestContext`, as the server layer delivers them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentmesh_gateway::auth::keys::KeyHash;
use agentmesh_gateway::auth::store::{KeyQuery, RefreshRecord, Rotation};
use agentmesh_gateway::auth::{
    ApiKeyRecord, ApiKeyStore, AuthApi, Clock as _, GatewayAuth, ManualClock, MemoryKeyStore, NewApiKey,
    PostgresKeyStore, create_key,
};
use agentmesh_postgres::PoolSettings;
use agentmesh_proto::agentmesh::auth::v1 as pb;
use agentmesh_proto::agentmesh::auth::v1::auth_service_server::AuthService;
use agentmesh_proto::agentmesh::common::v1::ApiTier;
use agentmesh_resilience::Preset;
use agentmesh_runtime::auth::{Principal, Tier};
use agentmesh_runtime::{ApiError, Config, ErrorCode, RequestContext};
use agentmesh_testkit::PgSchema;
use chrono::{DateTime, Utc};
use tonic::{Code, Request};
use uuid::Uuid;

const START: i64 = 1_800_000_000;

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(START, 0).unwrap()
}

/// A PostgreSQL store in a fresh schema, or `None` (skip) when PostgreSQL is unreachable.
async fn postgres() -> Option<(PostgresKeyStore, PgSchema)> {
    let schema = PgSchema::start("gw").await?;
    let store = PostgresKeyStore::connect(schema.url(), schema.name(), pool(4), &Preset::database()).await.unwrap();
    // Connecting again to a migrated schema is a no-op.
    PostgresKeyStore::connect(schema.url(), schema.name(), pool(1), &Preset::database()).await.unwrap();
    Some((store, schema))
}

fn pool(max: u32) -> PoolSettings {
    PoolSettings { min: 0, max, acquire_timeout: Duration::from_secs(10) }
}

fn new_key(user: &str, tenant: &str, scopes: &[&str]) -> NewApiKey {
    NewApiKey {
        user_id: user.into(),
        tenant_id: tenant.into(),
        tier: Tier::Authenticated,
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        name: Some(format!("{user}'s key")),
    }
}

fn query(tenant: Option<&str>, limit: u32) -> KeyQuery {
    KeyQuery {
        tenant_id: tenant.map(str::to_owned),
        user_id: None,
        include_revoked: false,
        limit,
        offset: 0,
        after: None,
    }
}

/// The key-store contract, for any implementation.
async fn store_contract(store: &dyn ApiKeyStore) {
    let clock = ManualClock::new(start());
    let settings = Default::default();
    let mut created: Vec<(String, ApiKeyRecord)> = Vec::new();
    for (user, tenant) in [("alice", "acme"), ("bob", "acme"), ("alice", "acme"), ("carol", "globex")] {
        clock.advance(Duration::from_secs(1));
        let key = create_key(store, &settings, new_key(user, tenant, &[]), clock.now()).await.unwrap();
        created.push((key.secret.expose().to_owned(), key.record));
    }
    let (alice_key, alice) = created[0].clone();

    // Lookup by the key's hash and by id, revoked or not; never by anything else.
    assert_eq!(store.find_by_hash(&KeyHash::of(&alice_key)).await.unwrap(), Some(alice.clone()));
    assert_eq!(store.find_by_hash(&KeyHash::of("sk-unknown")).await.unwrap(), None);
    assert_eq!(store.get(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(store.get(Uuid::now_v7()).await.unwrap(), None);
    assert_eq!(store.find_by_prefix(&alice.prefix).await.unwrap(), std::slice::from_ref(&alice));
    assert_eq!(store.find_by_prefix("sk-").await.unwrap().len(), 4);
    assert!(alice.scopes.iter().any(|s| s == "sessions:read"), "default scopes: {:?}", alice.scopes);
    assert!(store.insert(&alice, &KeyHash::of(&alice_key)).await.is_err(), "duplicates are refused");

    // Listing: one tenant, newest first, by user, paged by offset and by cursor.
    let acme: Vec<ApiKeyRecord> = created[..3].iter().rev().map(|(_, r)| r.clone()).collect();
    let page = store.list(&query(Some("acme"), 10)).await.unwrap();
    assert_eq!((page.items.as_slice(), page.total), (acme.as_slice(), 3));
    let page = store.list(&KeyQuery { user_id: Some("alice".into()), ..query(Some("acme"), 10) }).await.unwrap();
    assert_eq!(page.items.iter().map(|k| k.id).collect::<Vec<_>>(), [acme[0].id, acme[2].id]);
    let page = store.list(&KeyQuery { offset: 1, ..query(Some("acme"), 1) }).await.unwrap();
    assert_eq!((page.items.as_slice(), page.total), (&acme[1..2], 3));
    let cursor = agentmesh_gateway::auth::store::Cursor { created_at: acme[1].created_at, id: acme[1].id };
    let page = store.list(&KeyQuery { after: Some(cursor), offset: 5, ..query(Some("acme"), 10) }).await.unwrap();
    assert_eq!(page.items, &acme[2..]);
    assert_eq!(store.list(&query(None, 10)).await.unwrap().total, 4);

    // Revocation: tenant-scoped, first time kept, hidden from default listings.
    assert_eq!(store.revoke(Some("globex"), alice.id, clock.now()).await.unwrap(), None);
    let revoked_at = clock.now();
    let revoked = store.revoke(Some("acme"), alice.id, revoked_at).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(revoked_at));
    clock.advance(Duration::from_secs(10));
    let again = store.revoke(None, alice.id, clock.now()).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(revoked_at));
    assert!(!store.find_by_hash(&KeyHash::of(&alice_key)).await.unwrap().unwrap().is_active());
    assert_eq!(store.list(&query(Some("acme"), 10)).await.unwrap().total, 2);
    assert_eq!(store.list(&KeyQuery { include_revoked: true, ..query(Some("acme"), 10) }).await.unwrap().total, 3);
    assert_eq!(store.revoke(None, Uuid::now_v7(), clock.now()).await.unwrap(), None);

    // last_used_at: written at most once a minute.
    let bob = &created[1].1;
    let t0 = clock.now();
    assert!(store.touch(bob.id, t0).await.unwrap());
    assert!(!store.touch(bob.id, t0 + chrono::Duration::seconds(30)).await.unwrap());
    assert!(!store.touch(bob.id, t0 + chrono::Duration::seconds(59)).await.unwrap());
    assert_eq!(store.get(bob.id).await.unwrap().unwrap().last_used_at, Some(t0));
    let t1 = t0 + chrono::Duration::seconds(61);
    assert!(store.touch(bob.id, t1).await.unwrap());
    assert_eq!(store.get(bob.id).await.unwrap().unwrap().last_used_at, Some(t1));
    assert!(!store.touch(Uuid::now_v7(), t1).await.unwrap());

    refresh_contract(store, bob.id).await;
}

/// Refresh-token records: rotation, reuse detection, expiry, purge.
async fn refresh_contract(store: &dyn ApiKeyStore, key_id: Uuid) {
    let at = start();
    let record = |jti: Uuid, family: Uuid| RefreshRecord {
        jti,
        family_id: family,
        api_key_id: key_id,
        issued_at: at,
        expires_at: at + chrono::Duration::days(7),
    };
    let (first, second, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let family = Uuid::new_v4();
    store.insert_refresh(&record(first, family)).await.unwrap();
    let rotated = store.rotate_refresh(first, &record(second, Uuid::nil()), at).await.unwrap();
    assert_eq!(rotated, Rotation::Rotated { api_key_id: key_id });
    // Reusing the consumed token revokes the family: the successor stops working too.
    assert_eq!(store.rotate_refresh(first, &record(third, Uuid::nil()), at).await.unwrap(), Rotation::Reused);
    assert_eq!(store.rotate_refresh(second, &record(third, Uuid::nil()), at).await.unwrap(), Rotation::Reused);
    assert_eq!(store.rotate_refresh(Uuid::new_v4(), &record(third, Uuid::nil()), at).await.unwrap(), Rotation::Unknown);

    // Other families are unaffected; an expired token is unknown and then purged.
    let other = Uuid::new_v4();
    store.insert_refresh(&record(other, Uuid::new_v4())).await.unwrap();
    let late = at + chrono::Duration::days(8);
    assert_eq!(
        store.rotate_refresh(other, &record(Uuid::new_v4(), Uuid::nil()), late).await.unwrap(),
        Rotation::Unknown
    );
    let live = Uuid::new_v4();
    store.insert_refresh(&record(live, Uuid::new_v4())).await.unwrap();
    store.revoke_refresh_family(live, at).await.unwrap();
    assert_eq!(store.rotate_refresh(live, &record(Uuid::new_v4(), Uuid::nil()), at).await.unwrap(), Rotation::Reused);
    assert!(store.purge_refresh(late).await.unwrap() >= 4);
    assert_eq!(store.purge_refresh(late).await.unwrap(), 0);
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    store_contract(&MemoryKeyStore::new()).await;
}

#[tokio::test]
async fn the_postgres_store_keeps_the_contract() {
    let Some((store, _guard)) = postgres().await else { return };
    store_contract(&store).await;
    // Only the hash is stored, never the key.
    let row: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE octet_length(key_hash) = 32 AND prefix LIKE 'sk-________') \
         FROM api_keys",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(row.0, row.1);
}

// ---------------------------------------------------------------------------------------
// AuthService
// ---------------------------------------------------------------------------------------

struct Api {
    api: AuthApi,
    auth: Arc<GatewayAuth>,
    clock: ManualClock,
}

fn api(store: Arc<dyn ApiKeyStore>) -> Api {
    let config = Config::load(None, Vec::<(String, String)>::new()).unwrap();
    let clock = ManualClock::new(start());
    let auth = Arc::new(GatewayAuth::with_clock(&config.security, store, Arc::new(clock.clone())));
    Api { api: AuthApi::new(Arc::clone(&auth)), auth, clock }
}

fn principal(user: &str, tenant: &str, scopes: &[&str]) -> Principal {
    Principal {
        user_id: user.into(),
        tenant_id: tenant.into(),
        tier: Tier::Premium,
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// A request as the server layer hands it to the handler.
fn request<T>(message: T, caller: Option<Principal>) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(RequestContext { principal: caller, ..RequestContext::new() });
    request
}

fn error_of(status: &tonic::Status) -> ApiError {
    ApiError::from_status(status)
}

fn create_request(user: &str, scopes: &[&str]) -> pb::CreateApiKeyRequest {
    pb::CreateApiKeyRequest {
        user_id: user.into(),
        tier: ApiTier::Authenticated.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        name: Some("test".into()),
        tenant_id: None,
    }
}

async fn create(api: &Api, caller: &Principal, user: &str, scopes: &[&str]) -> pb::CreateApiKeyResponse {
    api.api.create_api_key(request(create_request(user, scopes), Some(caller.clone()))).await.unwrap().into_inner()
}

async fn issue(api: &Api, key: &str) -> Result<pb::IssueTokenResponse, tonic::Status> {
    api.api.issue_token(request(pb::IssueTokenRequest { api_key: key.into() }, None)).await.map(|r| r.into_inner())
}

async fn refresh(api: &Api, token: &str) -> Result<pb::RefreshTokenResponse, tonic::Status> {
    let message = pb::RefreshTokenRequest { refresh_token: token.into() };
    api.api.refresh_token(request(message, None)).await.map(|r| r.into_inner())
}

async fn bearer(api: &Api, token: &str) -> Result<Option<Principal>, ApiError> {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    api.auth.authenticate(&headers).await
}

fn admin() -> Principal {
    principal("root", "acme", &["*"])
}

async fn token_flow(store: Arc<dyn ApiKeyStore>) {
    let api = api(store);
    let created = create(&api, &admin(), "alice", &["sessions:read"]).await;

    // Issue: the key buys an access token (which authenticates) and a refresh token.
    let issued = issue(&api, &created.key).await.unwrap();
    assert_eq!((issued.token_type.as_str(), issued.expires_in), ("bearer", 1800));
    let alice = bearer(&api, &issued.access_token).await.unwrap().unwrap();
    assert_eq!((alice.user_id.as_str(), alice.tenant_id.as_str()), ("alice", "acme"));
    assert_eq!(alice.scopes, ["sessions:read"]);
    assert_eq!(bearer(&api, &issued.refresh_token).await.unwrap_err().code, ErrorCode::Authentication);
    let wrong = refresh(&api, &issued.access_token).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);

    // Refresh rotates: new tokens, the old refresh token is spent.
    api.clock.advance(Duration::from_secs(600));
    let refreshed = refresh(&api, &issued.refresh_token).await.unwrap();
    assert_ne!(refreshed.refresh_token, issued.refresh_token);
    assert!(bearer(&api, &refreshed.access_token).await.unwrap().is_some());
    let reused = refresh(&api, &issued.refresh_token).await.unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    assert!(error_of(&reused).message.contains("already used"), "{reused:?}");
    // Reuse detection revoked the family: the legitimate successor is refused as well.
    assert_eq!(refresh(&api, &refreshed.refresh_token).await.unwrap_err().code(), Code::Unauthenticated);

    // A new family works until the key is revoked; refresh tokens expire after 7 days.
    let second = issue(&api, &created.key).await.unwrap();
    let third = refresh(&api, &second.refresh_token).await.unwrap();
    api.clock.advance(Duration::from_secs(7 * 86_400 + 60));
    let expired = refresh(&api, &third.refresh_token).await.unwrap_err();
    assert_eq!(error_of(&expired).message, "Refresh token has expired");
    assert_eq!(bearer(&api, &third.access_token).await.unwrap_err().message, "Access token has expired");

    let fourth = issue(&api, &created.key).await.unwrap();
    let key_id = created.api_key.as_ref().unwrap().id.clone();
    let revoke = pb::RevokeApiKeyRequest { api_key_id: key_id };
    api.api.revoke_api_key(request(revoke, Some(admin()))).await.unwrap();
    let after_revoke = refresh(&api, &fourth.refresh_token).await.unwrap_err();
    assert_eq!(after_revoke.code(), Code::Unauthenticated);
    let reissue = issue(&api, &created.key).await.unwrap_err();
    assert_eq!(error_of(&reissue).message, "API key has been revoked");

    // Bad input: validation errors never echo the key; unknown keys are 401.
    let short = issue(&api, "sk-too-short-secret").await.unwrap_err();
    assert_eq!(error_of(&short).code, ErrorCode::Validation);
    assert!(!format!("{short:?}").contains("too-short-secret"), "{short:?}");
    let unknown = issue(&api, &format!("sk-{}", "q".repeat(40))).await.unwrap_err();
    assert_eq!(error_of(&unknown).message, "Invalid API key");
    assert_eq!(refresh(&api, "not.a.jwt").await.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn issue_refresh_and_refresh_token_reuse_on_memory() {
    token_flow(Arc::new(MemoryKeyStore::new())).await;
}

#[tokio::test]
async fn issue_refresh_and_refresh_token_reuse_on_postgres() {
    let Some((store, _guard)) = postgres().await else { return };
    token_flow(Arc::new(store)).await;
}

async fn admin_flow(store: Arc<dyn ApiKeyStore>) {
    let api = api(store);
    let writer = principal("ops", "acme", &["api_keys:write", "api_keys:read", "sessions:read"]);
    let reader = principal("auditor", "acme", &["api_keys:read"]);
    let user = principal("alice", "acme", &["sessions:read"]);

    // Scopes: anonymous 401, missing scope 403, and no granting beyond one's own.
    let anonymous = api.api.create_api_key(request(create_request("x", &[]), None)).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    for (caller, code) in [(&user, Code::PermissionDenied), (&reader, Code::PermissionDenied)] {
        let denied = api.api.create_api_key(request(create_request("x", &[]), Some(caller.clone()))).await;
        assert_eq!(denied.unwrap_err().code(), code);
    }
    let listing = pb::ListApiKeysRequest::default();
    let denied = api.api.list_api_keys(request(listing.clone(), Some(user.clone()))).await.unwrap_err();
    assert_eq!(error_of(&denied).code, ErrorCode::Authorization);
    let escalate = api.api.create_api_key(request(create_request("x", &["*"]), Some(writer.clone()))).await;
    assert_eq!(escalate.unwrap_err().code(), Code::PermissionDenied);
    let defaults = api.api.create_api_key(request(create_request("x", &[]), Some(writer.clone()))).await;
    assert_eq!(defaults.unwrap_err().code(), Code::PermissionDenied, "default scopes exceed the writer's");
    let other_tenant = pb::CreateApiKeyRequest { tenant_id: Some("globex".into()), ..create_request("x", &[]) };
    let denied = api.api.create_api_key(request(other_tenant, Some(admin()))).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Create: the key once, metadata always; list: metadata only, own tenant only.
    let mine = api.api.create_api_key(request(create_request("alice", &["sessions:read"]), Some(writer.clone())));
    let mine = mine.await.unwrap().into_inner();
    let meta = mine.api_key.clone().unwrap();
    assert!(mine.key.starts_with(&meta.prefix) && mine.key.len() >= 35);
    assert_eq!((meta.user_id.as_str(), meta.tenant_id.as_str()), ("alice", "acme"));
    assert_eq!(
        (meta.tier, meta.scopes.as_slice()),
        (i32::from(ApiTier::Authenticated), &["sessions:read".to_owned()][..])
    );
    assert!(meta.revoked_at.is_none() && meta.last_used_at.is_none() && meta.created_at.is_some());
    api.clock.advance(Duration::from_secs(1));
    let theirs = create(&api, &principal("root", "globex", &["*"]), "mallory", &[]).await;
    for n in 0..3 {
        api.clock.advance(Duration::from_secs(1));
        create(&api, &admin(), &format!("user{n}"), &[]).await;
    }
    let listed = api.api.list_api_keys(request(listing.clone(), Some(reader.clone()))).await.unwrap().into_inner();
    assert_eq!(listed.total_count, 4);
    assert!(listed.api_keys.iter().all(|k| k.tenant_id == "acme"));
    assert!(!format!("{listed:?}").contains(&mine.key), "listings never hold keys");

    // Paging with limit and page tokens, newest first.
    let mut seen = Vec::new();
    let mut page_request = pb::ListApiKeysRequest { limit: Some(3), ..listing.clone() };
    loop {
        let page = api.api.list_api_keys(request(page_request.clone(), Some(reader.clone()))).await.unwrap();
        let page = page.into_inner();
        seen.extend(page.api_keys.iter().map(|k| k.user_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        page_request.page_token = page.next_page_token;
    }
    assert_eq!(seen, ["user2", "user1", "user0", "alice"]);
    let by_user = pb::ListApiKeysRequest { user_id: Some("alice".into()), ..listing.clone() };
    let by_user = api.api.list_api_keys(request(by_user, Some(reader.clone()))).await.unwrap().into_inner();
    assert_eq!(by_user.api_keys.len(), 1);
    let bad_token = pb::ListApiKeysRequest { page_token: "bogus".into(), ..listing.clone() };
    let bad = api.api.list_api_keys(request(bad_token, Some(reader.clone()))).await.unwrap_err();
    assert_eq!(error_of(&bad).code, ErrorCode::Validation);

    // Revoke: another tenant's key is "not found" and keeps working; own key stops at once.
    let theirs_id = theirs.api_key.unwrap().id;
    let cross =
        api.api.revoke_api_key(request(pb::RevokeApiKeyRequest { api_key_id: theirs_id }, Some(writer.clone())));
    assert_eq!(cross.await.unwrap_err().code(), Code::NotFound);
    assert!(issue(&api, &theirs.key).await.is_ok());
    let missing = pb::RevokeApiKeyRequest { api_key_id: Uuid::now_v7().to_string() };
    assert_eq!(
        api.api.revoke_api_key(request(missing, Some(writer.clone()))).await.unwrap_err().code(),
        Code::NotFound
    );
    let invalid = pb::RevokeApiKeyRequest { api_key_id: "nope".into() };
    let invalid = api.api.revoke_api_key(request(invalid, Some(writer.clone()))).await.unwrap_err();
    assert_eq!(error_of(&invalid).code, ErrorCode::Validation);
    let by_reader = pb::RevokeApiKeyRequest { api_key_id: meta.id.clone() };
    let denied = api.api.revoke_api_key(request(by_reader, Some(reader.clone()))).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(issue(&api, &mine.key).await.is_ok());
    let revoke = pb::RevokeApiKeyRequest { api_key_id: meta.id.clone() };
    api.api.revoke_api_key(request(revoke, Some(writer.clone()))).await.unwrap();
    assert_eq!(issue(&api, &mine.key).await.unwrap_err().code(), Code::Unauthenticated);
    let with_revoked = pb::ListApiKeysRequest { include_revoked: true, ..listing.clone() };
    let all = api.api.list_api_keys(request(with_revoked, Some(reader.clone()))).await.unwrap().into_inner();
    assert_eq!(all.total_count, 4);
    assert!(all.api_keys.iter().any(|k| k.id == meta.id && k.revoked_at.is_some()));
    let active = api.api.list_api_keys(request(listing, Some(reader))).await.unwrap().into_inner();
    assert_eq!(active.total_count, 3);
}

#[tokio::test]
async fn key_administration_needs_scopes_and_stays_in_the_tenant_on_memory() {
    admin_flow(Arc::new(MemoryKeyStore::new())).await;
}

#[tokio::test]
async fn key_administration_needs_scopes_and_stays_in_the_tenant_on_postgres() {
    let Some((store, _guard)) = postgres().await else { return };
    admin_flow(Arc::new(store)).await;
}
