//! [`ApiKeyStore`] in process memory: for development and tests. Everything is lost when
//! the process ends, so the `agentmesh keys` commands refuse to use it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ApiKeyStore, Cursor, KeyPage, KeyQuery, RefreshRecord, Rotation, StoreError, TOUCH_INTERVAL};
use crate::auth::keys::{ApiKeyRecord, KeyHash};

/// Keys and refresh tokens in maps behind one mutex (never held across an `await`).
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<Uuid, ApiKeyRecord>,
    by_hash: HashMap<KeyHash, Uuid>,
    refresh: HashMap<Uuid, Refresh>,
}

#[derive(Debug, Clone, Copy)]
struct Refresh {
    record: RefreshRecord,
    used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn duplicate() -> StoreError {
    StoreError::Internal("an API key with this id or hash already exists".into())
}

/// Whether `record` comes after `cursor` in newest-first order.
fn after(record: &ApiKeyRecord, cursor: &Cursor) -> bool {
    (record.created_at, record.id) < (cursor.created_at, cursor.id)
}

#[async_trait]
impl ApiKeyStore for MemoryKeyStore {
    async fn insert(&self, record: &ApiKeyRecord, hash: &KeyHash) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.keys.contains_key(&record.id) || state.by_hash.contains_key(hash) {
            return Err(duplicate());
        }
        state.by_hash.insert(*hash, record.id);
        state.keys.insert(record.id, record.clone());
        Ok(())
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        let state = self.state();
        Ok(state.by_hash.get(hash).and_then(|id| state.keys.get(id)).cloned())
    }

    async fn get(&self, id: Uuid) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.state().keys.get(&id).cloned())
    }

    async fn find_by_prefix(&self, prefix: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut found: Vec<_> = self.state().keys.values().filter(|k| k.prefix.starts_with(prefix)).cloned().collect();
        found.sort_by_key(|k| std::cmp::Reverse((k.created_at, k.id)));
        Ok(found)
    }

    async fn list(&self, query: &KeyQuery) -> Result<KeyPage, StoreError> {
        let state = self.state();
        let mut matching: Vec<&ApiKeyRecord> = state
            .keys
            .values()
            .filter(|k| query.tenant_id.as_ref().is_none_or(|t| *t == k.tenant_id))
            .filter(|k| query.user_id.as_ref().is_none_or(|u| *u == k.user_id))
            .filter(|k| query.include_revoked || k.is_active())
            .collect();
        matching.sort_by_key(|k| std::cmp::Reverse((k.created_at, k.id)));
        let total = matching.len() as u64;
        let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
        let items = match &query.after {
            Some(cursor) => matching.into_iter().filter(|k| after(k, cursor)).take(limit).cloned().collect(),
            None => {
                let offset = usize::try_from(query.offset).unwrap_or(usize::MAX);
                matching.into_iter().skip(offset).take(limit).cloned().collect()
            }
        };
        Ok(KeyPage { items, total })
    }

    async fn revoke(
        &self,
        tenant_id: Option<&str>,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut state = self.state();
        let Some(key) = state.keys.get_mut(&id).filter(|k| tenant_id.is_none_or(|t| t == k.tenant_id)) else {
            return Ok(None);
        };
        key.revoked_at.get_or_insert(at);
        Ok(Some(key.clone()))
    }

    async fn touch(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut state = self.state();
        let Some(key) = state.keys.get_mut(&id) else { return Ok(false) };
        let interval = chrono::Duration::from_std(TOUCH_INTERVAL).unwrap_or(chrono::Duration::MAX);
        let due = key.last_used_at.is_none_or(|last| last.checked_add_signed(interval).is_some_and(|next| next <= at));
        if due {
            key.last_used_at = Some(at);
        }
        Ok(due)
    }

    async fn insert_refresh(&self, token: &RefreshRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.refresh.contains_key(&token.jti) {
            return Err(StoreError::Internal("a refresh token with this id already exists".into()));
        }
        state.refresh.insert(token.jti, Refresh { record: *token, used_at: None, revoked_at: None });
        Ok(())
    }

    async fn rotate_refresh(&self, jti: Uuid, next: &RefreshRecord, at: DateTime<Utc>) -> Result<Rotation, StoreError> {
        let mut state = self.state();
        let Some(current) = state.refresh.get(&jti).copied() else { return Ok(Rotation::Unknown) };
        if current.record.expires_at <= at {
            return Ok(Rotation::Unknown);
        }
        if current.used_at.is_some() || current.revoked_at.is_some() {
            revoke_family(&mut state, current.record.family_id, at);
            return Ok(Rotation::Reused);
        }
        if let Some(entry) = state.refresh.get_mut(&jti) {
            entry.used_at = Some(at);
        }
        let next =
            RefreshRecord { family_id: current.record.family_id, api_key_id: current.record.api_key_id, ..*next };
        state.refresh.insert(next.jti, Refresh { record: next, used_at: None, revoked_at: None });
        Ok(Rotation::Rotated { api_key_id: current.record.api_key_id })
    }

    async fn revoke_refresh_family(&self, jti: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut state = self.state();
        if let Some(family) = state.refresh.get(&jti).map(|r| r.record.family_id) {
            revoke_family(&mut state, family, at);
        }
        Ok(())
    }

    async fn purge_refresh(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut state = self.state();
        let count = state.refresh.len();
        state.refresh.retain(|_, r| r.record.expires_at >= before);
        Ok((count - state.refresh.len()) as u64)
    }
}

fn revoke_family(state: &mut State, family_id: Uuid, at: DateTime<Utc>) {
    for token in state.refresh.values_mut().filter(|r| r.record.family_id == family_id) {
        token.revoked_at.get_or_insert(at);
    }
}
