//! grpc-web beside native gRPC on one port, for browsers.
//!
//! Browsers cannot speak native gRPC: `fetch` and XHR expose no HTTP/2 trailers (where gRPC
//! puts `grpc-status`) and no control over the HTTP version. grpc-web is the same protocol
//! reshaped for them: any HTTP version, the trailers sent as a last length-prefixed body
//! frame flagged `0x80`, and for `application/grpc-web-text` the whole body in base64.
//!
//! tonic-web's `GrpcWebService` does the translation both ways, but it also answers 400 to
//! every HTTP/1.1 request that is not grpc-web — REST, `/metrics`, WebSocket upgrades and
//! CORS preflights share this port — so [`GrpcWebLayer`] hands it only requests whose
//! content type is one of the four grpc-web ones and passes everything else on untouched.
//! It sits outside the per-call layer: authentication, deadlines, metrics and routing (the
//! gateway's passthrough included) only ever see native gRPC.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either, MapOk};
use futures::{FutureExt as _, TryFutureExt as _};
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use tower::{Layer, Service, ServiceExt as _};

/// The content types tonic-web translates; any other is not grpc-web.
const GRPC_WEB_CONTENT_TYPES: [&str; 4] = [
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web-text+proto",
];

/// Whether a request is grpc-web, by the exact content types tonic-web translates.
pub fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|content_type| GRPC_WEB_CONTENT_TYPES.contains(&content_type))
}

/// Whether a request is native gRPC: `application/grpc`, optionally with a `+subtype`
/// (`+proto`) or parameters — never `application/grpc-web…`.
pub fn is_native_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

/// Adds [`GrpcWeb`] around a service.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GrpcWebLayer;

impl<S> Layer<S> for GrpcWebLayer {
    type Service = GrpcWeb<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcWeb { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct GrpcWeb<S> {
    inner: S,
}

/// The future of a request passed on untouched.
type Plain<F, R> = MapOk<F, fn(R) -> Response>;

impl<S> Service<Request> for GrpcWeb<S>
where
    S: Service<Request, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Plain<S::Future, S::Response>, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if !is_grpc_web(request.headers()) {
            let plain = self.inner.call(request);
            return Either::Left(plain.map_ok(IntoResponse::into_response as fn(S::Response) -> Response));
        }
        // The translator needs a service of its own: a clone, which `oneshot` readies, while
        // `self.inner` stays ready for the next call. Only grpc-web calls pay for the clone.
        let native = self
            .inner
            .clone()
            .map_request(|request: http::Request<tonic::body::Body>| request.map(axum::body::Body::new))
            .map_response(IntoResponse::into_response);
        let translated = tonic_web::GrpcWebLayer::new().layer(native);
        Either::Right(translated.oneshot(request).map_ok(|response| response.map(axum::body::Body::new)).boxed())
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
    use http::{HeaderValue, Method, StatusCode};
    use prost::Message as _;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

    use super::*;

    fn content_type(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn content_types_tell_native_grpc_and_grpc_web_apart() {
        for native in ["application/grpc", "application/grpc+proto", "application/grpc;charset=utf-8"] {
            assert!(is_native_grpc(&content_type(native)), "{native}");
            assert!(!is_grpc_web(&content_type(native)), "{native}");
        }
        for web in GRPC_WEB_CONTENT_TYPES {
            assert!(is_grpc_web(&content_type(web)), "{web}");
            assert!(!is_native_grpc(&content_type(web)), "{web}");
        }
        for other in ["application/json", "application/grpcfoo", "text/plain"] {
            assert!(!is_native_grpc(&content_type(other)) && !is_grpc_web(&content_type(other)), "{other}");
        }
        assert!(!is_native_grpc(&HeaderMap::new()) && !is_grpc_web(&HeaderMap::new()));
    }

    /// `grpc.health.v1` (a real tonic service) and a plain HTTP route, behind the layer.
    fn app() -> axum::Router {
        let (reporter, health) = tonic_health::server::health_reporter();
        drop(reporter);
        tonic::service::Routes::new(health)
            .into_axum_router()
            .route("/plain", axum::routing::get(|| async { "plain" }))
            .layer(GrpcWebLayer)
    }

    fn framed(message: &impl prost::Message) -> Bytes {
        let mut frame = BytesMut::new();
        frame.put_u8(0);
        frame.put_u32(u32::try_from(message.encoded_len()).unwrap());
        message.encode(&mut frame).unwrap();
        frame.freeze()
    }

    /// The frames of a grpc-web body: messages, then the trailers frame's text.
    fn unframe(mut body: Bytes) -> (Vec<Bytes>, String) {
        let (mut messages, mut trailers) = (Vec::new(), String::new());
        while body.has_remaining() {
            let flag = body.get_u8();
            let length = body.get_u32() as usize;
            let payload = body.split_to(length);
            if flag & 0x80 == 0 {
                messages.push(payload);
            } else {
                trailers = String::from_utf8(payload.to_vec()).unwrap();
            }
        }
        (messages, trailers)
    }

    async fn call(request: Request) -> (StatusCode, HeaderMap, Bytes) {
        let response = app().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, bytes)
    }

    fn health_check(content_type: &'static str, accept: &'static str, body: Bytes) -> Request {
        http::Request::builder()
            .method(Method::POST)
            .version(http::Version::HTTP_11)
            .uri("/grpc.health.v1.Health/Check")
            .header(CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, accept)
            .body(axum::body::Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn binary_grpc_web_over_http1_gets_its_trailers_in_the_body() {
        let body = framed(&HealthCheckRequest { service: String::new() });
        let (status, headers, bytes) =
            call(health_check("application/grpc-web+proto", "application/grpc-web+proto", body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/grpc-web+proto");
        let (messages, trailers) = unframe(bytes);
        let answer = HealthCheckResponse::decode(messages[0].clone()).unwrap();
        assert_eq!(answer.status, ServingStatus::Serving as i32);
        assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    }

    #[tokio::test]
    async fn text_grpc_web_is_base64_both_ways() {
        let body = STANDARD.encode(framed(&HealthCheckRequest { service: String::new() }));
        let (status, headers, bytes) =
            call(health_check("application/grpc-web-text", "application/grpc-web-text", body.into())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/grpc-web-text+proto");
        // Each frame is base64-encoded on its own (padded), so decode quantum by quantum.
        let decoded: Vec<u8> = bytes.chunks(4).flat_map(|quantum| STANDARD.decode(quantum).unwrap()).collect();
        let (messages, trailers) = unframe(decoded.into());
        assert_eq!(HealthCheckResponse::decode(messages[0].clone()).unwrap().status, ServingStatus::Serving as i32);
        assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    }

    #[tokio::test]
    async fn other_http1_requests_pass_untouched() {
        let request = http::Request::get("/plain").body(axum::body::Body::empty()).unwrap();
        let (status, _, bytes) = call(request).await;
        assert_eq!((status, bytes.as_ref()), (StatusCode::OK, b"plain".as_ref()));
    }
}
