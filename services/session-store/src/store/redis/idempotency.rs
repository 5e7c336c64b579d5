//! Idempotency keys in Redis, beside the sessions (see [`crate::idempotency`]).
//!
//! One hash per (tenant, owner, key) at `idempotency:{tenant}:{owner}:{key}` (each part
//! escaped) holds the request's `fingerprint` and, once completed, its `response`. A claim
//! is a Lua script (check and set in one step) that writes the fingerprint with the lease
//! as the key's TTL, so an abandoned claim lapses by itself; completing stores the response
//! and sets the retention as the new TTL.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::Value;

use super::RedisStore;
use super::client::{Retry, internal};
use crate::idempotency::{Claim, IdempotencyStore};
use crate::store::{Owner, StoreError};

/// A duration as whole milliseconds (at least 1: Redis refuses a zero TTL).
pub(super) fn millis(duration: Duration) -> String {
    duration.as_millis().clamp(1, i64::MAX as u128).to_string()
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn claim(
        &self,
        owner: &Owner,
        key: &str,
        fingerprint: &[u8; 32],
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let args = vec![Value::from(key), Value::from(&fingerprint[..]), Value::from(millis(lease))];
        // A repeated claim after a lost reply would find its own claim and answer
        // "in progress", so claims are not retried.
        let mut reply = self.client.script(&self.client.scripts().claim, owner, args, Retry::Never).await?;
        match reply.status.as_str() {
            "acquired" => Ok(Claim::Acquired),
            "replay" => Ok(Claim::Replay(reply.bytes().map_err(internal)?)),
            "mismatch" => Ok(Claim::Mismatch),
            "in_progress" => Ok(Claim::InProgress),
            _ => Err(internal(reply.unexpected())),
        }
    }

    async fn complete(&self, owner: &Owner, key: &str, response: &[u8], retention: Duration) -> Result<(), StoreError> {
        let args = vec![Value::from(key), Value::from(response), Value::from(millis(retention))];
        let reply = self.client.script(&self.client.scripts().complete, owner, args, Retry::Transient).await?;
        if reply.status != "ok" {
            return Err(internal(reply.unexpected()));
        }
        Ok(())
    }

    async fn release(&self, owner: &Owner, key: &str) -> Result<(), StoreError> {
        let args = vec![Value::from(key)];
        let reply = self.client.script(&self.client.scripts().release, owner, args, Retry::Transient).await?;
        if reply.status != "ok" {
            return Err(internal(reply.unexpected()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_positive_milliseconds() {
        assert_eq!(millis(Duration::from_secs(3600)), "3600000");
        assert_eq!(millis(Duration::from_micros(10)), "1");
        assert_eq!(millis(Duration::MAX), i64::MAX.to_string());
    }
}
