//! `AuthService` over gRPC (and REST under `/api/v1/auth` through the router): token
//! issuance and refresh, and API-key administration.
//!
//! - **IssueToken** exchanges an active API key for an access token and the first refresh
//!   token of a new family.
//! - **RefreshToken** consumes a refresh token and returns a new access token and a new
//!   refresh token. The old refresh token stops working; presenting it again revokes the
//!   whole family (reuse detection, see [`store`](super::store)). The tokens carry the key's
//!   *current* tier and scopes, and a revoked key gets none.
//! - **CreateApiKey / ListApiKeys / RevokeApiKey** act on the caller's tenant only and
//!   need `api_keys:write` / `api_keys:read` (checked here too, not only by the router).
//!   Another tenant's key answers 404, like a missing one. A caller cannot grant more
//!   than it holds: without `*`, the new key's scopes must be among the caller's and its
//!   tier at most the caller's. The key itself is returned by CreateApiKey only, once.
//!
//! Requests are checked against the contract's field rules first; the validation error
//! never echoes an API key or refresh token.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use agentmesh_proto::agentmesh::auth::v1 as pb;
use agentmesh_proto::agentmesh::auth::v1::auth_service_server::AuthService;
use agentmesh_proto::agentmesh::common::v1::ApiTier;
use agentmesh_runtime::auth::{Principal, Tier};
use agentmesh_runtime::error::FieldViolation;
use agentmesh_runtime::validate::validate;
use agentmesh_runtime::{ApiError, ErrorCode, RequestContext};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::jwt::{Issued, JwtError, TokenType};
use super::keys::{self, ApiKeyRecord, KeyError, NewApiKey, WILDCARD_SCOPE};
use super::store::{Cursor, KeyQuery, RefreshRecord, Rotation};
use super::{GatewayAuth, authorize, store_error};

/// Scope needed to create and revoke keys.
pub const SCOPE_WRITE: &str = "api_keys:write";
/// Scope needed to list keys.
pub const SCOPE_READ: &str = "api_keys:read";

const DEFAULT_LIMIT: u32 = 20;

/// Expired refresh-token records are purged at most this often (seconds).
const PURGE_EVERY_SECS: i64 = 3600;

/// Fields whose values are credentials and must not be echoed in validation errors.
const SECRET_FIELDS: [&str; 2] = ["api_key", "refresh_token"];

/// The `AuthService` implementation.
#[derive(Debug)]
pub struct AuthApi {
    auth: Arc<GatewayAuth>,
    /// When expired refresh records were last purged (Unix seconds).
    last_purge: AtomicI64,
}

impl AuthApi {
    /// A service issuing tokens and managing keys through `auth`.
    pub fn new(auth: Arc<GatewayAuth>) -> Self {
        Self { auth, last_purge: AtomicI64::new(0) }
    }

    /// Signs an access token and a refresh token for `record`; the refresh token's record
    /// is stored by the caller (new family or rotation).
    fn sign_pair(&self, record: &ApiKeyRecord, refresh_jti: Uuid, at: DateTime<Utc>) -> (Issued, Issued) {
        let jwt = self.auth.jwt();
        let principal = record.principal();
        (
            jwt.issue_at(&principal, TokenType::Access, Uuid::new_v4(), at),
            jwt.issue_at(&principal, TokenType::Refresh, refresh_jti, at),
        )
    }

