//! In-process storage: the default backend of `agentmesh up`, and the reference the other
//! backends are compared with by the conformance suite.
//!
//! One lock guards all state, so every operation is trivially atomic (and `message_count`
//! exact); the lock is never held across an `.await`. Data is lost on restart, which is
//! why production refuses this backend.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    Cursor, Direction, MessagePatch, MessageQuery, MessageRecord, NewMessage, NewSession, Owner, Page, SessionPatch,
    SessionQuery, SessionRecord, SessionSort, SessionStore, StoreError, contains_ignoring_case, now,
};
use crate::events::{self, EventSink};
use crate::idempotency::{Claim, IdempotencyStore};

/// The in-process backend. Cheap to share behind an `Arc`.
pub struct MemoryStore {
    state: Mutex<State>,
    sink: Arc<dyn EventSink>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<Uuid, SessionRecord>,
    /// Each owner's session ids, so listing does not scan other owners' sessions.
    by_owner: HashMap<Owner, HashSet<Uuid>>,
    messages: HashMap<Uuid, MessageRecord>,
    /// Each session's messages in conversation order.
    by_session: HashMap<Uuid, BTreeSet<(DateTime<Utc>, Uuid)>>,
    /// Replies of each message, to clear their parent when it is deleted.
    replies: HashMap<Uuid, HashSet<Uuid>>,
    idempotency: HashMap<(Owner, String), IdempotencyEntry>,
    /// When expired idempotency entries were last dropped.
    idempotency_swept: Option<Instant>,
}

/// How often expired idempotency entries are dropped. Between sweeps an expired entry is
/// only memory: every lookup checks the expiry itself.
const IDEMPOTENCY_SWEEP: Duration = Duration::from_secs(1);

struct IdempotencyEntry {
    fingerprint: [u8; 32],
    response: Option<Vec<u8>>,
    /// Until when a claim in progress, or a completed response, holds.
    until: Instant,
}

impl MemoryStore {
    /// An empty store whose events go to `sink`.
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Self { state: Mutex::new(State::default()), sink }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write (every write
        // checks first, then mutates without failing), so the state is still consistent.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    fn owned_session(&self, owner: &Owner, id: Uuid) -> Result<&SessionRecord, StoreError> {
        self.sessions.get(&id).filter(|s| &s.owner == owner).ok_or(StoreError::NotFound)
    }

    fn owned_message(&self, owner: &Owner, id: Uuid) -> Result<&MessageRecord, StoreError> {
        let message = self.messages.get(&id).ok_or(StoreError::NotFound)?;
        self.owned_session(owner, message.session_id)?;
        Ok(message)
    }

    fn remove_message(&mut self, id: Uuid) -> Option<MessageRecord> {
        let message = self.messages.remove(&id)?;
        if let Some(ordered) = self.by_session.get_mut(&message.session_id) {
            ordered.remove(&(message.created_at, id));
        }
        if let Some(parent) = message.parent_message_id
            && let Some(siblings) = self.replies.get_mut(&parent)
        {
            siblings.remove(&id);
        }
        for reply in self.replies.remove(&id).unwrap_or_default() {
            if let Some(reply) = self.messages.get_mut(&reply) {
                reply.parent_message_id = None;
            }
        }
        Some(message)
    }
}

/// The sort key of `session` for `sort`.
fn session_key(session: &SessionRecord, sort: SessionSort) -> DateTime<Utc> {
    match sort {
        SessionSort::CreatedAt => session.created_at,
        SessionSort::UpdatedAt => session.updated_at,
        SessionSort::LastActivity => session.last_activity,
    }
}

/// Applies offset or cursor and limit to items already in listing order.
fn page<T>(
    items: Vec<T>,
    offset: u64,
    limit: u32,
    after: Option<Cursor>,
    position: impl Fn(&T) -> Cursor,
    past: impl Fn(Cursor, Cursor) -> bool,
) -> Page<T> {
    let total = items.len() as u64;
    let start = match after {
        Some(cursor) => items.iter().position(|item| past(position(item), cursor)).unwrap_or(items.len()),
        None => usize::try_from(offset).unwrap_or(usize::MAX).min(items.len()),
    };
    let limit = limit as usize;
    let has_more = items.len().saturating_sub(start) > limit;
    let items = items.into_iter().skip(start).take(limit).collect();
    Page { items, total, has_more }
}

