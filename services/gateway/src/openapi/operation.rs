//! One OpenAPI operation per route, bound exactly as [`crate::rest`] binds requests:
//! template variables are path parameters; with `body: "*"` the whole request (minus the
//! path fields) is the JSON body; with a named body field that field's value is the body
//! (a bare array for bulk operations) and the other scalar fields are query parameters;
//! without a body every scalar field not in the path is a query parameter (message-typed
//! fields cannot be sent in a query). Responses follow [`crate::rest`] too: the
//! `response_body` field alone when set (bare arrays for lists, with `X-Total-Count` and
//! `Link`), 204 without a body, Server-Sent Events for streaming RPCs, and only the error
//! statuses the route can produce.

use agentmesh_proto::agentmesh::common::v1::FieldRules;
use agentmesh_proto::doc_comment;
use agentmesh_proto::options::field_rules;
use agentmesh_runtime::ServiceName;
use http::Method;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use super::errors::{ErrorStatus, common_headers, header_ref, parameter_ref, response_ref};
use super::schema::{Direction, Schemas, default_value};
use super::security_schemes;
use crate::routes::{Route, Segment};
use crate::sse;

/// The OpenAPI path of a route: its template with plain `{field}` variables.
pub fn path(route: &Route) -> String {
    route
        .segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(literal) => format!("/{literal}"),
            Segment::Variable(field) => format!("/{{{field}}}"),
        })
        .collect()
}

/// The operation object of `route`.
pub fn operation(route: &Route, operation_id: &str, tag: &str, schemas: &mut Schemas) -> Json {
    let input = route.rpc.input();
    let path_fields: Vec<String> = route
        .segments
        .iter()
        .filter_map(|segment| match segment {
            Segment::Variable(field) => Some(field.clone()),
            Segment::Literal(_) => None,
        })
        .collect();

    let mut parameters = Vec::new();
    for name in &path_fields {
        if let Some(field) = input.get_field_by_name(name) {
            parameters.push(path_parameter(&field, schemas));
        }
    }
    let query = query_fields(route, &input, &path_fields);
    for field in &query {
        parameters.push(query_parameter(field, schemas));
    }
    parameters.push(parameter_ref("CorrelationId"));
    if route.method == Method::POST && !route.allow_anonymous {
        parameters.push(parameter_ref("IdempotencyKey"));
    }
    if route.is_streaming() && input.get_field_by_name(sse::RESUME_FIELD).is_some() {
        parameters.push(parameter_ref("LastEventId"));
    }

    let comment = doc_comment(&route.rpc.parent_file(), route.rpc.path()).unwrap_or_default();
    let mut operation = json!({
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary(&comment, route),
        "description": description(&comment, route),
        "parameters": parameters,
        "x-grpc-method": route.rpc.full_name(),
    });
    if let Some(body) = request_body(route, &input, &path_fields, schemas) {
        operation["requestBody"] = body;
    }
    let mut responses = Map::new();
    responses.insert(route.success_status.as_u16().to_string(), success(route, schemas));
    let has_input = !path_fields.is_empty() || !query.is_empty() || !route.body.is_empty();
    for status in error_statuses(route, !path_fields.is_empty(), has_input) {
        responses.insert(status.status().to_string(), response_ref(status));
    }
    operation["responses"] = Json::Object(responses);
    if route.allow_anonymous {
        operation["security"] = json!([]);
    } else if !route.required_scopes.is_empty() {
        // OpenAPI 3.1 lets non-OAuth requirements name the roles (here: scopes) needed.
        let requirements: Vec<Json> = security_schemes()
            .iter()
            .map(|scheme| {
                let mut requirement = Map::new();
                requirement.insert((*scheme).to_owned(), json!(route.required_scopes));
                Json::Object(requirement)
            })
            .collect();
        operation["security"] = Json::Array(requirements);
    }
    if let Some(group) = &route.rate_limit_group {
        operation["x-rate-limit-group"] = Json::from(group.as_str());
    }
    operation
}

