//! Idempotency keys on PostgreSQL (`idempotency_keys`), with the semantics of
//! [`crate::idempotency`].
//!
//! A claim is one atomic upsert. On conflict it always "updates" the row, but only
//! replaces it when the existing row has expired (an unfinished claim whose lease ran out,
//! or a completed key past its retention); otherwise it writes the row back unchanged and
//! returns it, so one statement both decides and reports what it found. Whether this call
//! took the key is told by `claim_token`: a token generated once per call, so a retried
//! claim whose first attempt committed still recognises the key as its own. All times are
//! the database's, so every replica judges leases by the same clock.

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::PostgresStore;
use super::error::{DbError, classify};
use crate::idempotency::{Claim, IdempotencyStore};
use crate::store::{Owner, StoreError};

/// `$1` tenant, `$2` owner, `$3` key, `$4` fingerprint, `$5` claim token, `$6` lease (µs).
const CLAIM: &str = "INSERT INTO idempotency_keys AS k \
     (tenant_id, owner_id, key, fingerprint, response, claim_token, lease_expires_at, expires_at) \
     VALUES ($1, $2, $3, $4, NULL, $5, now() + $6 * interval '1 microsecond', now() + $6 * interval '1 microsecond') \
     ON CONFLICT (tenant_id, owner_id, key) DO UPDATE SET \
     fingerprint = CASE WHEN k.expires_at <= now() THEN EXCLUDED.fingerprint ELSE k.fingerprint END, \
     response = CASE WHEN k.expires_at <= now() THEN NULL ELSE k.response END, \
     claim_token = CASE WHEN k.expires_at <= now() THEN EXCLUDED.claim_token ELSE k.claim_token END, \
     lease_expires_at = CASE WHEN k.expires_at <= now() THEN EXCLUDED.lease_expires_at ELSE k.lease_expires_at END, \
     created_at = CASE WHEN k.expires_at <= now() THEN now() ELSE k.created_at END, \
     expires_at = CASE WHEN k.expires_at <= now() THEN EXCLUDED.expires_at ELSE k.expires_at END \
     RETURNING claim_token = $5 AS acquired, fingerprint, response";

/// `$4` response, `$5` retention (µs).
const COMPLETE: &str = "UPDATE idempotency_keys SET response = $4, expires_at = now() + $5 * interval '1 microsecond' \
     WHERE tenant_id = $1 AND owner_id = $2 AND key = $3";

/// Only an unfinished claim is dropped; a completed response stays until it expires.
const RELEASE: &str =
    "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND owner_id = $2 AND key = $3 AND response IS NULL";

/// Deletes up to `$1` expired keys (run by the relay's maintenance).
pub(super) const PURGE_EXPIRED: &str = "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(\
     SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT $1))";

/// A duration as the µs count the statements multiply `interval '1 microsecond'` by.
pub(super) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[async_trait]
impl IdempotencyStore for PostgresStore {
    async fn claim(
        &self,
        owner: &Owner,
        key: &str,
        fingerprint: &[u8; 32],
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let token = Uuid::new_v4();
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            let row = sqlx::query(CLAIM)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .bind(key)
                .bind(&fingerprint[..])
                .bind(token)
                .bind(micros(lease))
                .fetch_one(&mut *conn)
                .await
                .map_err(classify)?;
            let get = |name| sqlx::Row::try_get::<Option<Vec<u8>>, _>(&row, name).map_err(classify);
            let acquired: bool = sqlx::Row::try_get(&row, "acquired").map_err(classify)?;
            if acquired {
                return Ok(Claim::Acquired);
            }
            let same_body = get("fingerprint")?.as_deref() == Some(&fingerprint[..]);
            Ok(match (same_body, get("response")?) {
                (false, _) => Claim::Mismatch,
                (true, Some(response)) => Claim::Replay(response),
                (true, None) => Claim::InProgress,
            })
        })
        .await
    }

    async fn complete(&self, owner: &Owner, key: &str, response: &[u8], retention: Duration) -> Result<(), StoreError> {
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            sqlx::query(COMPLETE)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .bind(key)
                .bind(response)
                .bind(micros(retention))
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
            Ok::<_, DbError>(())
        })
        .await
    }

    async fn release(&self, owner: &Owner, key: &str) -> Result<(), StoreError> {
        self.run(|| async {
            let mut conn = self.inner.pool.acquire().await.map_err(classify)?;
            sqlx::query(RELEASE)
                .bind(&owner.tenant_id)
                .bind(&owner.user_id)
                .bind(key)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
            Ok::<_, DbError>(())
        })
        .await
    }
}