    /// Deletes expired refresh records in the background, at most once per interval.
    fn purge_now_and_then(&self, now: DateTime<Utc>) {
        let last = self.last_purge.load(Ordering::Relaxed);
        let due = now.timestamp() - last >= PURGE_EVERY_SECS;
        if !due
            || self.last_purge.compare_exchange(last, now.timestamp(), Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let store = Arc::clone(self.auth.store());
        tokio::spawn(async move {
            match store.purge_refresh(now).await {
                Ok(purged) => tracing::debug!(purged, "expired refresh tokens purged"),
                Err(error) => tracing::warn!(%error, "could not purge expired refresh tokens"),
            }
        });
    }

    fn expires_in(&self) -> i64 {
        i64::try_from(self.auth.jwt().access_ttl().as_secs()).unwrap_or(i64::MAX)
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let request = request.into_inner();
        validate(&request).map_err(redact)?;
        let record = self.auth.authenticate_key(&request.api_key).await?;
        let now = self.auth.clock().now();
        let (access, refresh) = self.sign_pair(&record, Uuid::new_v4(), now);
        let family = RefreshRecord {
            jti: refresh.claims.jti,
            family_id: Uuid::new_v4(),
            api_key_id: record.id,
            issued_at: now,
            expires_at: refresh.claims.expires_at(),
        };
        self.auth.store().insert_refresh(&family).await.map_err(store_error)?;
        self.purge_now_and_then(now);
        tracing::info!(key_id = %record.id, key_prefix = %record.prefix, "tokens issued");
        Ok(Response::new(pb::IssueTokenResponse {
            access_token: access.token,
            refresh_token: refresh.token,
            token_type: "bearer".to_owned(),
            expires_in: self.expires_in(),
        }))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        let request = request.into_inner();
        validate(&request).map_err(redact)?;
        let claims = self.auth.jwt().verify(&request.refresh_token, TokenType::Refresh).map_err(|error| {
            unauthenticated(match error {
                JwtError::Expired => "Refresh token has expired",
                JwtError::WrongType { .. } => "An access token cannot be used as a refresh token",
                _ => "Invalid refresh token",
            })
        })?;
        let now = self.auth.clock().now();
        let next = RefreshRecord {
            jti: Uuid::new_v4(),
            family_id: Uuid::nil(),
            api_key_id: Uuid::nil(),
            issued_at: now,
            expires_at: self.auth.jwt().expiry_at(TokenType::Refresh, now),
        };
        let store = self.auth.store();
        let api_key_id = match store.rotate_refresh(claims.jti, &next, now).await.map_err(store_error)? {
            Rotation::Rotated { api_key_id } => api_key_id,
            Rotation::Reused => {
                tracing::warn!(user_id = %claims.sub, "refresh token reused: its token family is revoked");
                return Err(unauthenticated(
                    "Refresh token was already used: all refresh tokens of this session are revoked, \
                     exchange the API key again",
                ));
            }
            Rotation::Unknown => return Err(unauthenticated("Invalid refresh token")),
        };
        let record = self.auth.key_by_id(api_key_id).await.map_err(store_error)?;
        let Some(record) = record.filter(ApiKeyRecord::is_active) else {
            store.revoke_refresh_family(next.jti, now).await.map_err(store_error)?;
            return Err(unauthenticated("The API key behind this refresh token has been revoked"));
        };
        let (access, refresh) = self.sign_pair(&record, next.jti, now);
        Ok(Response::new(pb::RefreshTokenResponse {
            access_token: access.token,
            refresh_token: refresh.token,
            token_type: "bearer".to_owned(),
            expires_in: self.expires_in(),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        authorize(&caller, &[SCOPE_WRITE.to_owned()])?;
        let request = request.into_inner();
        validate(&request)?;
        let tenant_id = request.tenant_id.clone().unwrap_or_else(|| caller.tenant_id.clone());
        if tenant_id != caller.tenant_id {
            return Err(forbidden("API keys can only be created in your own tenant"));
        }
        let tier = tier_from_proto(request.tier());
        let scopes = keys::normalize_scopes(request.scopes).map_err(key_error)?;
        check_grant(&caller, tier, &scopes)?;
        let new = NewApiKey { user_id: request.user_id, tenant_id, tier, scopes, name: request.name };
        let created =
            keys::create_key(self.auth.store().as_ref(), self.auth.key_settings(), new, self.auth.clock().now())
                .await
                .map_err(key_error)?;
        let record = &created.record;
        tracing::info!(
            key_id = %record.id, key_prefix = %record.prefix, user_id = %record.user_id, created_by = %caller.user_id,
            "API key created"
        );
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: created.secret.expose().to_owned(),
            api_key: Some(to_proto(record)),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = caller(&request)?;
        authorize(&caller, &[SCOPE_READ.to_owned()])?;
        let request = request.into_inner();
        validate(&request)?;
        let limit = request.limit.and_then(|n| u32::try_from(n).ok()).unwrap_or(DEFAULT_LIMIT);
        let offset = request.offset.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let fingerprint = fingerprint(&caller.tenant_id, request.user_id.as_deref(), request.include_revoked);
        let after = if request.page_token.is_empty() {
            None
        } else {
            let cursor = decode_page_token(&request.page_token, &fingerprint).ok_or_else(|| {
                Status::from(ApiError::validation(vec![FieldViolation {
                    field: "page_token".to_owned(),
                    message: "is not a page token of this query (filters must stay the same while paging)".to_owned(),
                    value: Value::from(request.page_token.clone()),
                }]))
            })?;
            Some(cursor)
        };
        let query = KeyQuery {
            tenant_id: Some(caller.tenant_id.clone()),
            user_id: request.user_id,
            include_revoked: request.include_revoked,
            limit: limit.saturating_add(1),
            offset,
            after,
        };
        let mut page = self.auth.store().list(&query).await.map_err(store_error)?;
        let more = page.items.len() > limit as usize;
        page.items.truncate(limit as usize);
        let next_page_token = match page.items.last() {
            Some(last) if more => encode_page_token(Cursor { created_at: last.created_at, id: last.id }, &fingerprint),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: page.items.iter().map(to_proto).collect(),
            next_page_token,
            total_count: i64::try_from(page.total).unwrap_or(i64::MAX),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        authorize(&caller, &[SCOPE_WRITE.to_owned()])?;
        let request = request.into_inner();
        validate(&request)?;
        let id = Uuid::try_parse(&request.api_key_id).map_err(|_| ApiError::not_found("API key"))?;
        let now = self.auth.clock().now();
        let revoked = self.auth.store().revoke(Some(&caller.tenant_id), id, now).await.map_err(store_error)?;
        let Some(record) = revoked else { return Err(ApiError::not_found("API key").into()) };
        tracing::info!(key_id = %record.id, key_prefix = %record.prefix, revoked_by = %caller.user_id, "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }
}

/// The caller established by the server layer; 401 when anonymous.
fn caller<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<RequestContext>()
        .and_then(|context| context.principal.clone())
        .ok_or_else(|| unauthenticated("Authentication required"))
}

/// Refuses grants beyond the caller's own: scopes it lacks, a higher tier. `*` may grant
/// anything.
fn check_grant(caller: &Principal, tier: Tier, scopes: &[String]) -> Result<(), Status> {
    if caller.has_scope(WILDCARD_SCOPE) {
        return Ok(());
    }
    let lacking: Vec<&str> = scopes.iter().filter(|s| !caller.has_scope(s)).map(String::as_str).collect();
    if !lacking.is_empty() {
        return Err(forbidden(&format!("Cannot grant scopes you do not hold: {}", lacking.join(", "))));
    }
    if tier_rank(tier) > tier_rank(caller.tier) {
        return Err(forbidden("Cannot grant a tier above your own"));
    }
    Ok(())
}

fn tier_rank(tier: Tier) -> u8 {
    match tier {
        Tier::Default => 0,
        Tier::Authenticated => 1,
        Tier::Premium => 2,
    }
}

fn tier_from_proto(tier: ApiTier) -> Tier {
    match tier {
        ApiTier::Unspecified | ApiTier::Default => Tier::Default,
        ApiTier::Authenticated => Tier::Authenticated,
        ApiTier::Premium => Tier::Premium,
    }
}

fn tier_to_proto(tier: Tier) -> ApiTier {
    match tier {
        Tier::Default => ApiTier::Default,
        Tier::Authenticated => ApiTier::Authenticated,
        Tier::Premium => ApiTier::Premium,
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// A key's metadata as the contract's `ApiKey`.
pub fn to_proto(record: &ApiKeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        id: record.id.to_string(),
        prefix: record.prefix.clone(),
        user_id: record.user_id.clone(),
        tenant_id: record.tenant_id.clone(),
        tier: tier_to_proto(record.tier).into(),
        scopes: record.scopes.clone(),
        name: record.name.clone(),
        created_at: Some(timestamp(record.created_at)),
        revoked_at: record.revoked_at.map(timestamp),
        last_used_at: record.last_used_at.map(timestamp),
    }
}

fn unauthenticated(message: &str) -> Status {
    ApiError::new(ErrorCode::Authentication, message).into()
}

fn forbidden(message: &str) -> Status {
    ApiError::new(ErrorCode::Authorization, message).into()
}

/// A validation error with credential values replaced.
fn redact(mut error: ApiError) -> ApiError {
    for violation in &mut error.field_violations {
        if SECRET_FIELDS.contains(&violation.field.as_str()) {
            violation.value = Value::from("[redacted]");
        }
    }
    error
}

fn key_error(error: KeyError) -> Status {
    match error {
        KeyError::InvalidScope(scope) => ApiError::validation(vec![FieldViolation {
            field: "scopes".to_owned(),
            message: "must be `*` or 1 to 100 characters from a-z 0-9 : _ . -".to_owned(),
            value: Value::from(scope),
        }])
        .into(),
        KeyError::Invalid { field, reason } => ApiError::validation(vec![FieldViolation {
            field: field.to_owned(),
            message: reason.to_owned(),
            value: Value::Null,
        }])
        .into(),
        KeyError::Store(error) => store_error(error).into(),
        KeyError::Random(source) => {
            tracing::error!(error = %source, "cannot generate an API key");
            ApiError::internal().into()
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PageToken {
    /// `created_at` of the last key, microseconds since the epoch.
    k: i64,
    /// Its id.
    i: Uuid,
    /// Fingerprint of the query.
    q: String,
}

/// Ties a page token to the query (tenant, user filter, revoked or not) it came from.
fn fingerprint(tenant_id: &str, user_id: Option<&str>, include_revoked: bool) -> String {
    let mut hasher = Sha256::new();
    for part in [tenant_id, user_id.unwrap_or("\u{0}all"), if include_revoked { "all" } else { "active" }] {
        hasher.update(part.as_bytes());
        hasher.update([0xff]);
    }
    URL_SAFE_NO_PAD.encode(&hasher.finalize()[..12])
}

fn encode_page_token(cursor: Cursor, fingerprint: &str) -> String {
    let token = PageToken { k: cursor.created_at.timestamp_micros(), i: cursor.id, q: fingerprint.to_owned() };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode_page_token(token: &str, fingerprint: &str) -> Option<Cursor> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let token: PageToken = serde_json::from_slice(&bytes).ok()?;
    if token.q != fingerprint {
        return None;
    }
    Some(Cursor { created_at: DateTime::from_timestamp_micros(token.k)?, id: token.i })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(scopes: &[&str], tier: Tier) -> Principal {
        Principal {
            user_id: "admin".into(),
            tenant_id: "acme".into(),
            tier,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn callers_cannot_grant_more_than_they_hold() {
        let admin = principal(&[SCOPE_WRITE, "sessions:read"], Tier::Authenticated);
        assert!(check_grant(&admin, Tier::Default, &["sessions:read".into()]).is_ok());
        assert!(check_grant(&admin, Tier::Authenticated, &[SCOPE_WRITE.into()]).is_ok());
        assert_eq!(
            check_grant(&admin, Tier::Default, &["*".into()]).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            check_grant(&admin, Tier::Default, &["agents:execute".into()]).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(check_grant(&admin, Tier::Premium, &[]).unwrap_err().code(), tonic::Code::PermissionDenied);
        let root = principal(&["*"], Tier::Default);
        assert!(check_grant(&root, Tier::Premium, &["*".into()]).is_ok());
    }

    #[test]
    fn page_tokens_only_continue_their_own_query() {
        let cursor =
            Cursor { created_at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap(), id: Uuid::now_v7() };
        let query = fingerprint("acme", Some("u1"), false);
        let token = encode_page_token(cursor, &query);
        assert_eq!(decode_page_token(&token, &query), Some(cursor));
        assert_eq!(decode_page_token(&token, &fingerprint("other", Some("u1"), false)), None);
        assert_eq!(decode_page_token(&token, &fingerprint("acme", None, false)), None);
        assert_eq!(decode_page_token(&token, &fingerprint("acme", Some("u1"), true)), None);
        assert_eq!(decode_page_token("garbage!", &query), None);
    }

    #[test]
    fn validation_errors_never_echo_credentials() {
        let error = validate(&pb::IssueTokenRequest { api_key: "sk-short-secret".into() }).unwrap_err();
        let redacted = redact(error);
        assert_eq!(redacted.field_violations[0].field, "api_key");
        assert!(!format!("{redacted:?}").contains("short-secret"));
    }

    #[test]
    fn tiers_map_both_ways() {
        for tier in [Tier::Default, Tier::Authenticated, Tier::Premium] {
            assert_eq!(tier_from_proto(tier_to_proto(tier)), tier);
        }
        assert_eq!(tier_from_proto(ApiTier::Unspecified), Tier::Default);
    }
}