/// The error statuses `route` can answer with.
fn error_statuses(route: &Route, has_path: bool, has_input: bool) -> Vec<ErrorStatus> {
    let has_body = !route.body.is_empty();
    let writes = matches!(route.method, Method::POST | Method::PUT | Method::PATCH);
    ErrorStatus::ALL
        .into_iter()
        .filter(|status| match status {
            // Credentials that are sent are checked even where none are needed, and the
            // token RPCs refuse the credentials in their body.
            ErrorStatus::Unauthorized => true,
            ErrorStatus::Forbidden => !route.allow_anonymous,
            ErrorStatus::NotFound => has_path,
            ErrorStatus::Conflict => writes && !route.allow_anonymous,
            ErrorStatus::PayloadTooLarge | ErrorStatus::UnsupportedMediaType => has_body,
            ErrorStatus::Validation => has_input,
            // Only services reach external dependencies; the gateway's own RPCs do not.
            ErrorStatus::BadGateway | ErrorStatus::NotImplemented => route.owner != ServiceName::Gateway,
            ErrorStatus::RateLimited | ErrorStatus::Internal | ErrorStatus::Unavailable | ErrorStatus::Timeout => true,
        })
        .collect()
}

/// The request fields read from the query string.
fn query_fields(route: &Route, input: &MessageDescriptor, path_fields: &[String]) -> Vec<FieldDescriptor> {
    if route.body == "*" {
        return Vec::new();
    }
    input
        .fields()
        .filter(|field| !path_fields.iter().any(|p| p == field.name()) && field.name() != route.body)
        .filter(|field| !matches!(field.kind(), Kind::Message(_)))
        .collect()
}

fn path_parameter(field: &FieldDescriptor, schemas: &mut Schemas) -> Json {
    let rules = field_rules(field).unwrap_or_default();
    let mut schema = schemas.single(&field.kind(), &rules, Direction::Request);
    if field.kind() == Kind::String && schema.get("minLength").is_none() {
        schema["minLength"] = Json::from(1); // An empty segment matches no route.
    }
    let mut parameter = json!({ "name": field.name(), "in": "path", "required": true, "schema": schema });
    if let Some(text) = doc_comment(&field.parent_file(), field.path()) {
        parameter["description"] = Json::from(text);
    }
    parameter
}

fn query_parameter(field: &FieldDescriptor, schemas: &mut Schemas) -> Json {
    let rules = field_rules(field).unwrap_or_default();
    let schema = if field.is_list() {
        // Repeat the parameter for each element: `?tag=a&tag=b`.
        let mut schema = json!({ "type": "array", "items": schemas.single(&field.kind(), &rules, Direction::Request) });
        if rules.max_items > 0 {
            schema["maxItems"] = Json::from(rules.max_items);
        }
        if rules.required {
            schema["minItems"] = Json::from(1);
        }
        schema
    } else {
        let mut schema = schemas.single(&field.kind(), &rules, Direction::Request);
        if let Some(default) = default_value(&rules) {
            schema["default"] = default;
        }
        schema
    };
    let mut parameter = json!({ "name": field.name(), "in": "query", "required": rules.required, "schema": schema });
    if let Some(text) = doc_comment(&field.parent_file(), field.path()) {
        parameter["description"] = Json::from(text);
    }
    parameter
}

fn request_body(
    route: &Route,
    input: &MessageDescriptor,
    path_fields: &[String],
    schemas: &mut Schemas,
) -> Option<Json> {
    let (schema, description) = match route.body.as_str() {
        "" => return None,
        "*" => (schemas.body(input, path_fields), None),
        name => {
            let field = input.get_field_by_name(name)?;
            let rules = field_rules(&field).unwrap_or_default();
            (schemas.field(&field, &rules, Direction::Request, false), doc_comment(&field.parent_file(), field.path()))
        }
    };
    let mut body = json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    if let Some(description) = description {
        body["description"] = Json::from(description);
    }
    Some(body)
}

