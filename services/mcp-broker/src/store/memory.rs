//! In-process storage: the default backend of `agentmesh up`, and the reference the
//! PostgreSQL backend is compared with by the conformance suite.
//!
//! One lock guards all state, so every operation is atomic; the lock is never held
//! across an `.await`. Data is lost on restart, which is why production refuses this
//! backend.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    DiscoveredTool, Handshake, HealthChange, McpServerRecord, McpStore, Page, ServerConfig, ServerQuery, ServerStatus,
    StoreError, SyncOutcome, ToolDefinition, ToolQuery, ToolRecord, contains_ignoring_case, now, sync,
};
use crate::events::{self, EventSink};

/// The in-process backend. Cheap to share behind an `Arc`.
pub struct MemoryStore {
    state: Mutex<State>,
    sink: Arc<dyn EventSink>,
}

#[derive(Default)]
struct State {
    tools: HashMap<Uuid, ToolRecord>,
    /// Tool ids by name: uniqueness and listing order.
    tool_names: BTreeMap<String, Uuid>,
    servers: HashMap<Uuid, McpServerRecord>,
    /// Server ids by name: uniqueness and listing order.
    server_names: BTreeMap<String, Uuid>,
}

impl MemoryStore {
    /// An empty store whose events go to `sink`.
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Self { state: Mutex::new(State::default()), sink }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every write checks first, then mutates without failing, so a panic cannot leave
        // a half-applied write behind the poisoned lock.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    fn check_tool_name(&self, name: &str, except: Option<Uuid>) -> Result<(), StoreError> {
        match self.tool_names.get(name) {
            Some(holder) if Some(*holder) != except => Err(StoreError::NameTaken(name.to_owned())),
            _ => Ok(()),
        }
    }

    fn check_server(&self, id: Option<Uuid>) -> Result<(), StoreError> {
        match id {
            Some(id) if !self.servers.contains_key(&id) => Err(StoreError::UnknownServer),
            _ => Ok(()),
        }
    }

    fn put_tool(&mut self, tool: ToolRecord) {
        if let Some(old) = self.tools.get(&tool.id)
            && old.name != tool.name
            && self.tool_names.get(&old.name) == Some(&tool.id)
        {
            let old_name = old.name.clone();
            self.tool_names.remove(&old_name);
        }
        self.tool_names.insert(tool.name.clone(), tool.id);
        self.tools.insert(tool.id, tool);
    }

    fn remove_tool(&mut self, id: Uuid) -> Option<ToolRecord> {
        let tool = self.tools.remove(&id)?;
        self.tool_names.remove(&tool.name);
        Some(tool)
    }

    fn server_tools(&self, server_id: Uuid) -> Vec<ToolRecord> {
        self.tool_names
            .values()
            .filter_map(|id| self.tools.get(id))
            .filter(|tool| tool.mcp_server_id == Some(server_id))
            .cloned()
            .collect()
    }

    fn server_mut(&mut self, id: Uuid) -> Result<&mut McpServerRecord, StoreError> {
        self.servers.get_mut(&id).ok_or(StoreError::NotFound)
    }
}

/// Applies offset or cursor and limit to items already in name order.
fn page<T>(items: Vec<T>, query_offset: u64, limit: u32, after: Option<&str>, name: impl Fn(&T) -> &str) -> Page<T> {
    let total = items.len() as u64;
    let start = match after {
        Some(cursor) => items.iter().position(|item| name(item) > cursor).unwrap_or(items.len()),
        None => usize::try_from(query_offset).unwrap_or(usize::MAX).min(items.len()),
    };
    let limit = limit as usize;
    let has_more = items.len().saturating_sub(start) > limit;
    let items = items.into_iter().skip(start).take(limit).collect();
    Page { items, total, has_more }
}

