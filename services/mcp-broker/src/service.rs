//! `McpService` over gRPC: the tool catalogue and the MCP server registry.
//!
//! Each RPC takes the caller's principal, validates the request against the contract's
//! field rules and then the registry's own ([`crate::rules`]), turns it into a store
//! call, and maps the result back. Store errors become the mesh's error model: 404, 409
//! for a taken name, 422 for an unknown server, or a retryable `external_service_error`
//! when the backend is down. Writes of servers drive their sessions: creating or changing an
//! enabled server discovers its tools in the background (a failure is logged, recorded
//! as unhealthy and tried again later, never fails the write), and changing, disabling or
//! deleting one closes its sessions. `RefreshMcpServer` discovers synchronously; `InvokeTool` is [`crate::invoke`].

use std::sync::Arc;

use agentmesh_proto::agentmesh::mcp::v1 as pb;
use agentmesh_proto::agentmesh::mcp::v1::mcp_service_server::McpService;
use agentmesh_runtime::paging::{PageRequest, filter_part, query_fingerprint};
use agentmesh_runtime::request::{accept, invalid, uuid_field};
use agentmesh_runtime::{ApiError, ErrorCode};
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::convert::{server_to_proto, tool_to_proto};
use crate::events::EventSink;
use crate::invoke::{Invoker, Validators, session_error};
use crate::rules::{self, ServerFields, ToolFields};
use crate::sessions::Sessions;
use crate::settings::RegistryLimits;
use crate::store::{
    Cursor, McpServerRecord, McpStore, Page, ServerQuery, StoreError, ToolQuery, ToolRecord, Transport,
};

const DEFAULT_LIMIT: u32 = 20;

/// The [`ServerFields`] of a create or an update request (they carry the same fields).
macro_rules! server_fields {
    ($request:expr) => {
        ServerFields {
            name: &$request.name,
            description: $request.description.as_ref(),
            endpoint: &$request.endpoint,
            authentication: $request.authentication.as_ref(),
            capabilities: &$request.capabilities,
            health_check_url: $request.health_check_url.as_ref(),
            enabled: $request.enabled,
            transport: $request.transport,
            stdio: $request.stdio.as_ref(),
            tool_prefix: $request.tool_prefix.as_ref(),
        }
    };
}

/// The [`ToolFields`] of a create or an update request (they carry the same fields), with
/// its `mcp_server_id` already parsed.
macro_rules! tool_fields {
    ($request:expr, $mcp_server_id:expr) => {
        ToolFields {
            name: &$request.name,
            description: &$request.description,
            schema: $request.schema.as_ref(),
            mcp_server_id: $mcp_server_id,
            enabled: $request.enabled,
            metadata: $request.metadata.as_ref(),
            title: $request.title.as_ref(),
            output_schema: $request.output_schema.as_ref(),
            annotations: $request.annotations.as_ref(),
        }
    };
}

/// The `McpService` implementation: a store, the input limits, the sessions with servers
/// and where invocation events go.
#[derive(Clone)]
pub struct McpBroker {
    store: Arc<dyn McpStore>,
    limits: RegistryLimits,
    sessions: Arc<Sessions>,
    events: Arc<dyn EventSink>,
    /// `InvokeTool`'s compiled input schemas.
    validators: Arc<Validators>,
}

impl McpBroker {
    /// A service over `store`, talking to servers through `sessions`.
    pub fn new(
        store: Arc<dyn McpStore>,
        limits: RegistryLimits,
        sessions: Arc<Sessions>,
        events: Arc<dyn EventSink>,
    ) -> Self {
        Self { store, limits, sessions, events, validators: Arc::default() }
    }

    /// Closes the server's sessions and forgets its breaker (its configuration changed),
    /// then, when it is enabled, discovers its tools in the background (as `user_id` for
    /// per-user servers), trying again while it cannot be reached.
    async fn reconnect(&self, server: &McpServerRecord, user_id: &str) {
        self.sessions.close_server(server.id).await;
        self.sessions.forget_server(server.id);
        if server.config.enabled {
            self.sessions.discover_in_background(server.clone(), user_id.to_owned());
        }
    }
}

/// A store error as the client sees it; `resource` names what was not found.
fn store_error(resource: &'static str) -> impl Fn(StoreError) -> Status {
    move |error| match error {
        StoreError::NotFound => ApiError::not_found(resource).into(),
        StoreError::NameTaken(name) => {
            ApiError::new(ErrorCode::Conflict, format!("{resource} name {name:?} is already taken"))
                .with_detail("name", name)
                .into()
        }
        StoreError::UnknownServer => invalid("mcp_server_id", "names no MCP server", Value::Null).into(),
        StoreError::Unavailable(source) => {
            tracing::warn!(error = %source, "registry storage unavailable");
            ApiError::external_service("mcp-registry-storage", "database", true).into()
        }
        StoreError::Internal(source) => {
            tracing::error!(error = %source, "registry storage failure");
            ApiError::internal().into()
        }
    }
}

