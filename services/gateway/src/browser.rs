//! What browsers need from the gateway's port: CORS from `SECURITY_CORS_*` (an allow-list;
//! `*` origins are refused in production by configuration validation), applied to every
//! request — REST, native gRPC and grpc-web alike — and defensive response headers.
//!
//! grpc-web clients send their own request headers and read the call's status from
//! response headers, so those are always allowed and exposed, whatever
//! `SECURITY_CORS_HEADERS` lists. `SECURITY_CORS_HEADERS=*` echoes the headers a preflight
//! asks for rather than answering a literal `*`: browsers never let `*` cover
//! `Authorization`, and `*` means nothing at all to a request with credentials.

use agentmesh_runtime::config::SecurityConfig;
use http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

/// Response headers a browser may read from cross-origin responses: the REST API's, then
/// the gRPC status a grpc-web client needs (in the headers of a trailers-only response).
const EXPOSED: [&str; 11] = [
    "x-correlation-id",
    "x-total-count",
    "link",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "idempotency-key",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
];

/// Request headers grpc-web clients (and API callers) send, always allowed.
const GRPC_WEB_REQUEST_HEADERS: [&str; 6] =
    ["x-grpc-web", "x-user-agent", "grpc-timeout", "content-type", "authorization", "x-api-key"];

/// CORS for the configured origins, methods and headers.
pub fn cors(security: &SecurityConfig) -> CorsLayer {
    let origins = if security.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(security.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let headers = if security.cors_headers.iter().any(|h| h == "*") {
        AllowHeaders::mirror_request()
    } else {
        let mut names: Vec<HeaderName> =
            security.cors_headers.iter().filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()).collect();
        for name in GRPC_WEB_REQUEST_HEADERS.map(HeaderName::from_static) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        AllowHeaders::list(names)
    };
    let methods: Vec<Method> =
        security.cors_methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect();
    let exposed: Vec<HeaderName> = EXPOSED.iter().map(|h| HeaderName::from_static(h)).collect();
    CorsLayer::new().allow_origin(origins).allow_methods(methods).allow_headers(headers).expose_headers(exposed)
}

/// Headers that keep browsers from sniffing, framing or leaking API responses.
pub fn security_headers() -> [SetResponseHeaderLayer<HeaderValue>; 3] {
    [
        SetResponseHeaderLayer::if_not_present(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        SetResponseHeaderLayer::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        SetResponseHeaderLayer::if_not_present(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ]
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use agentmesh_runtime::Config;
    use axum::body::Body;
    use http::{HeaderMap, Request, Response};
    use tower::{Layer as _, ServiceExt as _};

    use super::*;

    const ORIGIN: &str = "https://app.example.com";

    fn security(env: &[(&str, &str)]) -> SecurityConfig {
        let vars = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::load(None, vars).unwrap().security
    }

    /// The headers of the preflight answer for a grpc-web call from `origin`.
    async fn preflight(security: &SecurityConfig, origin: &str, requested: &str) -> HeaderMap {
        let service = tower::service_fn(|_: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
        let request = Request::builder()
            .method(Method::OPTIONS)
            .uri("/agentmesh.session.v1.SessionService/GetSession")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, requested)
            .body(Body::empty())
            .unwrap();
        cors(security).layer(service).oneshot(request).await.unwrap().headers().clone()
    }

    fn listed(headers: &HeaderMap, name: HeaderName) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(',').map(|h| h.trim().to_ascii_lowercase()).collect::<Vec<_>>())
            .collect()
    }

    #[tokio::test]
    async fn grpc_web_headers_are_allowed_beside_a_configured_list() {
        let security = security(&[("SECURITY_CORS_ORIGINS", ORIGIN), ("SECURITY_CORS_HEADERS", "x-custom")]);
        let headers = preflight(&security, ORIGIN, "x-grpc-web,content-type").await;
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], ORIGIN);
        let allowed = listed(&headers, header::ACCESS_CONTROL_ALLOW_HEADERS);
        for name in ["x-custom"].into_iter().chain(GRPC_WEB_REQUEST_HEADERS) {
            assert!(allowed.iter().any(|h| h == name), "{name} not in {allowed:?}");
        }
    }

    #[tokio::test]
    async fn a_wildcard_header_list_mirrors_the_request() {
        let security = security(&[("SECURITY_CORS_ORIGINS", ORIGIN), ("SECURITY_CORS_HEADERS", "*")]);
        let headers = preflight(&security, ORIGIN, "authorization,x-grpc-web,x-anything").await;
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_HEADERS], "authorization,x-grpc-web,x-anything");
    }

    #[tokio::test]
    async fn strangers_get_no_allow_origin() {
        let security = security(&[("SECURITY_CORS_ORIGINS", ORIGIN)]);
        let headers = preflight(&security, "https://evil.example.com", "x-grpc-web").await;
        assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN), "{headers:?}");
    }

    #[tokio::test]
    async fn grpc_status_headers_are_exposed() {
        let security = security(&[("SECURITY_CORS_ORIGINS", ORIGIN)]);
        let service = tower::service_fn(|_: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
        let request = Request::post("/x").header(header::ORIGIN, ORIGIN).body(Body::empty()).unwrap();
        let response = cors(&security).layer(service).oneshot(request).await.unwrap();
        let exposed = listed(response.headers(), header::ACCESS_CONTROL_EXPOSE_HEADERS);
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-ratelimit-remaining"] {
            assert!(exposed.iter().any(|h| h == name), "{name} not in {exposed:?}");
        }
    }
}
