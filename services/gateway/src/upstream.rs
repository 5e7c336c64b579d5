//! Calling any contract RPC with a dynamic message: the gateway's one way to reach a
//! service, whether the service runs in another process (a resilient
//! [`ServiceChannel`](agentmesh_runtime::client::ServiceChannel)) or inside the gateway
//! itself (its own health and auth services).

use std::collections::HashMap;
use std::convert::Infallible;

use agentmesh_runtime::ServiceName;
use bytes::Buf;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tower::util::BoxCloneSyncService;

use crate::routes::Route;

/// A channel to one service, remote or in-process.
pub type Upstream = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// The channel to each service the gateway routes to.
#[derive(Clone, Default)]
pub struct Upstreams {
    channels: HashMap<ServiceName, Upstream>,
}

impl Upstreams {
    /// Routes calls for `service` through `channel`.
    pub fn insert(&mut self, service: ServiceName, channel: Upstream) {
        self.channels.insert(service, channel);
    }

    fn channel(&self, service: ServiceName) -> Result<Upstream, Status> {
        self.channels.get(&service).cloned().ok_or_else(|| Status::unimplemented(format!("{service} is not routed")))
    }

    /// Sends a raw gRPC request to `service` (passthrough).
    pub async fn forward(
        &self,
        service: ServiceName,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, Status> {
        use tower::ServiceExt as _;
        let channel = self.channel(service)?;
        channel.oneshot(request).await.map_err(|never| match never {})
    }

    /// Calls the unary RPC of `route` on its owning service with `request`.
    pub async fn unary(
        &self,
        route: &Route,
        request: tonic::Request<DynamicMessage>,
    ) -> Result<tonic::Response<DynamicMessage>, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel(route.owner)?);
        grpc.ready().await.map_err(|error| Status::unavailable(error.to_string()))?;
        grpc.unary(request, route.grpc_path.clone(), DynamicCodec::new(route.rpc.output())).await
    }

    /// Calls the server-streaming RPC of `route` on its owning service with `request`.
    pub async fn server_streaming(
        &self,
        route: &Route,
        request: tonic::Request<DynamicMessage>,
    ) -> Result<tonic::Response<Streaming<DynamicMessage>>, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel(route.owner)?);
        grpc.ready().await.map_err(|error| Status::unavailable(error.to_string()))?;
        grpc.server_streaming(request, route.grpc_path.clone(), DynamicCodec::new(route.rpc.output())).await
    }
}

/// Encodes dynamic requests and decodes responses of a known type.
#[derive(Clone)]
pub struct DynamicCodec {
    output: MessageDescriptor,
}

impl DynamicCodec {
    /// A codec decoding `output` messages.
    pub fn new(output: MessageDescriptor) -> Self {
        Self { output }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder { output: self.output.clone() }
    }
}

/// Encodes any dynamic message.
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|error| Status::internal(format!("encoding failed: {error}")))
    }
}

/// Decodes messages of one type.
pub struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.output.clone(), bytes)
            .map(Some)
            .map_err(|error| Status::internal(format!("decoding failed: {error}")))
    }
}
