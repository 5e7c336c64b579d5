//! The OpenAPI document as tools see it: complete (every route, every reachable schema),
//! consistent (every `$ref` resolves, operation ids are unique), faithful to the contract's
//! bounds and statuses, and served with Swagger UI by a running gateway. Real gateway
//! responses are checked against the document's own schemas.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use agentmesh_gateway::openapi;
use agentmesh_gateway::routes::RouteTable;
use agentmesh_runtime::error::FieldViolation;
use agentmesh_runtime::{ApiError, ErrorCode};
use common::Mesh;
use serde_json::{Value, json};

fn table() -> RouteTable {
    RouteTable::from_pool(agentmesh_proto::descriptor_pool()).unwrap()
}

fn document() -> Value {
    openapi::document(&table())
}

fn operation<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    let operation = &doc["paths"][path][method];
    assert!(operation.is_object(), "no {method} {path}");
    operation
}

fn parameter<'a>(operation: &'a Value, name: &str) -> &'a Value {
    operation["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| {
        panic!("no parameter {name} in {}", operation["operationId"]);
    })
}

fn statuses(operation: &Value) -> Vec<&str> {
    operation["responses"].as_object().unwrap().keys().map(String::as_str).collect()
}

/// Follows a local `$ref` (`#/a/b`) in `doc`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?).filter(|v| !v.is_null())
}

/// Every `$ref` string anywhere under `value`.
fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref"
                    && let Some(reference) = inner.as_str()
                {
                    out.push(reference.to_owned());
                }
                references(inner, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, out)),
        _ => {}
    }
}

