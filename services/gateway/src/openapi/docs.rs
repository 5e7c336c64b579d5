//! Swagger UI at `/docs`, entirely from the binary: no CDN, so it works offline.
//!
//! The Swagger UI script and stylesheet come from the `swagger-ui-dist` crate, which embeds
//! the npm `swagger-ui-dist` files and serves them under `/docs/assets/`. The page and its
//! start-up script are ours (`docs/index.html`, `docs/init.js`): they point Swagger UI at
//! `/openapi.json` and turn off the call to the public validator service.

use axum::Router;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use http::header;
use swagger_ui_dist::{ApiDefinition, OpenApiSource};

/// Where the page lives.
pub const DOCS_PATH: &str = "/docs";

/// Where the Swagger UI assets are served (`swagger-ui.css`, `swagger-ui-bundle.js`).
const ASSETS_PATH: &str = "/docs/assets";

const INDEX_HTML: &str = include_str!("docs/index.html");
const INIT_JS: &str = include_str!("docs/init.js");

/// The routes of the documentation page and its assets; `openapi_url` is the document.
pub fn router(openapi_url: &str) -> Router {
    let assets = swagger_ui_dist::generate_routes(ApiDefinition {
        uri_prefix: ASSETS_PATH.to_owned(),
        api_definition: OpenApiSource::Uri(openapi_url.to_owned()),
        title: Some("agentmesh API".to_owned()),
    });
    Router::new()
        .route(DOCS_PATH, get(index))
        .route("/docs/", get(|| async { Redirect::permanent(DOCS_PATH) }))
        .route("/docs/init.js", get(init))
        .merge(assets)
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML)
}

async fn init() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], INIT_JS)
}
