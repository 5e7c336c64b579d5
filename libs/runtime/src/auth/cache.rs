//! A bounded cache of verified tokens, so a signature is checked once per token rather
//! than once per request.
//!
//! Keys are the SHA-256 of the header value (collision-resistant, so a different value
//! can never hit another's entry; fixed size however long the token). An entry lives until
//! the token's own expiry; when the cache is full, expired entries go first, and if none
//! has expired the cache starts over (a burst of distinct tokens then costs one signature
//! check each, as without a cache).

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::claims::unix_now;

/// Entries kept per cache by default: far more than the distinct callers a service sees
/// in one principal lifetime, and a few MiB at most.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// See the module documentation.
#[derive(Debug)]
pub struct VerifiedCache<V> {
    entries: Mutex<HashMap<[u8; 32], (V, u64)>>,
    capacity: usize,
}

impl<V: Clone> VerifiedCache<V> {
    /// An empty cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// The cache key of a header value.
    pub fn key(value: &str) -> [u8; 32] {
        Sha256::digest(value.as_bytes()).into()
    }

    /// The value verified for `key`, unless it has expired since.
    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(key).filter(|(_, expires)| *expires >= unix_now()).map(|(value, _)| value.clone())
    }

    /// Remembers `value` for `key` until `expires` (seconds since the epoch).
    pub fn insert(&self, key: [u8; 32], value: V, expires: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let now = unix_now();
            entries.retain(|_, (_, expires)| *expires >= now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, expires));
    }

    /// Entries held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_until_they_expire() {
        let cache = VerifiedCache::new(4);
        let key = VerifiedCache::<u8>::key("token");
        assert_eq!(cache.get(&key), None);
        cache.insert(key, 1u8, unix_now() + 60);
        assert_eq!(cache.get(&key), Some(1));
        assert_eq!(cache.get(&VerifiedCache::<u8>::key("token2")), None);
        cache.insert(key, 1u8, unix_now() - 1);
        assert_eq!(cache.get(&key), None);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_and_never_grows_past_capacity() {
        let cache = VerifiedCache::new(3);
        let key = |i: u8| VerifiedCache::<u8>::key(&i.to_string());
        cache.insert(key(1), 1, unix_now() - 1);
        cache.insert(key(2), 2, unix_now() + 60);
        cache.insert(key(3), 3, unix_now() + 60);
        cache.insert(key(4), 4, unix_now() + 60);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&key(2)), Some(2));
        assert_eq!(cache.get(&key(4)), Some(4));
        cache.insert(key(5), 5, unix_now() + 60);
        assert!(cache.len() <= 3);
        assert_eq!(cache.get(&key(5)), Some(5));
    }
}
