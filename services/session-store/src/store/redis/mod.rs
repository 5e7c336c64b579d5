//! Redis backend (seed §5): sessions and messages as hashes that expire after an idle
//! period, sorted sets for listing, and Lua scripts for every multi-key write.
//!
//! # Key layout
//!
//! Every key starts with the store's prefix (`agentmesh:session-store:` in production, a
//! unique one per test). `{o}` is `{tenant}:{owner}` with `%` and `:` escaped (`%25`,
//! `%3A`) so user-chosen parts cannot collide.
//!
//! | key | type | content |
//! |---|---|---|
//! | `session:{id}` | hash | the session (see `codec`) |
//! | `message:{id}` | hash | the message, with its lowercased content for search |
//! | `session_messages:{id}` | sorted set | message ids, score = `created_at` µs; ties order by id (UUID v7 text sorts like the UUID) |
//! | `session_replies:{id}` | sorted set | `parent:child` members (lexicographic range per parent), to clear `parent_message_id` of replies |
//! | `owner_sessions:{o}:{created_at,updated_at,last_activity}` | sorted sets | the owner's session ids by each sort key (µs) |
//! | `owner_sessions:{o}:label:{user_id}:{sort}` | sorted sets | the same per `user_id` label, for the `user_id` filter |
//! | `owner_sessions:{o}:labels` | hash | session id → label, to unindex a session that expired |
//! | `owner_sessions:{o}:expires` | sorted set | session id by expiry time (ms), for lazy cleanup |
//! | `idempotency:{o}:{key}` | hash | see `idempotency` |
//!
//! # Consistency
//!
//! Every write is one Lua script (`scripts`, `lua/`), so it applies entirely or not at
//! all and concurrent writers never interleave: `message_count` is a `HINCRBY` inside the
//! append script, exact under any concurrency; a bulk create is one script. Scripts check
//! before they write (ownership, parent), so a refused call changes nothing. Timestamps
//! come from the Redis server's clock (`TIME`, µs) — one clock for all replicas of the
//! service, in the order writes were applied. Ids are UUID v7 chosen here before the
//! first attempt, which makes creates safe to retry (see `client` for the retry policy).
//! A foreign session or message is answered exactly like a missing one.
//!
//! # TTL
//!
//! A session lives `session_ttl` after its last write (create, update, append, message
//! update or delete): each write script sets `PEXPIREAT now + ttl` on the session hash,
//! its message index and its reply index, and records the expiry in the owner's
//! `expires` set. Message keys are pushed to a later "horizon" (now + 2 × ttl) only when
//! the session would outlive them, so appends cost O(1) amortised instead of touching
//! every message each time; a message key may thus outlive its session by up to one ttl,
//! but it is unreachable (every message read checks its session) and then expires. The
//! owner's index keys expire with the newest session they list. Index entries of expired
//! sessions are removed lazily by the listing script (`expires` entries past due whose
//! session key is gone), so listings and totals never include expired sessions.
//!
//! # Costs
//!
//! Reads and writes of one record are O(1) (O(log n) for index updates); a page of
//! sessions or unfiltered messages is O(log n + limit). A message listing with a `role`
//! or `search` filter examines every message of the session inside one script (O(n),
//! blocking Redis meanwhile): acceptable for a cache of sessions idle for at most an
//! hour; PostgreSQL has the trigram index for large histories. Deleting a session is
//! O(its messages).
//!
//! # Events
//!
//! After a write succeeds the store hands its domain events to the [`EventSink`]; a
//! process dying in between loses them (at most once, as with the memory backend).

mod client;
mod codec;
mod idempotency;
mod scripts;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_resilience::Preset;
use async_trait::async_trait;
use fred::prelude::{ClientLike, HashesInterface, Value};
use uuid::Uuid;

use self::client::{Client, Retry, internal};
use self::codec::{Fields, Reply, json, micros, optional};
use self::idempotency::millis;
use super::{
    Cursor, Direction, MessagePatch, MessageQuery, MessageRecord, MessageShape, NewMessage, NewSession, Owner, Page,
    SessionPatch, SessionQuery, SessionRecord, SessionSort, SessionStore, StoreError,
};
use crate::events::{self, EventSink};

/// The Redis backend; also the Redis [`IdempotencyStore`](crate::idempotency::IdempotencyStore).
pub struct RedisStore {
    client: Client,
    session_ttl: Duration,
    sink: Arc<dyn EventSink>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.client.prefix())
            .field("session_ttl", &self.session_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects a pool of `max_connections` to `url`, checks it with PING and loads the
    /// scripts. Keys start with `key_prefix`; sessions live `session_ttl` after their last
    /// write; calls run under `resilience` (the database preset); events go to `sink`.
    pub async fn connect(
        url: &str,
        key_prefix: &str,
        max_connections: u32,
        session_ttl: Duration,
        resilience: &Preset,
        sink: Arc<dyn EventSink>,
    ) -> Result<Self, StoreError> {
        let client = Client::connect(url, key_prefix, max_connections, resilience).await?;
        Ok(Self { client, session_ttl, sink })
    }

    /// The prefix of every key of this store.
    pub fn key_prefix(&self) -> &str {
        self.client.prefix()
    }

    /// The Redis policy's state (breaker for dependency health).
    pub fn resilience(&self) -> &agentmesh_resilience::Resilience {
        self.client.resilience()
    }

    fn ttl(&self) -> Value {
        Value::from(millis(self.session_ttl))
    }
}