/// A page of a session's messages with no filter: walked from the right end of the
/// session's ordered positions (or from the cursor), so a listing costs its page, not the
/// session's length; the total is the number of positions.
fn unfiltered_page(
    messages: &HashMap<Uuid, MessageRecord>,
    ordered: Option<&BTreeSet<(DateTime<Utc>, Uuid)>>,
    query: &MessageQuery,
) -> Page<MessageRecord> {
    let Some(ordered) = ordered else { return Page { items: Vec::new(), total: 0, has_more: false } };
    let offset = usize::try_from(query.offset).unwrap_or(usize::MAX);
    let mut positions: Box<dyn Iterator<Item = &(DateTime<Utc>, Uuid)>> = match (query.direction, query.after) {
        (Direction::Asc, Some(after)) => {
            Box::new(ordered.range((Bound::Excluded((after.key, after.id)), Bound::Unbounded)))
        }
        (Direction::Desc, Some(after)) => Box::new(ordered.range(..(after.key, after.id)).rev()),
        (Direction::Asc, None) => Box::new(ordered.iter().skip(offset)),
        (Direction::Desc, None) => Box::new(ordered.iter().rev().skip(offset)),
    };
    let items: Vec<MessageRecord> =
        positions.by_ref().take(query.limit as usize).filter_map(|(_, id)| messages.get(id).cloned()).collect();
    Page { items, total: ordered.len() as u64, has_more: positions.next().is_some() }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create_sessions(&self, owner: &Owner, new: Vec<NewSession>) -> Result<Vec<SessionRecord>, StoreError> {
        let created: Vec<SessionRecord> = {
            let mut state = self.state();
            new.into_iter()
                .map(|session| {
                    let at = now();
                    let record = SessionRecord {
                        id: Uuid::now_v7(),
                        owner: owner.clone(),
                        user_id: session.user_id,
                        title: session.title,
                        metadata: session.metadata,
                        message_count: 0,
                        last_activity: at,
                        created_at: at,
                        updated_at: at,
                    };
                    state.by_owner.entry(owner.clone()).or_default().insert(record.id);
                    state.sessions.insert(record.id, record.clone());
                    record
                })
                .collect()
        };
        self.sink.emit(created.iter().map(events::session_created).collect()).await;
        Ok(created)
    }

    async fn get_session(&self, owner: &Owner, id: Uuid) -> Result<SessionRecord, StoreError> {
        self.state().owned_session(owner, id).cloned()
    }

    async fn list_sessions(&self, owner: &Owner, query: &SessionQuery) -> Result<Page<SessionRecord>, StoreError> {
        let state = self.state();
        let ids = state.by_owner.get(owner).cloned().unwrap_or_default();
        let mut sessions: Vec<SessionRecord> = ids
            .iter()
            .filter_map(|id| state.sessions.get(id))
            .filter(|s| query.user_id.is_none() || s.user_id == query.user_id)
            .cloned()
            .collect();
        let sort = query.sort;
        sessions.sort_by_key(|s| (session_key(s, sort), s.id));
        if query.direction == Direction::Desc {
            sessions.reverse();
        }
        let direction = query.direction;
        Ok(page(
            sessions,
            query.offset,
            query.limit,
            query.after,
            |s| Cursor { key: session_key(s, sort), id: s.id },
            |item, cursor| match direction {
                Direction::Asc => (item.key, item.id) > (cursor.key, cursor.id),
                Direction::Desc => (item.key, item.id) < (cursor.key, cursor.id),
            },
        ))
    }

    async fn update_session(&self, owner: &Owner, id: Uuid, patch: SessionPatch) -> Result<SessionRecord, StoreError> {
        let updated = {
            let mut state = self.state();
            state.owned_session(owner, id)?;
            let session = state.sessions.get_mut(&id).ok_or(StoreError::NotFound)?;
            if let Some(user_id) = patch.user_id {
                session.user_id = Some(user_id);
            }
            if let Some(title) = patch.title {
                session.title = Some(title);
            }
            if let Some(metadata) = patch.metadata {
                session.metadata = metadata;
            }
            session.updated_at = now();
            session.clone()
        };
        self.sink.emit(vec![events::session_updated(&updated)]).await;
        Ok(updated)
    }

    async fn delete_sessions(&self, owner: &Owner, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let deleted: Vec<Uuid> = {
            let mut state = self.state();
            let owned: Vec<Uuid> = ids.iter().copied().filter(|id| state.owned_session(owner, *id).is_ok()).collect();
            for id in &owned {
                state.sessions.remove(id);
                if let Some(set) = state.by_owner.get_mut(owner) {
                    set.remove(id);
                }
                for (_, message) in state.by_session.remove(id).unwrap_or_default() {
                    state.messages.remove(&message);
                    state.replies.remove(&message);
                }
            }
            owned
        };
        self.sink.emit(deleted.iter().map(|id| events::session_deleted(owner, *id)).collect()).await;
        Ok(deleted)
    }

    async fn create_message(
        &self,
        owner: &Owner,
        session_id: Uuid,
        new: NewMessage,
    ) -> Result<MessageRecord, StoreError> {
        let message = {
            let mut state = self.state();
            state.owned_session(owner, session_id)?;
            if let Some(parent) = new.parent_message_id {
                let in_session = state.messages.get(&parent).is_some_and(|p| p.session_id == session_id);
                if !in_session {
                    return Err(StoreError::InvalidParent);
                }
            }
            let at = now();
            let message = MessageRecord {
                id: Uuid::now_v7(),
                session_id,
                role: new.role,
                content: new.content,
                metadata: new.metadata,
                tool_calls: new.tool_calls,
                tool_call_id: new.tool_call_id,
                parent_message_id: new.parent_message_id,
                created_at: at,
                updated_at: at,
            };
            if let Some(parent) = message.parent_message_id {
                state.replies.entry(parent).or_default().insert(message.id);
            }
            state.by_session.entry(session_id).or_default().insert((at, message.id));
            state.messages.insert(message.id, message.clone());
            let session = state.sessions.get_mut(&session_id).ok_or(StoreError::NotFound)?;
            session.message_count += 1;
            session.last_activity = at;
            message
        };
        self.sink.emit(vec![events::message_created(owner, &message)]).await;
        Ok(message)
    }

    async fn get_message(&self, owner: &Owner, id: Uuid) -> Result<MessageRecord, StoreError> {
        self.state().owned_message(owner, id).cloned()
    }

    async fn list_messages(
        &self,
        owner: &Owner,
        session_id: Uuid,
        query: &MessageQuery,
    ) -> Result<Page<MessageRecord>, StoreError> {
        let state = self.state();
        state.owned_session(owner, session_id)?;
        let ordered = state.by_session.get(&session_id);
        if query.role.is_none() && query.search.is_none() {
            return Ok(unfiltered_page(&state.messages, ordered, query));
        }
        // Paged before cloning: a listing clones the messages it returns, not the session.
        let mut messages: Vec<&MessageRecord> = ordered
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| state.messages.get(id))
            .filter(|m| query.role.is_none_or(|role| m.role == role))
            .filter(|m| query.search.as_deref().is_none_or(|needle| contains_ignoring_case(&m.content, needle)))
            .collect();
        let direction = query.direction;
        if direction == Direction::Desc {
            messages.reverse();
        }
        let found = page(
            messages,
            query.offset,
            query.limit,
            query.after,
            |m| Cursor { key: m.created_at, id: m.id },
            |item, cursor| match direction {
                Direction::Asc => (item.key, item.id) > (cursor.key, cursor.id),
                Direction::Desc => (item.key, item.id) < (cursor.key, cursor.id),
            },
        );
        Ok(Page { items: found.items.into_iter().cloned().collect(), total: found.total, has_more: found.has_more })
    }

    async fn update_message(&self, owner: &Owner, id: Uuid, patch: MessagePatch) -> Result<MessageRecord, StoreError> {
        let updated = {
            let mut state = self.state();
            let current = state.owned_message(owner, id)?;
            if patch.expect.is_some_and(|shape| shape != current.shape()) {
                return Err(StoreError::Conflict);
            }
            let (session_id, position) = (current.session_id, (current.created_at, current.id));
            if let Some(Some(parent)) = patch.parent_message_id {
                let earlier = state
                    .messages
                    .get(&parent)
                    .is_some_and(|p| p.session_id == session_id && (p.created_at, p.id) < position);
                if !earlier {
                    return Err(StoreError::InvalidParent);
                }
            }
            if let Some(parent) = patch.parent_message_id {
                let old = state.messages.get(&id).and_then(|m| m.parent_message_id);
                if let Some(old) = old
                    && let Some(replies) = state.replies.get_mut(&old)
                {
                    replies.remove(&id);
                }
                if let Some(new) = parent {
                    state.replies.entry(new).or_default().insert(id);
                }
            }
            let message = state.messages.get_mut(&id).ok_or(StoreError::NotFound)?;
            if let Some(parent) = patch.parent_message_id {
                message.parent_message_id = parent;
            }
            if let Some(tool_calls) = patch.tool_calls {
                message.tool_calls = tool_calls;
            }
            if let Some(tool_call_id) = patch.tool_call_id {
                message.tool_call_id = tool_call_id;
            }
            if let Some(content) = patch.content {
                message.content = content;
            }
            if let Some(role) = patch.role {
                message.role = role;
            }
            if let Some(metadata) = patch.metadata {
                message.metadata = metadata;
            }
            message.updated_at = now();
            message.clone()
        };
        self.sink.emit(vec![events::message_updated(owner, &updated)]).await;
        Ok(updated)
    }

    async fn delete_message(&self, owner: &Owner, id: Uuid) -> Result<MessageRecord, StoreError> {
        let deleted = {
            let mut state = self.state();
            state.owned_message(owner, id)?;
            let message = state.remove_message(id).ok_or(StoreError::NotFound)?;
            if let Some(session) = state.sessions.get_mut(&message.session_id) {
                session.message_count -= 1;
            }
            message
        };
        self.sink.emit(vec![events::message_deleted(owner, &deleted)]).await;
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        owner: &Owner,
        key: &str,
        fingerprint: &[u8; 32],
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut state = self.state();
        let now = Instant::now();
        let slot = (owner.clone(), key.to_owned());
        if let Some(entry) = state.idempotency.get(&slot).filter(|e| e.until > now) {
            return Ok(match (&entry.fingerprint == fingerprint, &entry.response) {
                (false, _) => Claim::Mismatch,
                (true, Some(response)) => Claim::Replay(response.clone()),
                (true, None) => Claim::InProgress,
            });
        }
        if state.idempotency_swept.is_none_or(|swept| now.duration_since(swept) >= IDEMPOTENCY_SWEEP) {
            state.idempotency.retain(|_, entry| entry.until > now);
            state.idempotency_swept = Some(now);
        }
        state
            .idempotency
            .insert(slot, IdempotencyEntry { fingerprint: *fingerprint, response: None, until: now + lease });
        Ok(Claim::Acquired)
    }

    async fn complete(&self, owner: &Owner, key: &str, response: &[u8], retention: Duration) -> Result<(), StoreError> {
        if let Some(entry) = self.state().idempotency.get_mut(&(owner.clone(), key.to_owned())) {
            entry.response = Some(response.to_vec());
            entry.until = Instant::now() + retention;
        }
        Ok(())
    }

    async fn release(&self, owner: &Owner, key: &str) -> Result<(), StoreError> {
        let mut state = self.state();
        let slot = (owner.clone(), key.to_owned());
        if state.idempotency.get(&slot).is_some_and(|entry| entry.response.is_none()) {
            state.idempotency.remove(&slot);
        }
        Ok(())
    }
}
