//! What browsers need from the REST API: CORS from `SECURITY_CORS_*` (an allow-list; `*`
//! is refused in production by configuration validation) and defensive response headers.

use agentmesh_runtime::config::SecurityConfig;
use http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

/// Response headers a browser may read from cross-origin responses.
const EXPOSED: [&str; 8] = [
    "x-correlation-id",
    "x-total-count",
    "link",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "idempotency-key",
];

/// CORS for the configured origins, methods and headers.
pub fn cors(security: &SecurityConfig) -> CorsLayer {
    let origins = if security.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(security.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let headers = if security.cors_headers.iter().any(|h| h == "*") {
        AllowHeaders::any()
    } else {
        AllowHeaders::list(security.cors_headers.iter().filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()))
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