#[async_trait]
impl McpStore for MemoryStore {
    async fn create_tool(&self, tool: ToolDefinition) -> Result<ToolRecord, StoreError> {
        let created = {
            let mut state = self.state();
            state.check_tool_name(&tool.name, None)?;
            state.check_server(tool.mcp_server_id)?;
            let at = now();
            let record = ToolRecord {
                id: Uuid::now_v7(),
                name: tool.name,
                description: tool.description,
                schema: tool.schema,
                mcp_server_id: tool.mcp_server_id,
                enabled: tool.enabled,
                metadata: tool.metadata,
                title: tool.title,
                output_schema: tool.output_schema,
                annotations: tool.annotations,
                remote_name: None,
                withdrawn: false,
                created_at: at,
                updated_at: at,
            };
            state.put_tool(record.clone());
            record
        };
        self.sink.emit(vec![events::tool_created(&created)]).await;
        Ok(created)
    }

    async fn get_tool(&self, id: Uuid) -> Result<ToolRecord, StoreError> {
        self.state().tools.get(&id).cloned().ok_or(StoreError::NotFound)
    }

    async fn get_tool_by_name(&self, name: &str) -> Result<ToolRecord, StoreError> {
        let state = self.state();
        state.tool_names.get(name).and_then(|id| state.tools.get(id)).cloned().ok_or(StoreError::NotFound)
    }

    async fn list_tools(&self, query: &ToolQuery) -> Result<Page<ToolRecord>, StoreError> {
        let state = self.state();
        let tools: Vec<ToolRecord> = state
            .tool_names
            .values()
            .filter_map(|id| state.tools.get(id))
            .filter(|t| query.mcp_server_id.is_none() || t.mcp_server_id == query.mcp_server_id)
            .filter(|t| query.enabled.is_none_or(|enabled| t.enabled == enabled))
            .filter(|t| {
                query.search.as_deref().is_none_or(|needle| {
                    contains_ignoring_case(&t.name, needle) || contains_ignoring_case(&t.description, needle)
                })
            })
            .filter(|t| query.names.is_empty() || query.names.contains(&t.name))
            .cloned()
            .collect();
        let after = query.after.as_ref().map(|c| c.name.as_str());
        Ok(page(tools, query.offset, query.limit, after, |t| &t.name))
    }

    async fn update_tool(&self, id: Uuid, tool: ToolDefinition) -> Result<ToolRecord, StoreError> {
        let updated = {
            let mut state = self.state();
            let current = state.tools.get(&id).cloned().ok_or(StoreError::NotFound)?;
            state.check_tool_name(&tool.name, Some(id))?;
            state.check_server(tool.mcp_server_id)?;
            let record = ToolRecord {
                name: tool.name,
                description: tool.description,
                schema: tool.schema,
                mcp_server_id: tool.mcp_server_id,
                enabled: tool.enabled,
                metadata: tool.metadata,
                title: tool.title,
                output_schema: tool.output_schema,
                annotations: tool.annotations,
                withdrawn: false,
                updated_at: now(),
                ..current
            };
            state.put_tool(record.clone());
            record
        };
        self.sink.emit(vec![events::tool_updated(&updated)]).await;
        Ok(updated)
    }

    async fn delete_tool(&self, id: Uuid) -> Result<ToolRecord, StoreError> {
        let deleted = self.state().remove_tool(id).ok_or(StoreError::NotFound)?;
        self.sink.emit(vec![events::tool_deleted(&deleted)]).await;
        Ok(deleted)
    }

    async fn create_server(&self, server: ServerConfig) -> Result<McpServerRecord, StoreError> {
        let created = {
            let mut state = self.state();
            if state.server_names.contains_key(&server.name) {
                return Err(StoreError::NameTaken(server.name));
            }
            let at = now();
            let record = McpServerRecord {
                id: Uuid::now_v7(),
                config: server,
                status: ServerStatus::Unknown,
                last_health_check: None,
                protocol_version: String::new(),
                server_info: String::new(),
                created_at: at,
                updated_at: at,
            };
            state.server_names.insert(record.config.name.clone(), record.id);
            state.servers.insert(record.id, record.clone());
            record
        };
        self.sink.emit(vec![events::server_created(&created)]).await;
        Ok(created)
    }

    async fn get_server(&self, id: Uuid) -> Result<McpServerRecord, StoreError> {
        self.state().servers.get(&id).cloned().ok_or(StoreError::NotFound)
    }