/// Where a listing of `fingerprint` starts (see [`PageRequest::parse`]).
fn page_request(
    limit: Option<i32>,
    offset: Option<i32>,
    page_token: &str,
    fingerprint: &str,
) -> Result<PageRequest<Cursor>, Status> {
    Ok(PageRequest::parse(limit, offset, page_token, fingerprint, DEFAULT_LIMIT)?)
}

/// The token of the page after `page` (listings are by name), empty on the last page.
fn next_token<T>(page: &Page<T>, name: impl Fn(&T) -> &str, fingerprint: &str) -> String {
    page.next_token(|last| Cursor { name: name(last).to_owned() }, fingerprint)
}

fn tools(page: &Page<ToolRecord>) -> Vec<pb::Tool> {
    page.items.iter().map(tool_to_proto).collect()
}

#[tonic::async_trait]
impl McpService for McpBroker {
    async fn create_tool(
        &self,
        request: Request<pb::CreateToolRequest>,
    ) -> Result<Response<pb::CreateToolResponse>, Status> {
        let (_, request) = accept(request)?;
        let mcp_server_id = request.mcp_server_id.as_deref().map(|raw| uuid_field("mcp_server_id", raw)).transpose()?;
        let definition = rules::tool_definition(tool_fields!(request, mcp_server_id), &self.limits)?;
        let tool = self.store.create_tool(definition).await.map_err(store_error("Tool"))?;
        Ok(Response::new(pb::CreateToolResponse { tool: Some(tool_to_proto(&tool)) }))
    }

    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        let (_, request) = accept(request)?;
        let mcp_server_id = request.mcp_server_id.as_deref().map(|raw| uuid_field("mcp_server_id", raw)).transpose()?;
        let search = request.search.filter(|s| !s.is_empty());
        let mut names = request.names;
        names.sort_unstable();
        names.dedup();
        let fingerprint = query_fingerprint(&[
            "tools",
            &filter_part(mcp_server_id),
            &filter_part(request.enabled),
            &filter_part(search.as_deref()),
            &names.join("\n"),
        ]);
        let PageRequest { limit, offset, after } =
            page_request(request.limit, request.offset, &request.page_token, &fingerprint)?;
        let query = ToolQuery { names, mcp_server_id, enabled: request.enabled, search, limit, offset, after };
        let page = self.store.list_tools(&query).await.map_err(store_error("Tool"))?;
        Ok(Response::new(pb::ListToolsResponse {
            tools: tools(&page),
            next_page_token: next_token(&page, |t| &t.name, &fingerprint),
            total_count: page.total_count(),
        }))
    }

    async fn get_tool(&self, request: Request<pb::GetToolRequest>) -> Result<Response<pb::GetToolResponse>, Status> {
        let (_, request) = accept(request)?;
        let tool_id = uuid_field("tool_id", &request.tool_id)?;
        let tool = self.store.get_tool(tool_id).await.map_err(store_error("Tool"))?;
        Ok(Response::new(pb::GetToolResponse { tool: Some(tool_to_proto(&tool)) }))
    }

    async fn update_tool(
        &self,
        request: Request<pb::UpdateToolRequest>,
    ) -> Result<Response<pb::UpdateToolResponse>, Status> {
        let (_, request) = accept(request)?;
        let tool_id = uuid_field("tool_id", &request.tool_id)?;
        let mcp_server_id = request.mcp_server_id.as_deref().map(|raw| uuid_field("mcp_server_id", raw)).transpose()?;
        let definition = rules::tool_definition(tool_fields!(request, mcp_server_id), &self.limits)?;
        let tool = self.store.update_tool(tool_id, definition).await.map_err(store_error("Tool"))?;
        Ok(Response::new(pb::UpdateToolResponse { tool: Some(tool_to_proto(&tool)) }))
    }

    async fn delete_tool(
        &self,
        request: Request<pb::DeleteToolRequest>,
    ) -> Result<Response<pb::DeleteToolResponse>, Status> {
        let (_, request) = accept(request)?;
        let tool_id = uuid_field("tool_id", &request.tool_id)?;
        self.store.delete_tool(tool_id).await.map_err(store_error("Tool"))?;
        Ok(Response::new(pb::DeleteToolResponse {}))
    }

    async fn create_mcp_server(
        &self,
        request: Request<pb::CreateMcpServerRequest>,
    ) -> Result<Response<pb::CreateMcpServerResponse>, Status> {
        let (principal, request) = accept(request)?;
        if rules::wants_stdio(request.transport, request.stdio.as_ref()) {
            rules::check_stdio_allowed(&principal)?;
        }
        let config = rules::server_config(server_fields!(request), &self.limits)?;
        let server = self.store.create_server(config).await.map_err(store_error("MCP server"))?;
        self.reconnect(&server, &principal.user_id).await;
        Ok(Response::new(pb::CreateMcpServerResponse { mcp_server: Some(server_to_proto(&server)) }))
    }

    async fn list_mcp_servers(
        &self,
        request: Request<pb::ListMcpServersRequest>,
    ) -> Result<Response<pb::ListMcpServersResponse>, Status> {
        let (_, request) = accept(request)?;
        let search = request.search.filter(|s| !s.is_empty());
        let fingerprint =
            query_fingerprint(&["mcp_servers", &filter_part(request.enabled), &filter_part(search.as_deref())]);
        let PageRequest { limit, offset, after } =
            page_request(request.limit, request.offset, &request.page_token, &fingerprint)?;
        let query = ServerQuery { enabled: request.enabled, search, limit, offset, after };
        let page = self.store.list_servers(&query).await.map_err(store_error("MCP server"))?;
        Ok(Response::new(pb::ListMcpServersResponse {
            mcp_servers: page.items.iter().map(server_to_proto).collect(),
            next_page_token: next_token(&page, |s| &s.config.name, &fingerprint),
            total_count: page.total_count(),
        }))
    }

    async fn get_mcp_server(
        &self,
        request: Request<pb::GetMcpServerRequest>,
    ) -> Result<Response<pb::GetMcpServerResponse>, Status> {
        let (_, request) = accept(request)?;
        let server_id = uuid_field("mcp_server_id", &request.mcp_server_id)?;
        let server = self.store.get_server(server_id).await.map_err(store_error("MCP server"))?;
        Ok(Response::new(pb::GetMcpServerResponse { mcp_server: Some(server_to_proto(&server)) }))
    }

    async fn update_mcp_server(
        &self,
        request: Request<pb::UpdateMcpServerRequest>,
    ) -> Result<Response<pb::UpdateMcpServerResponse>, Status> {
        let (principal, request) = accept(request)?;
        let server_id = uuid_field("mcp_server_id", &request.mcp_server_id)?;
        let current = self.store.get_server(server_id).await.map_err(store_error("MCP server"))?;
        // Changing a stdio server, or turning a server into one, is the admin's.
        if current.config.transport == Transport::Stdio || rules::wants_stdio(request.transport, request.stdio.as_ref())
        {
            rules::check_stdio_allowed(&principal)?;
        }
        let config = rules::server_config(server_fields!(request), &self.limits)?;
        let server = self.store.update_server(server_id, config).await.map_err(store_error("MCP server"))?;
        self.reconnect(&server, &principal.user_id).await;
        Ok(Response::new(pb::UpdateMcpServerResponse { mcp_server: Some(server_to_proto(&server)) }))
    }

    async fn delete_mcp_server(
        &self,
        request: Request<pb::DeleteMcpServerRequest>,
    ) -> Result<Response<pb::DeleteMcpServerResponse>, Status> {
        let (_, request) = accept(request)?;
        let server_id = uuid_field("mcp_server_id", &request.mcp_server_id)?;
        self.store.delete_server(server_id).await.map_err(store_error("MCP server"))?;
        self.sessions.close_server(server_id).await;
        self.sessions.forget_server(server_id);
        Ok(Response::new(pb::DeleteMcpServerResponse {}))
    }

    async fn list_mcp_server_tools(
        &self,
        request: Request<pb::ListMcpServerToolsRequest>,
    ) -> Result<Response<pb::ListMcpServerToolsResponse>, Status> {
        let (_, request) = accept(request)?;
        let server_id = uuid_field("mcp_server_id", &request.mcp_server_id)?;
        self.store.get_server(server_id).await.map_err(store_error("MCP server"))?;
        let fingerprint = query_fingerprint(&["mcp_server_tools", &server_id.to_string()]);
        let PageRequest { limit, offset, after } =
            page_request(request.limit, request.offset, &request.page_token, &fingerprint)?;
        let query = ToolQuery { mcp_server_id: Some(server_id), limit, offset, after, ..ToolQuery::default() };
        let page = self.store.list_tools(&query).await.map_err(store_error("Tool"))?;
        Ok(Response::new(pb::ListMcpServerToolsResponse {
            tools: tools(&page),
            next_page_token: next_token(&page, |t| &t.name, &fingerprint),
            total_count: page.total_count(),
        }))
    }

    async fn refresh_mcp_server(
        &self,
        request: Request<pb::RefreshMcpServerRequest>,
    ) -> Result<Response<pb::RefreshMcpServerResponse>, Status> {
        let (principal, request) = accept(request)?;
        let server_id = uuid_field("mcp_server_id", &request.mcp_server_id)?;
        let server = self.store.get_server(server_id).await.map_err(store_error("MCP server"))?;
        if !server.config.enabled {
            let value = Value::from(server_id.to_string());
            return Err(invalid("mcp_server_id", "the MCP server is disabled", value).into());
        }
        let tools = self
            .sessions
            .discover(&server, &principal.user_id)
            .await
            .map_err(|error| session_error(&server.config.name, error))?;
        Ok(Response::new(pb::RefreshMcpServerResponse { tools: tools.iter().map(tool_to_proto).collect() }))
    }

    async fn invoke_tool(
        &self,
        request: Request<pb::InvokeToolRequest>,
    ) -> Result<Response<pb::InvokeToolResponse>, Status> {
        let (principal, request) = accept(request)?;
        let invoker = Invoker {
            store: self.store.as_ref(),
            sessions: &self.sessions,
            events: &self.events,
            validators: &self.validators,
        };
        Ok(Response::new(invoker.invoke(&principal, request).await?))
    }
}
