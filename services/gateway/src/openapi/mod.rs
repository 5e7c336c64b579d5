//! The OpenAPI 3.1 document of the REST API, generated from the same descriptors the
//! gateway transcodes with, so the two cannot drift apart (ARCHITECTURE §3).
//!
//! [`document`] walks the [`RouteTable`]: one operation per route ([`operation`]), one
//! schema per message reachable from a route in each direction ([`schema`]), and the
//! seed's error bodies, headers and security schemes ([`errors`]). It is built once at
//! start-up; [`router`] serves it at `GET /openapi.json` and Swagger UI at `GET /docs`
//! ([`docs`]), both without credentials.

pub mod docs;
pub mod errors;
pub mod operation;
pub mod schema;

use std::collections::HashSet;

use agentmesh_proto::doc_comment;
use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::header;
use serde_json::{Map, Value as Json, json};

use self::schema::Schemas;
use crate::routes::RouteTable;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// Names of the security schemes; any one of them authenticates.
const API_KEY_AUTH: &str = "ApiKeyAuth";
const API_KEY_HEADER: &str = "ApiKeyHeader";
const JWT_AUTH: &str = "JWTAuth";

/// The security schemes, in the order they are offered.
pub fn security_schemes() -> [&'static str; 3] {
    [API_KEY_AUTH, API_KEY_HEADER, JWT_AUTH]
}

const DESCRIPTION: &str = "\
The agentmesh REST API: conversation sessions and messages, agents and their runs, tools and \
MCP servers, API keys and tokens, and the health of the mesh.

Every endpoint is transcoded from the gRPC contract, which is also served on this port. JSON \
uses snake_case field names, lowercase enum strings, RFC 3339 timestamps and UUID ids, and \
every field is present in responses (`null` when unset). List endpoints return a bare JSON \
array, with the number of matches in `X-Total-Count` and the next page, when there is one, in \
a `Link: <…>; rel=\"next\"` header. Streaming endpoints answer with Server-Sent Events.

## Authentication
Send an API key (`sk-` followed by at least 32 characters) as `Authorization: Bearer sk-…` or \
in an `X-API-Key` header, or an access token: `POST /api/v1/auth/token` exchanges a key for a \
30-minute JWT and a 7-day refresh token, and `POST /api/v1/auth/refresh` renews them. The \
health endpoints and token issuance need no credentials; other operations may need scopes, \
listed with each.

## Rate limits
Each caller has a per-minute budget set by its tier: 100 requests at the default tier (which \
is also how anonymous callers are counted, by IP address), 1,000 when authenticated and 5,000 \
at premium. Creating sessions (10 per minute) and executing agents (5 per minute) have their \
own, stricter budgets. Responses carry `X-RateLimit-Limit`, `X-RateLimit-Remaining` and \
`X-RateLimit-Reset`; a request over the limit gets 429 with `Retry-After`.

## Errors
Every error has the same JSON body, `ErrorResponse` (a 422 adds `validation_errors`, listing \
every invalid field), with a stable `code`. Each response carries an `X-Correlation-ID`, also \
in error bodies: quote it when reporting a problem, or send your own to follow a request \
through the services. An unknown path is a 404 and a known path with another method a 405 \
with `Allow`.";

/// The OpenAPI 3.1 document of every route in `table`.
pub fn document(table: &RouteTable) -> Json {
    let mut schemas = Schemas::default();
    for (name, schema) in errors::schemas() {
        schemas.insert(name, schema);
    }
    let mut paths = Map::new();
    let mut tags: Vec<Json> = Vec::new();
    let mut operation_ids = HashSet::new();
    for route in table.routes() {
        let service = route.rpc.parent_service();
        let tag = tag_name(service.name());
        if !tags.iter().any(|t| t["name"] == tag.as_str()) {
            let mut entry = json!({ "name": tag });
            if let Some(text) = doc_comment(&service.parent_file(), service.path()) {
                entry["description"] = Json::from(text);
            }
            tags.push(entry);
        }
        let id = unique_id(&lower_camel(route.rpc.name()), &mut operation_ids);
        let body = operation::operation(route, &id, &tag, &mut schemas);
        let item = paths.entry(operation::path(route)).or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = body;
    }
    let mut components = Map::new();
    components.insert("schemas".into(), Json::Object(schemas.into_components()));
    components.insert("responses".into(), Json::Object(errors::responses()));
    components.insert("parameters".into(), Json::Object(errors::parameters()));
    components.insert("headers".into(), Json::Object(errors::headers()));
    components.insert("securitySchemes".into(), security_scheme_objects());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "agentmesh API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": DESCRIPTION,
            "license": { "name": env!("CARGO_PKG_LICENSE"), "identifier": env!("CARGO_PKG_LICENSE") },
        },
        "servers": [{ "url": "/" }],
        "security": security_schemes().iter().map(|s| json!({ *s: [] })).collect::<Vec<_>>(),
        "tags": tags,
        "paths": paths,
        "components": components,
    })
}

/// `GET /openapi.json` (the document for `table`, serialized once) and Swagger UI at
/// `GET /docs`.
pub fn router(table: &RouteTable) -> Router {
    let body = match serde_json::to_vec(&document(table)) {
        Ok(bytes) => Bytes::from(bytes),
        Err(error) => {
            // Unreachable for a `Value`; serve an empty document rather than fail start-up.
            tracing::error!(%error, "the OpenAPI document could not be serialized");
            Bytes::from_static(b"{}")
        }
    };
    Router::new()
        .route(
            OPENAPI_PATH,
            get(move || {
                let body = body.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .merge(docs::router(OPENAPI_PATH))
}

fn security_scheme_objects() -> Json {
    json!({
        API_KEY_AUTH: {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "An API key as `Bearer sk-…` in the `Authorization` header.",
        },
        API_KEY_HEADER: {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An API key (`sk-…`, no `Bearer`) in the `X-API-Key` header.",
        },
        JWT_AUTH: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from `POST /api/v1/auth/token` (HS256, valid 30 minutes).",
        },
    })
}

/// The tag of a service's operations: `SessionService` → `session`.
fn tag_name(service: &str) -> String {
    let short = service.strip_suffix("Service").filter(|s| !s.is_empty()).unwrap_or(service);
    let mut tag = String::new();
    for (i, c) in short.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            tag.push('_');
        }
        tag.push(c.to_ascii_lowercase());
    }
    tag
}

/// `CreateSession` → `createSession`.
fn lower_camel(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map(|first| first.to_ascii_lowercase().to_string() + chars.as_str()).unwrap_or_default()
}

/// `id`, or `id2`, `id3`… when taken (additional bindings of one RPC, or two services
/// with an RPC of the same name).
fn unique_id(id: &str, taken: &mut HashSet<String>) -> String {
    let mut candidate = id.to_owned();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{id}{n}");
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_derived_predictably() {
        assert_eq!(tag_name("SessionService"), "session");
        assert_eq!(tag_name("McpService"), "mcp");
        assert_eq!(tag_name("AgentRunService"), "agent_run");
        assert_eq!(tag_name("Service"), "service");
        assert_eq!(lower_camel("BulkDeleteSessions"), "bulkDeleteSessions");
        let mut taken = HashSet::new();
        assert_eq!(unique_id("getRun", &mut taken), "getRun");
        assert_eq!(unique_id("getRun", &mut taken), "getRun2");
        assert_eq!(unique_id("getRun", &mut taken), "getRun3");
    }
}