/// The success response: JSON (the `response_body` field or the whole message), nothing
/// for 204, or an event stream.
fn success(route: &Route, schemas: &mut Schemas) -> Json {
    let output = route.rpc.output();
    let shown = (!route.response_body.is_empty()).then(|| output.get_field_by_name(&route.response_body)).flatten();
    let mut headers = common_headers();
    let reason = route.success_status.canonical_reason().unwrap_or("Success");
    if route.is_streaming() {
        let event = match shown.as_ref().map(FieldDescriptor::kind) {
            Some(Kind::Message(message)) => message,
            _ => output,
        };
        let data = schemas.message(&event, Direction::Response);
        return json!({
            "description": stream_description(&event),
            "headers": headers,
            "content": {
                "text/event-stream": {
                    // One server-sent event, as SSE-aware tools (and OpenAPI 3.2's `itemSchema`)
                    // read the stream: its `data:` line holds the event as JSON.
                    "schema": {
                        "type": "object",
                        "properties": {
                            "data": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": data.clone(),
                            },
                            "event": { "type": "string" },
                            "id": { "type": "string" },
                            "retry": { "type": "integer", "minimum": 0 },
                        },
                        "required": ["data"],
                    },
                    // The schema of each event's `data:` line, for tools that read only this.
                    "x-event-data": data,
                },
            },
        });
    }
    if route.success_status == http::StatusCode::NO_CONTENT {
        return json!({ "description": format!("{reason}: done, no body."), "headers": headers });
    }
    let schema = match &shown {
        Some(field) if field.is_list() || field.is_map() => {
            schemas.field(field, &FieldRules::default(), Direction::Response, true)
        }
        // The gateway renders the field's value itself, never `null`.
        Some(field) => schemas.single(&field.kind(), &FieldRules::default(), Direction::Response),
        None => schemas.message(&output, Direction::Response),
    };
    if output.get_field_by_name("total_count").is_some() {
        headers.insert("X-Total-Count".into(), header_ref("TotalCount"));
    }
    if output.get_field_by_name("next_page_token").is_some() {
        headers.insert("Link".into(), header_ref("Link"));
    }
    json!({ "description": reason, "headers": headers, "content": { "application/json": { "schema": schema } } })
}

fn stream_description(event: &MessageDescriptor) -> String {
    let mut text = format!(
        "A stream of Server-Sent Events, one per `{}`: `data:` is the event as JSON (schema in \
         `x-event-data`), `id:` its `sequence` (send it back as `Last-Event-ID` to resume), `event:` its kind",
        event.name()
    );
    if let Some(kind) = event.oneofs().find(|o| o.name() == "kind") {
        let names: Vec<String> = kind.fields().map(|f| format!("`{}`", f.name())).collect();
        text.push_str(&format!(" ({})", names.join(", ")));
    }
    text.push_str(&format!(
        ". A comment line is sent every {} s while idle; a failure of the stream itself ends it with a `{}` \
         event whose data is an `ErrorResponse`.",
        sse::HEARTBEAT.as_secs(),
        sse::STREAM_ERROR
    ));
    text
}

/// The first sentence of the RPC's comment, else its name.
fn summary(comment: &str, route: &Route) -> String {
    let flat = comment.split_whitespace().collect::<Vec<_>>().join(" ");
    let first = flat.split(". ").next().unwrap_or_default().trim_end_matches('.').trim();
    if first.is_empty() { route.rpc.name().to_owned() } else { first.to_owned() }
}

fn description(comment: &str, route: &Route) -> String {
    let mut text = comment.to_owned();
    let mut note = |line: String| {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(&line);
    };
    if route.allow_anonymous {
        note("No credentials needed (credentials that are sent must be valid).".to_owned());
    } else if !route.required_scopes.is_empty() {
        let scopes: Vec<String> = route.required_scopes.iter().map(|s| format!("`{s}`")).collect();
        note(format!("Requires scope {}.", scopes.join(", ")));
    }
    if let Some(group) = &route.rate_limit_group {
        note(format!(
            "Also counts against the per-caller `{group}` limit (`RATE_LIMIT_{}_LIMIT` per minute).",
            group.to_ascii_uppercase()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;

    #[test]
    fn paths_use_plain_variables_and_summaries_the_first_sentence() {
        let table = RouteTable::from_pool(agentmesh_proto::descriptor_pool()).unwrap();
        let get = table.for_rpc("agentmesh.session.v1.SessionService.GetSession").unwrap();
        assert_eq!(path(get), "/api/v1/sessions/{session_id}");
        assert_eq!(
            summary("Gets one session by id; 404 when it does not exist.", get),
            "Gets one session by id; 404 when it does not exist"
        );
        assert_eq!(summary("Creates a session. Returns\nit.", get), "Creates a session");
        assert_eq!(summary("", get), "GetSession");
    }
}
