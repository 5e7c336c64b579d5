//! Idempotent creates: the same `idempotency-key` and body within the retention window
//! returns the first result; the same key with another body is a conflict.
//!
//! The service fingerprints each create request (method + encoded body, SHA-256) and asks
//! the backend to [`claim`](IdempotencyStore::claim) the key before doing the work. A claim
//! is a lease: if the first request dies before completing, the key can be claimed again
//! once the lease runs out, so a crash never locks a client out of retrying.
//!
//! A message append first tries the key's first use in the append's own write
//! ([`SessionStore::create_message_first_use`](crate::store::SessionStore::create_message_first_use)):
//! where the backend can do that (PostgreSQL), a new key costs no claim and no completion.
//! A key with a row, or a backend that cannot, takes the claim path.

use std::time::Duration;

use async_trait::async_trait;

use crate::store::{Owner, StoreError};

/// How long a completed key answers with its first result (the 24 h).
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long an unfinished claim blocks others before it may be taken over.
pub const LEASE: Duration = Duration::from_secs(60);

/// Longest accepted key.
pub const MAX_KEY_LENGTH: usize = 255;

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new (or its lease ran out): do the work, then `complete`.
    Acquired,
    /// Done before with the same body: answer with this encoded response.
    Replay(Vec<u8>),
    /// Used before with another body: 409.
    Mismatch,
    /// Another request with this key and body is still running: 409, retry later.
    InProgress,
}

/// Backend storage of idempotency keys, scoped per owner.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint`, for `lease` if acquired.
    async fn claim(
        &self,
        owner: &Owner,
        key: &str,
        fingerprint: &[u8; 32],
        lease: Duration,
    ) -> Result<Claim, StoreError>;

    /// Stores the encoded response of a claimed key, answered for `retention`.
    async fn complete(&self, owner: &Owner, key: &str, response: &[u8], retention: Duration) -> Result<(), StoreError>;

    /// Drops an unfinished claim after the request failed, so a retry can proceed at once.
    async fn release(&self, owner: &Owner, key: &str) -> Result<(), StoreError>;
}