/// A script argument from text.
fn text(value: impl Into<String>) -> Value {
    Value::from(value.into())
}

/// `Ok` for status `ok`; the matching error for the other statuses scripts answer.
fn check(reply: &Reply) -> Result<(), StoreError> {
    match reply.status.as_str() {
        "ok" => Ok(()),
        "not_found" => Err(StoreError::NotFound),
        "invalid_parent" => Err(StoreError::InvalidParent),
        "conflict" => Err(StoreError::Conflict),
        _ => Err(internal(reply.unexpected())),
    }
}

/// A shape as `update_message.lua` compares it: `role|content|tool_calls|tool_call_id`,
/// each of the last three `1` when set.
fn shape_text(shape: MessageShape) -> String {
    let flag = |set: bool| if set { '1' } else { '0' };
    format!(
        "{}|{}|{}|{}",
        shape.role.as_str(),
        flag(shape.has_content),
        flag(shape.has_tool_calls),
        flag(shape.has_tool_call_id)
    )
}

fn session(fields: &Fields) -> Result<SessionRecord, StoreError> {
    codec::session(fields).map_err(internal)
}

fn message(fields: &Fields) -> Result<MessageRecord, StoreError> {
    codec::message(fields).map_err(internal)
}

/// The paging arguments shared by both listings: limit, offset, cursor key, cursor id.
/// A listing's direction as the scripts take it.
fn direction(direction: Direction) -> &'static str {
    match direction {
        Direction::Asc => "asc",
        Direction::Desc => "desc",
    }
}

fn paging(limit: u32, offset: u64, after: Option<Cursor>) -> [Value; 4] {
    let (key, id) =
        after.map_or_else(|| (String::new(), String::new()), |c| (micros(c.key).to_string(), c.id.to_string()));
    [text(limit.to_string()), text(offset.min(i64::MAX as u64).to_string()), text(key), text(id)]
}