    async fn list_servers(&self, query: &ServerQuery) -> Result<Page<McpServerRecord>, StoreError> {
        let state = self.state();
        let servers: Vec<McpServerRecord> = state
            .server_names
            .values()
            .filter_map(|id| state.servers.get(id))
            .filter(|s| query.enabled.is_none_or(|enabled| s.config.enabled == enabled))
            .filter(|s| {
                query.search.as_deref().is_none_or(|needle| {
                    contains_ignoring_case(&s.config.name, needle)
                        || s.config.description.as_deref().is_some_and(|d| contains_ignoring_case(d, needle))
                })
            })
            .cloned()
            .collect();
        let after = query.after.as_ref().map(|c| c.name.as_str());
        Ok(page(servers, query.offset, query.limit, after, |s| &s.config.name))
    }

    async fn update_server(&self, id: Uuid, server: ServerConfig) -> Result<McpServerRecord, StoreError> {
        let updated = {
            let mut state = self.state();
            let current = state.servers.get(&id).cloned().ok_or(StoreError::NotFound)?;
            if state.server_names.get(&server.name).is_some_and(|holder| *holder != id) {
                return Err(StoreError::NameTaken(server.name));
            }
            state.server_names.remove(&current.config.name);
            state.server_names.insert(server.name.clone(), id);
            let record = McpServerRecord { config: server, updated_at: now(), ..current };
            state.servers.insert(id, record.clone());
            record
        };
        self.sink.emit(vec![events::server_updated(&updated)]).await;
        Ok(updated)
    }

    async fn delete_server(&self, id: Uuid) -> Result<(McpServerRecord, Vec<ToolRecord>), StoreError> {
        let (server, tools) = {
            let mut state = self.state();
            let server = state.servers.remove(&id).ok_or(StoreError::NotFound)?;
            state.server_names.remove(&server.config.name);
            let tools: Vec<ToolRecord> =
                state.server_tools(id).into_iter().filter_map(|tool| state.remove_tool(tool.id)).collect();
            (server, tools)
        };
        self.sink.emit(events::server_and_tools_deleted(&server, &tools)).await;
        Ok((server, tools))
    }

    async fn sync_tools(&self, server_id: Uuid, discovered: Vec<DiscoveredTool>) -> Result<SyncOutcome, StoreError> {
        let outcome = {
            let mut state = self.state();
            let server = state.servers.get(&server_id).cloned().ok_or(StoreError::NotFound)?;
            let known = state.server_tools(server_id);
            let mut names = state.tool_names.clone();
            let mut outcome = sync::plan(&server.tool_prefix(), server_id, known, &mut names, &discovered, now());
            // Renames first: a new tool may take a name a rename frees (see `sync::plan`).
            for tool in outcome.updated.iter().chain(&outcome.created).chain(&outcome.disabled) {
                state.put_tool(tool.clone());
            }
            outcome.tools = state.server_tools(server_id);
            outcome
        };
        let changed = outcome.created.iter().map(events::tool_created);
        let changed = changed.chain(outcome.updated.iter().chain(&outcome.disabled).map(events::tool_updated));
        self.sink.emit(changed.collect()).await;
        Ok(outcome)
    }

    async fn record_handshake(&self, server_id: Uuid, handshake: Handshake) -> Result<McpServerRecord, StoreError> {
        let changed = {
            let mut state = self.state();
            let server = state.server_mut(server_id)?;
            let unchanged = server.config.capabilities == handshake.capabilities
                && server.protocol_version == handshake.protocol_version
                && server.server_info == handshake.server_info;
            if unchanged {
                return Ok(server.clone());
            }
            server.config.capabilities = handshake.capabilities;
            server.protocol_version = handshake.protocol_version;
            server.server_info = handshake.server_info;
            server.updated_at = now();
            server.clone()
        };
        self.sink.emit(vec![events::server_updated(&changed)]).await;
        Ok(changed)
    }

    async fn record_health(
        &self,
        server_id: Uuid,
        status: ServerStatus,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<HealthChange, StoreError> {
        let change = {
            let mut state = self.state();
            let server = state.server_mut(server_id)?;
            let previous = server.status;
            server.status = status;
            server.last_health_check = Some(agentmesh_postgres::micros(at));
            HealthChange { server: server.clone(), previous }
        };
        if change.previous != status {
            self.sink.emit(vec![events::server_health_changed(&change.server, change.previous, reason)]).await;
        }
        Ok(change)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
