//! The services a run calls — session-store, llm-proxy, mcp-broker — acting for its user.
//!
//! A run outlives the request that started it (and, after a crash, the process), so it
//! cannot forward the caller's principal. Instead every call carries a principal the
//! orchestrator mints for the run's user, bound to the run (`run` claim) and never valid
//! past the run's deadline (`agentmesh_runtime::auth::RunPrincipals`), plus the
//! orchestrator's actor token (the channels are built `acting_as` it). Each callee then
//! authorises against the user exactly as if the user had called.

use std::sync::Arc;
use std::time::SystemTime;

use agentmesh_proto::agentmesh::common::v1::SortOrder;
use agentmesh_proto::agentmesh::llm::v1::llm_service_client::LlmServiceClient;
use agentmesh_proto::agentmesh::llm::v1::{ChatRequest, StreamChatRequest, StreamChatResponse};
use agentmesh_proto::agentmesh::mcp::v1::mcp_service_client::McpServiceClient;
use agentmesh_proto::agentmesh::mcp::v1::{InvokeToolRequest, InvokeToolResponse, ListToolsRequest, Tool};
use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_proto::agentmesh::session::v1::{CreateMessageRequest, ListMessagesRequest, Message};
use agentmesh_runtime::auth::{MintError, Principal, RunPrincipals, ServiceIdentity};
use agentmesh_runtime::balance::Discovery;
use agentmesh_runtime::client::{ClientError, ServiceChannel};
use agentmesh_runtime::{Config, RequestContext, ServiceName};
use tonic::codec::Streaming;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// The gRPC metadata carrying an idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Most messages session-store returns per page.
const MESSAGES_PAGE: u32 = 200;

/// Who a run acts for, and until when.
#[derive(Debug, Clone)]
pub struct ActingFor {
    /// The run's user.
    pub principal: Principal,
    /// The run.
    pub run_id: String,
    /// The run's deadline: no principal minted for it is valid later.
    pub deadline: SystemTime,
    /// The correlation id of the request that started the run.
    pub correlation_id: String,
}

/// Clients of the services a run calls.
#[derive(Clone)]
pub struct Peers {
    sessions: SessionServiceClient<ServiceChannel>,
    llm: LlmServiceClient<ServiceChannel>,
    tools: McpServiceClient<ServiceChannel>,
    principals: Arc<RunPrincipals>,
}

/// Why the peers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    /// A peer's URL is unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// This service cannot mint run principals (its identity is not the orchestrator's).
    #[error(transparent)]
    Mint(#[from] MintError),
}

impl Peers {
    /// Channels to the peers named in `config`, acting as the orchestrator.
    pub fn connect(config: &Config) -> Result<Self, PeersError> {
        let identity = ServiceIdentity::from_config(config, ServiceName::AgentOrchestrator);
        let discovery = Discovery::new(config.peers.clone());
        let channel = |peer: ServiceName| -> Result<ServiceChannel, ClientError> {
            Ok(ServiceChannel::connect_with(
                peer.as_str(),
                &config.endpoints.get(peer).url,
                &config.resilience.internal,
                &discovery,
            )?
            .acting_as(&identity))
        };
        let principals = RunPrincipals::new(Arc::new(identity.principal_minter()?))?;
        Ok(Self {
            sessions: SessionServiceClient::new(channel(ServiceName::SessionStore)?),
            llm: LlmServiceClient::new(channel(ServiceName::LlmProxy)?),
            tools: McpServiceClient::new(channel(ServiceName::McpBroker)?),
            principals: Arc::new(principals),
        })
    }

    /// The request context of a call made for `acting`: its minted principal, its run and
    /// its correlation id.
    fn context(&self, acting: &ActingFor) -> Result<RequestContext, Status> {
        let token = self
            .principals
            .mint(&acting.principal, &acting.run_id, acting.deadline)
            .map_err(|error| Status::deadline_exceeded(error.to_string()))?;
        Ok(RequestContext {
            correlation_id: acting.correlation_id.clone(),
            principal: Some(acting.principal.clone()),
            principal_token: Some(token),
            actor: Some(ServiceName::AgentOrchestrator),
            run: Some(acting.run_id.clone()),
            ..RequestContext::new()
        })
    }

    /// Appends a message to the session; `idempotency_key` makes a repeat (after a crash)
    /// return the first result instead of a second message.
    pub async fn append_message(
        &self,
        acting: &ActingFor,
        message: CreateMessageRequest,
        idempotency_key: &str,
    ) -> Result<Message, Status> {
        let mut request = Request::new(message);
        let key = MetadataValue::try_from(idempotency_key).map_err(|_| Status::internal("bad idempotency key"))?;
        request.metadata_mut().insert(IDEMPOTENCY_KEY, key);
        let mut client = self.sessions.clone();
        let response = self.context(acting)?.scope(async move { client.create_message(request).await }).await?;
        response.into_inner().message.ok_or_else(|| Status::internal("session-store answered without a message"))
    }

    /// The session's latest `count` messages, oldest first: asked newest first (one call
    /// for a window of up to a page), then put back in conversation order.
    pub async fn recent_messages(
        &self,
        acting: &ActingFor,
        session_id: &str,
        count: u32,
    ) -> Result<Vec<Message>, Status> {
        let context = self.context(acting)?;
        let mut messages = Vec::new();
        let mut page_token = String::new();
        while messages.len() < count as usize {
            let wanted = count - u32::try_from(messages.len()).unwrap_or(count);
            let request = ListMessagesRequest {
                session_id: session_id.to_owned(),
                limit: Some(i32::try_from(wanted.min(MESSAGES_PAGE)).unwrap_or(1)),
                sort_order: SortOrder::Desc as i32,
                page_token,
                ..ListMessagesRequest::default()
            };
            let mut client = self.sessions.clone();
            let page = context.clone().scope(client.list_messages(request)).await?.into_inner();
            let done = page.messages.is_empty() || page.next_page_token.is_empty();
            messages.extend(page.messages);
            if done {
                break;
            }
            page_token = page.next_page_token;
        }
        messages.truncate(count as usize);
        messages.reverse();
        Ok(messages)
    }

    /// Starts a streamed model call.
    pub async fn stream_chat(
        &self,
        acting: &ActingFor,
        request: ChatRequest,
    ) -> Result<Streaming<StreamChatResponse>, Status> {
        let mut client = self.llm.clone();
        let request = StreamChatRequest { request: Some(request) };
        let response = self.context(acting)?.scope(async move { client.stream_chat(request).await }).await?;
        Ok(response.into_inner())
    }

    /// The enabled tools among `names` (unknown or disabled names are left out).
    pub async fn tools(&self, acting: &ActingFor, names: &[String]) -> Result<Vec<Tool>, Status> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let request = ListToolsRequest {
            names: names.to_vec(),
            enabled: Some(true),
            limit: Some(100),
            ..ListToolsRequest::default()
        };
        let mut client = self.tools.clone();
        let response = self.context(acting)?.scope(async move { client.list_tools(request).await }).await?;
        Ok(response.into_inner().tools)
    }

    /// Invokes a tool.
    pub async fn invoke_tool(
        &self,
        acting: &ActingFor,
        request: InvokeToolRequest,
    ) -> Result<InvokeToolResponse, Status> {
        let mut client = self.tools.clone();
        let response = self.context(acting)?.scope(async move { client.invoke_tool(request).await }).await?;
        Ok(response.into_inner())
    }
}