/// Reads `{ 'ok', total, has_more, record... }`.
fn page<T>(mut reply: Reply, decode: fn(&Fields) -> Result<T, StoreError>) -> Result<Page<T>, StoreError> {
    check(&reply)?;
    let total = reply.integer().map_err(internal)?;
    let has_more = reply.integer().map_err(internal)? != 0;
    let items = reply.records().map_err(internal)?.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    Ok(Page { items, total: u64::try_from(total).unwrap_or(0), has_more })
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create_sessions(&self, owner: &Owner, new: Vec<NewSession>) -> Result<Vec<SessionRecord>, StoreError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::with_capacity(2 + 4 * new.len());
        args.push(self.ttl());
        args.push(text(new.len().to_string()));
        for session in &new {
            args.push(text(Uuid::now_v7().to_string()));
            args.push(text(optional(session.user_id.as_deref())));
            args.push(text(optional(session.title.as_deref())));
            args.push(text(json(&session.metadata)));
        }
        let scripts = self.client.scripts();
        let reply = self.client.script(&scripts.create_sessions, owner, args, Retry::Transient).await?;
        check(&reply)?;
        let created = reply.records().map_err(internal)?.iter().map(session).collect::<Result<Vec<_>, _>>()?;
        self.sink.emit(created.iter().map(events::session_created).collect()).await;
        Ok(created)
    }

    async fn get_session(&self, owner: &Owner, id: Uuid) -> Result<SessionRecord, StoreError> {
        let key = self.client.key(&format!("session:{id}"));
        let pool = self.client.pool();
        let fields: Fields = self.client.call(Retry::Transient, || pool.hgetall(key.as_str())).await?;
        if fields.is_empty() {
            return Err(StoreError::NotFound);
        }
        let record = session(&fields)?;
        if &record.owner != owner {
            return Err(StoreError::NotFound);
        }
        Ok(record)
    }

    async fn list_sessions(&self, owner: &Owner, query: &SessionQuery) -> Result<Page<SessionRecord>, StoreError> {
        let sort = match query.sort {
            SessionSort::CreatedAt => "created_at",
            SessionSort::UpdatedAt => "updated_at",
            SessionSort::LastActivity => "last_activity",
        };
        let mut args = vec![text(optional(query.user_id.as_deref())), text(sort), text(direction(query.direction))];
        args.extend(paging(query.limit, query.offset, query.after));
        let reply = self.client.script(&self.client.scripts().list_sessions, owner, args, Retry::Transient).await?;
        page(reply, session)
    }

    async fn update_session(&self, owner: &Owner, id: Uuid, patch: SessionPatch) -> Result<SessionRecord, StoreError> {
        let args = vec![
            self.ttl(),
            text(id.to_string()),
            text(optional(patch.user_id.as_deref())),
            text(optional(patch.title.as_deref())),
            text(optional(patch.metadata.as_ref().map(json).as_deref())),
        ];
        let mut reply =
            self.client.script(&self.client.scripts().update_session, owner, args, Retry::Transient).await?;
        check(&reply)?;
        let updated = session(&reply.record().map_err(internal)?)?;
        self.sink.emit(vec![events::session_updated(&updated)]).await;
        Ok(updated)
    }

    async fn delete_sessions(&self, owner: &Owner, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let mut seen = HashSet::new();
        let args: Vec<Value> = ids.iter().filter(|id| seen.insert(**id)).map(|id| text(id.to_string())).collect();
        if args.is_empty() {
            return Ok(Vec::new());
        }
        let reply = self.client.script(&self.client.scripts().delete_sessions, owner, args, Retry::Never).await?;
        check(&reply)?;
        let deleted = reply
            .texts()
            .map_err(internal)?
            .iter()
            .map(|id| id.parse::<Uuid>().map_err(|error| StoreError::Internal(Box::new(error))))
            .collect::<Result<Vec<_>, _>>()?;
        self.sink.emit(deleted.iter().map(|id| events::session_deleted(owner, *id)).collect()).await;
        Ok(deleted)
    }

    async fn create_message(
        &self,
        owner: &Owner,
        session_id: Uuid,
        new: NewMessage,
    ) -> Result<MessageRecord, StoreError> {
        let args = vec![
            self.ttl(),
            text(session_id.to_string()),
            text(Uuid::now_v7().to_string()),
            text(new.role.as_str()),
            text(new.content.as_str()),
            text(new.content.to_lowercase()),
            text(json(&new.metadata)),
            text(json(&new.tool_calls)),
            text(optional(new.parent_message_id.map(|id| id.to_string()).as_deref())),
            text(optional(new.tool_call_id.as_deref())),
        ];
        let mut reply =
            self.client.script(&self.client.scripts().create_message, owner, args, Retry::Transient).await?;
        check(&reply)?;
        let created = message(&reply.record().map_err(internal)?)?;
        self.sink.emit(vec![events::message_created(owner, &created)]).await;
        Ok(created)
    }

    async fn get_message(&self, owner: &Owner, id: Uuid) -> Result<MessageRecord, StoreError> {
        let args = vec![text(id.to_string())];
        let mut reply = self.client.script(&self.client.scripts().get_message, owner, args, Retry::Transient).await?;
        check(&reply)?;
        message(&reply.record().map_err(internal)?)
    }

    async fn list_messages(
        &self,
        owner: &Owner,
        session_id: Uuid,
        query: &MessageQuery,
    ) -> Result<Page<MessageRecord>, StoreError> {
        let mut args = vec![
            text(session_id.to_string()),
            text(optional(query.role.map(|role| role.as_str()))),
            text(optional(query.search.as_deref().map(str::to_lowercase).as_deref())),
        ];
        args.extend(paging(query.limit, query.offset, query.after));
        args.push(text(direction(query.direction)));
        let reply = self.client.script(&self.client.scripts().list_messages, owner, args, Retry::Transient).await?;
        page(reply, message)
    }

    async fn update_message(&self, owner: &Owner, id: Uuid, patch: MessagePatch) -> Result<MessageRecord, StoreError> {
        let args = vec![
            self.ttl(),
            text(id.to_string()),
            text(optional(patch.content.as_deref())),
            text(optional(patch.content.as_deref().map(str::to_lowercase).as_deref())),
            text(optional(patch.role.map(|role| role.as_str()))),
            text(optional(patch.metadata.as_ref().map(json).as_deref())),
            text(optional(patch.tool_calls.as_ref().map(json).as_deref())),
            text(optional(patch.tool_call_id.as_ref().map(|id| id.as_deref().unwrap_or_default()))),
            text(optional(
                patch.parent_message_id.map(|id| id.map(|id| id.to_string()).unwrap_or_default()).as_deref(),
            )),
            text(optional(patch.expect.map(shape_text).as_deref())),
        ];
        let mut reply =
            self.client.script(&self.client.scripts().update_message, owner, args, Retry::Transient).await?;
        check(&reply)?;
        let updated = message(&reply.record().map_err(internal)?)?;
        self.sink.emit(vec![events::message_updated(owner, &updated)]).await;
        Ok(updated)
    }

    async fn delete_message(&self, owner: &Owner, id: Uuid) -> Result<MessageRecord, StoreError> {
        let args = vec![self.ttl(), text(id.to_string())];
        let mut reply = self.client.script(&self.client.scripts().delete_message, owner, args, Retry::Never).await?;
        check(&reply)?;
        let deleted = message(&reply.record().map_err(internal)?)?;
        self.sink.emit(vec![events::message_deleted(owner, &deleted)]).await;
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let pool = self.client.pool();
        let _pong: String = self.client.call(Retry::Never, || pool.ping(None)).await?;
        Ok(())
    }
}
