//! `agentmesh.llm.v1.LlmService` over gRPC: contract validation, then the [`Proxy`]; its
//! errors become statuses carrying the mesh's error details.

use std::pin::Pin;
use std::sync::Arc;

use agentmesh_proto::agentmesh::llm::v1::llm_service_server::LlmService;
use agentmesh_proto::agentmesh::llm::v1::{
    ChatRequest, ChatResponse, ListModelsRequest, ListModelsResponse, StreamChatRequest, StreamChatResponse,
};
use agentmesh_runtime::ApiError;
use agentmesh_runtime::validate::validate;
use futures::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::proxy::Proxy;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct LlmProxyService {
    proxy: Arc<Proxy>,
}

impl LlmProxyService {
    /// Serves `proxy`.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }
}

type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamChatResponse, Status>> + Send>>;

#[tonic::async_trait]
impl LlmService for LlmProxyService {
    async fn chat(&self, request: Request<ChatRequest>) -> Result<Response<ChatResponse>, Status> {
        let request = request.into_inner();
        validate(&request)?;
        Ok(Response::new(self.proxy.chat(request).await?))
    }

    async fn stream_chat(&self, request: Request<StreamChatRequest>) -> Result<Response<ChatStream>, Status> {
        let request = request.into_inner();
        validate(&request)?;
        let Some(request) = request.request else {
            return Err(ApiError::validation(vec![agentmesh_runtime::error::FieldViolation {
                field: "request".to_owned(),
                message: "is required".to_owned(),
                value: serde_json::Value::Null,
            }])
            .into());
        };
        let receiver = self.proxy.stream(request).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver).map(Ok))))
    }

    async fn list_models(&self, request: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        let request = request.into_inner();
        let provider = request.provider.as_deref().filter(|p| !p.is_empty());
        Ok(Response::new(self.proxy.catalog().list(provider)?))
    }
}