/// A small validator for the JSON Schema keywords the generator emits; returns the
/// first mismatch as `path: problem`.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let target = resolve(doc, reference).ok_or(format!("{at}: unresolved {reference}"))?;
        check(doc, target, value, at)?;
    }
    if let Some(options) = schema["anyOf"].as_array()
        && !options.iter().any(|option| check(doc, option, value, at).is_ok())
    {
        return Err(format!("{at}: {value} matches no anyOf branch"));
    }
    if let Some(kind) = schema.get("type") {
        let kinds: Vec<&str> = match kind {
            Value::String(k) => vec![k.as_str()],
            Value::Array(ks) => ks.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !kinds.iter().any(|k| *k == actual || (*k == "number" && actual == "integer")) {
            return Err(format!("{at}: {actual} is not {kinds:?}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} not in {allowed:?}"));
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        return Err(format!("{at}: {value} is not {constant}"));
    }
    if schema["format"] == "date-time"
        && let Some(text) = value.as_str()
    {
        chrono::DateTime::parse_from_rfc3339(text).map_err(|e| format!("{at}: {text}: {e}"))?;
    }
    if let Value::Object(object) = value {
        for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !object.contains_key(name) {
                return Err(format!("{at}: missing required {name}"));
            }
        }
        for (name, inner) in object {
            let path = format!("{at}.{name}");
            match (schema["properties"].get(name), schema.get("additionalProperties")) {
                (Some(property), _) => check(doc, property, inner, &path)?,
                (None, Some(Value::Bool(false))) => return Err(format!("{path}: not allowed")),
                (None, Some(extra)) if extra.is_object() => check(doc, extra, inner, &path)?,
                _ => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The schema of `operation`'s `status` response body (following a response `$ref`).
fn response_schema<'a>(doc: &'a Value, operation: &'a Value, status: &str) -> &'a Value {
    let mut response = &operation["responses"][status];
    if let Some(reference) = response["$ref"].as_str() {
        response = resolve(doc, reference).unwrap();
    }
    &response["content"]["application/json"]["schema"]
}

#[test]
fn every_route_is_one_operation_with_a_unique_id_and_the_header_is_complete() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "agentmesh API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let description = doc["info"]["description"].as_str().unwrap();
    for needle in ["Bearer sk-", "X-API-Key", "5,000", "Retry-After", "X-Correlation-ID"] {
        assert!(description.contains(needle), "description lacks {needle}");
    }
    assert_eq!(doc["servers"], json!([{ "url": "/" }]));
    assert_eq!(doc["security"], json!([{ "ApiKeyAuth": [] }, { "ApiKeyHeader": [] }, { "JWTAuth": [] }]));
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["ApiKeyAuth"]["name"], "Authorization");
    assert_eq!(schemes["ApiKeyHeader"]["name"], "X-API-Key");
    assert_eq!(
        (schemes["JWTAuth"]["scheme"].as_str(), schemes["JWTAuth"]["bearerFormat"].as_str()),
        (Some("bearer"), Some("JWT"))
    );

    let table = table();
    let mut ids = HashSet::new();
    let mut count = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            count += 1;
            let id = operation["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            assert!(!operation["summary"].as_str().unwrap().is_empty(), "{id}");
            assert_eq!(operation["tags"].as_array().unwrap().len(), 1, "{id}");
            let concrete = path.replace('{', "x").replace('}', "");
            let matched = table.find(&method.to_uppercase().parse().unwrap(), &concrete).unwrap();
            assert_eq!(matched.route.rpc.full_name(), operation["x-grpc-method"], "{method} {path}");
        }
    }
    assert_eq!(count, table.routes().len());
    for route in table.routes() {
        operation(&doc, &openapi::operation::path(route), &route.method.as_str().to_ascii_lowercase());
    }
    let tags: Vec<&str> = doc["tags"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for tag in ["session", "agent", "mcp", "health", "auth"] {
        assert!(tags.contains(&tag), "{tags:?}");
    }
    assert_eq!(operation(&doc, "/api/v1/sessions", "post")["operationId"], "createSession");
}

#[test]
fn every_reference_resolves_and_no_component_is_left_empty() {
    let doc = document();
    let mut found = Vec::new();
    references(&doc, &mut found);
    assert!(found.len() > 100, "only {} references", found.len());
    for reference in &found {
        assert!(resolve(&doc, reference).is_some(), "unresolved {reference}");
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        assert!(schema.is_object(), "{name} is {schema}");
    }
}

#[test]
fn the_session_list_has_the_seed_bounds_and_is_a_bare_array() {
    let doc = document();
    let list = operation(&doc, "/api/v1/sessions", "get");
    let limit = &parameter(list, "limit")["schema"];
    assert_eq!(
        (limit["type"].clone(), limit["minimum"].clone(), limit["maximum"].clone()),
        (json!("integer"), json!(1), json!(100))
    );
    assert_eq!(limit["default"], 20);
    assert_eq!(parameter(list, "limit")["in"], "query");
    let offset = &parameter(list, "offset")["schema"];
    assert_eq!((offset["minimum"].clone(), offset["default"].clone()), (json!(0), json!(0)));
    assert_eq!(offset["maximum"], i32::MAX);
    let sort_by = &parameter(list, "sort_by")["schema"];
    assert_eq!(sort_by["enum"], json!(["created_at", "updated_at", "last_activity"]));
    assert_eq!(sort_by["default"], "last_activity");
    assert_eq!(parameter(list, "sort_order")["schema"]["enum"], json!(["asc", "desc"]));
    assert_eq!(parameter(list, "user_id")["schema"]["maxLength"], 255);

    let ok = &list["responses"]["200"];
    let schema = &ok["content"]["application/json"]["schema"];
    assert_eq!(schema["type"], "array");
    assert_eq!(schema["items"]["$ref"], "#/components/schemas/agentmesh.session.v1.Session");
    for header in ["X-Total-Count", "Link", "X-Correlation-ID", "X-RateLimit-Remaining"] {
        assert!(ok["headers"].get(header).is_some(), "no {header}");
    }
    assert_eq!(statuses(list), ["200", "401", "403", "422", "429", "500", "501", "502", "503", "504"]);
    assert_eq!(list["security"][0]["ApiKeyAuth"], json!(["sessions:read"]));

    let messages = operation(&doc, "/api/v1/sessions/{session_id}/messages", "get");
    assert_eq!(parameter(messages, "limit")["schema"]["maximum"], 200);
    assert_eq!(parameter(messages, "limit")["schema"]["default"], 50);
    assert_eq!(parameter(messages, "role")["schema"]["enum"], json!(["user", "assistant", "system", "tool"]));
    let order = &parameter(messages, "sort_order")["schema"];
    assert_eq!((order["enum"].clone(), order["default"].clone()), (json!(["asc", "desc"]), json!("asc")));
    let session_id = parameter(messages, "session_id");
    assert_eq!((session_id["in"].as_str(), session_id["required"].as_bool()), (Some("path"), Some(true)));
    assert_eq!(session_id["schema"]["format"], "uuid");
    assert!(statuses(messages).contains(&"404"));
}

#[test]
fn bulk_operations_take_bare_arrays() {
    let doc = document();
    let delete = operation(&doc, "/api/v1/sessions/bulk-delete", "delete");
    let body = &delete["requestBody"];
    assert_eq!(body["required"], true);
    let schema = &body["content"]["application/json"]["schema"];
    assert_eq!(schema["type"], "array");
    assert_eq!(schema["items"], json!({ "type": "string", "minLength": 1, "format": "uuid" }));
    assert_eq!((schema["minItems"].clone(), schema["maxItems"].clone()), (json!(1), json!(100)));
    let no_content = &delete["responses"]["204"];
    assert!(no_content.get("content").is_none());
    assert!(delete["parameters"].as_array().unwrap().iter().all(|p| p["in"] != "query"));

    let create = operation(&doc, "/api/v1/sessions/bulk-create", "post");
    let schema = &create["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(schema["items"]["$ref"], "#/components/schemas/agentmesh.session.v1.CreateSessionRequest-Input");
    assert_eq!(schema["maxItems"], 100);
    let created = &create["responses"]["201"]["content"]["application/json"]["schema"];
    assert_eq!(created["type"], "array");
    assert_eq!(create["x-rate-limit-group"], "create_session");
}

#[test]
fn statuses_bodies_and_security_follow_the_contract() {
    let doc = document();
    let create = operation(&doc, "/api/v1/sessions", "post");
    assert_eq!(
        statuses(create),
        ["201", "401", "403", "409", "413", "415", "422", "429", "500", "501", "502", "503", "504"]
    );
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/agentmesh.session.v1.CreateSessionRequest-Input"
    );
    assert_eq!(
        create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/agentmesh.session.v1.Session"
    );
    assert!(
        create["parameters"].as_array().unwrap().iter().any(|p| p["$ref"] == "#/components/parameters/IdempotencyKey")
    );

    let delete = operation(&doc, "/api/v1/sessions/{session_id}", "delete");
    assert_eq!(statuses(delete), ["204", "401", "403", "404", "422", "429", "500", "501", "502", "503", "504"]);
    let update = operation(&doc, "/api/v1/sessions/{session_id}", "put");
    let body = &update["requestBody"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(body, "#/components/schemas/agentmesh.session.v1.UpdateSessionRequest-Body");
    let update_body = &doc["components"]["schemas"]["agentmesh.session.v1.UpdateSessionRequest-Body"];
    assert!(update_body["properties"].get("session_id").is_none(), "path fields are not body fields");
    assert_eq!(update_body["properties"]["title"]["maxLength"], 500);

    let health = operation(&doc, "/api/v1/health", "get");
    assert_eq!(health["security"], json!([]));
    assert_eq!(statuses(health), ["200", "401", "429", "500", "503", "504"]);

    let stream = operation(&doc, "/api/v1/agents/{agent_id}/execute/stream", "post");
    let events = &stream["responses"]["200"]["content"]["text/event-stream"];
    assert!(events["x-event-data"]["$ref"].is_string());
    assert_eq!(events["schema"]["required"], json!(["data"]), "one schema per event");
    assert_eq!(events["schema"]["properties"]["data"]["contentSchema"], events["x-event-data"]);
    assert!(stream["responses"]["200"]["description"].as_str().unwrap().contains("Last-Event-ID"));

    let responses = &doc["components"]["responses"];
    for (name, status) in [("RateLimited", 429), ("ServiceUnavailable", 503)] {
        assert!(responses[name]["headers"]["Retry-After"].is_object(), "{status}");
    }
    assert_eq!(
        responses["ValidationError"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ValidationErrorResponse"
    );
}

#[test]
fn request_schemas_are_strict_and_response_schemas_list_every_field() {
    let doc = document();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (name, schema) in schemas {
        if schema["type"] == "object" && schema.get("properties").is_some() {
            assert_eq!(schema["additionalProperties"], false, "{name}");
        }
    }
    let session = &schemas["agentmesh.session.v1.Session"];
    let properties: HashSet<&str> = session["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    let required: HashSet<&str> = session["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(properties, required);
    let role = &schemas["agentmesh.session.v1.Message"]["properties"]["role"];
    assert_eq!(role["enum"], json!(["user", "assistant", "system", "tool", null]));
    let input = &schemas["agentmesh.session.v1.CreateSessionRequest-Input"];
    assert!(input.get("required").is_none());
    assert_eq!(input["properties"]["user_id"]["type"], json!(["string", "null"]));
    assert_eq!(input["properties"]["user_id"]["maxLength"], 255);
}

#[test]
fn error_schemas_match_what_the_runtime_serializes() {
    let doc = document();
    let schema = json!({ "$ref": "#/components/schemas/ErrorResponse" });
    let validation_schema = json!({ "$ref": "#/components/schemas/ValidationErrorResponse" });
    for code in ErrorCode::ALL {
        let error = ApiError::new(code, "boom").with_detail("service_name", "x");
        let body = serde_json::to_value(error.to_response(Some("c-1"), "/api/v1/x")).unwrap();
        let against = if code == ErrorCode::Validation { &validation_schema } else { &schema };
        check(&doc, against, &body, "body").unwrap_or_else(|e| panic!("{code}: {e}"));
    }
    let invalid = ApiError::validation(vec![FieldViolation {
        field: "limit".into(),
        message: "must be between 1 and 100".into(),
        value: json!(500),
    }]);
    let body = serde_json::to_value(invalid.to_response(None, "/api/v1/sessions")).unwrap();
    check(&doc, &validation_schema, &body, "body").unwrap();
    assert!(check(&doc, &schema, &body, "body").is_err(), "a 422 body is not a plain ErrorResponse");
}

#[tokio::test]
async fn a_running_gateway_serves_the_document_and_swagger_ui_and_answers_as_documented() {
    let mesh = Mesh::start(&[]).await;
    let response = mesh.http.get(mesh.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, document());

    let page = mesh.http.get(mesh.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"), "no CDN: {html}");
    for (asset, content_type, needle) in [
        ("/docs/init.js", "text/javascript", "/openapi.json"),
        ("/docs/assets/swagger-ui-bundle.js", "text/javascript", "SwaggerUIBundle"),
        ("/docs/assets/swagger-ui.css", "text/css", ".swagger-ui"),
    ] {
        assert!(html.contains(asset), "{asset} not linked from /docs");
        let response = mesh.http.get(mesh.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with(content_type), "{asset}");
        assert!(response.text().await.unwrap().contains(needle), "{asset}");
    }

    // Real answers conform to the document.
    let doc = served;
    for (path, status) in [("/api/v1/health", "200"), ("/api/v1/health/services", "200")] {
        let response = mesh.http.get(mesh.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_str(), status, "{path}");
        assert!(response.headers().contains_key("x-correlation-id"));
        let body: Value = response.json().await.unwrap();
        let schema = response_schema(&doc, operation(&doc, path, "get"), status);
        check(&doc, schema, &body, path).unwrap_or_else(|e| panic!("{e}"));
    }
    let ready = mesh.http.get(mesh.url("/api/v1/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "services are missing here");
    let body: Value = ready.json().await.unwrap();
    check(&doc, response_schema(&doc, operation(&doc, "/api/v1/health/ready", "get"), "503"), &body, "ready").unwrap();
    let denied = mesh.http.get(mesh.url("/api/v1/sessions")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let body: Value = denied.json().await.unwrap();
    check(&doc, response_schema(&doc, operation(&doc, "/api/v1/sessions", "get"), "401"), &body, "401").unwrap();
}

/// A development key for [`Mesh::start`].
const KEY: &str = "sk-openapi0test0key0with0enough0random0chars";

/// Sends `method url` (with `body` as JSON, after checking it against the documented
/// request body of `template`), then checks the answer: a documented status equal to
/// `status`, and the body against that status's schema. Returns the body (`null` if none).
async fn conforms(
    doc: &Value,
    mesh: &Mesh,
    method: &str,
    template: &str,
    url: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let operation = operation(doc, template, method);
    let mut request = mesh.http.request(method.to_uppercase().parse().unwrap(), mesh.url(url));
    if let Some(body) = body {
        let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "no request body for {method} {template}");
        check(doc, schema, &body, "request").unwrap_or_else(|e| panic!("{method} {template}: {e}"));
        request = request.json(&body);
    }
    let response = request.header("Authorization", format!("Bearer {KEY}")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), status, "{method} {url}");
    assert!(
        operation["responses"].get(status.to_string()).is_some(),
        "{status} is not documented for {method} {template}"
    );
    assert!(response.headers().contains_key("x-correlation-id"));
    if status == 204 {
        assert!(response.bytes().await.unwrap().is_empty());
        return Value::Null;
    }
    let body: Value = response.json().await.unwrap();
    let schema = response_schema(doc, operation, &status.to_string());
    check(doc, schema, &body, &format!("{method} {url}")).unwrap_or_else(|e| panic!("{e}\n{body}"));
    body
}

#[tokio::test]
async fn session_and_message_answers_conform_to_the_document() {
    let mesh = Mesh::start(&[("SECURITY_API_KEYS", &format!("{KEY}=alice:premium"))]).await;
    let (doc, m) = (document(), &mesh);
    let sessions = "/api/v1/sessions";
    let one = "/api/v1/sessions/{session_id}";
    let messages = "/api/v1/sessions/{session_id}/messages";
    let message = "/api/v1/messages/{message_id}";

    let bare = conforms(&doc, m, "post", sessions, sessions, Some(json!({})), 201).await;
    assert_eq!(bare["title"], Value::Null, "unset optional fields are present as null: {bare}");
    let body = json!({ "title": "t", "metadata": { "k": [1, "x"] } });
    let session = conforms(&doc, m, "post", sessions, sessions, Some(body), 201).await;
    let url = format!("{sessions}/{}", session["id"].as_str().unwrap());
    conforms(&doc, m, "get", one, &url, None, 200).await;
    conforms(&doc, m, "put", one, &url, Some(json!({ "title": null, "user_id": "bob" })), 200).await;
    let list = conforms(&doc, m, "get", sessions, "/api/v1/sessions?limit=1&sort_order=asc", None, 200).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let invalid = conforms(&doc, m, "get", sessions, "/api/v1/sessions?limit=0", None, 422).await;
    assert_eq!(invalid["validation_errors"][0]["field"], "limit");

    let in_session = format!("{url}/messages");
    let body =
        json!({ "content": "hi", "role": "assistant", "tool_calls": [{ "id": "c1", "name": "f", "arguments": "{}" }] });
    let created = conforms(&doc, m, "post", messages, &in_session, Some(body), 201).await;
    assert_eq!(created["parent_message_id"], Value::Null);
    conforms(&doc, m, "get", messages, &format!("{in_session}?role=assistant"), None, 200).await;
    let message_url = format!("/api/v1/messages/{}", created["id"].as_str().unwrap());
    conforms(&doc, m, "put", message, &message_url, Some(json!({ "content": "edited" })), 200).await;
    conforms(&doc, m, "delete", message, &message_url, None, 204).await;
    conforms(&doc, m, "get", message, &message_url, None, 404).await;

    let bulk = "/api/v1/sessions/bulk-create";
    let created = conforms(&doc, m, "post", bulk, bulk, Some(json!([{}, { "title": "b" }])), 201).await;
    let ids: Vec<Value> = created.as_array().unwrap().iter().map(|s| s["id"].clone()).collect();
    let delete = "/api/v1/sessions/bulk-delete";
    conforms(&doc, m, "delete", delete, delete, Some(json!(ids)), 204).await;
    conforms(&doc, m, "delete", one, &url, None, 204).await;
    conforms(&doc, m, "get", one, &url, None, 404).await;
}
