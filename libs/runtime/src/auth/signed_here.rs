//! Principal tokens this process signed, so that a verifier in the same process
//! (`agentmesh up` runs every service in one) need not check a signature it knows is good.
//!
//! An Ed25519 verification is the largest fixed cost of a first call with a new token, and
//! run principals are new for every run. The ledger records, for each token a minter of
//! this process signed, the public half of the key that signed it. A verifier skips the
//! signature check only when the very same token (by SHA-256) was signed here with exactly
//! the key it trusts for the token's issuer and key id, which is when the check would
//! pass anyway. Every other check (type, issuer, audience, expiry, lifetime) runs as usual,
//! and a token signed elsewhere, or altered by one byte, is verified in full. The ledger
//! is bounded like the verified-token caches: when it is full it starts over, and the
//! tokens it forgot are simply verified.

use std::sync::LazyLock;

use ed25519_dalek::VerifyingKey;

use super::cache::{DEFAULT_CAPACITY, VerifiedCache};

/// Token digest → public key of the key that signed it, until the token expires.
static LEDGER: LazyLock<VerifiedCache<[u8; 32]>> = LazyLock::new(|| VerifiedCache::new(DEFAULT_CAPACITY));

/// Records that `token`, expiring at `expires`, was signed here with `signer`'s private half.
pub(super) fn record(token: &str, signer: &VerifyingKey, expires: u64) {
    LEDGER.insert(VerifiedCache::<()>::key(token), signer.to_bytes(), expires);
}

/// Whether the token whose digest is `digest` was signed here with the private half of
/// `key`.
pub(super) fn signed_with(digest: &[u8; 32], key: &VerifyingKey) -> bool {
    LEDGER.get(digest).is_some_and(|signer| signer == key.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ServiceKey;
    use crate::auth::claims::unix_now;

    #[test]
    fn a_token_counts_as_signed_here_only_with_the_key_that_signed_it() {
        let signer = ServiceKey::from_seed(&[7; 32]).verifying_key();
        let other = ServiceKey::from_seed(&[8; 32]).verifying_key();
        let token = format!("header.payload.{}", uuid::Uuid::new_v4());
        let digest = VerifiedCache::<()>::key(&token);
        assert!(!signed_with(&digest, &signer), "not recorded yet");
        record(&token, &signer, unix_now() + 60);
        assert!(signed_with(&digest, &signer));
        assert!(!signed_with(&digest, &other), "another key's trust is not satisfied");
        assert!(!signed_with(&VerifiedCache::<()>::key(&format!("{token}x")), &signer), "another token is not");
    }

    #[test]
    fn an_expired_token_is_not_vouched_for() {
        let signer = ServiceKey::from_seed(&[9; 32]).verifying_key();
        let token = format!("header.payload.{}", uuid::Uuid::new_v4());
        record(&token, &signer, unix_now().saturating_sub(1));
        assert!(!signed_with(&VerifiedCache::<()>::key(&token), &signer));
    }
}
