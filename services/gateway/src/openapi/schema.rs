//! JSON Schemas (the 2020-12 dialect OpenAPI 3.1 uses) for contract messages, in exactly
//! the JSON shape [`crate::json`] produces and accepts.
//!
//! A message gets two components, because the gateway is strict in different ways in each
//! direction:
//!
//! - **responses** (`agentmesh.session.v1.Session`): every field is present (so all are
//!   `required`, except members of a real `oneof`, shown only when set); fields with
//!   presence (optional scalars, messages) and enums (whose unset value is rendered as
//!   `null`) may be `null`.
//! - **requests** (`agentmesh.session.v1.CreateSessionRequest-Input`): unknown fields are
//!   refused (`additionalProperties: false`); `null` is accepted where it means "absent"
//!   (fields with presence, lists, maps) unless the field is required; the contract's
//!   field rules become `minLength`, `maxLength`, `format`, `minimum`, `maximum`,
//!   `maxItems` and `default`; integers are bounded by their protobuf type.
//!
//! Well-known types are inlined as their JSON form: `Timestamp` an RFC 3339 string,
//! `Struct` a free object, `ListValue` an array, `Value` anything.

use std::collections::BTreeMap;

use agentmesh_proto::agentmesh::common::v1::FieldRules;
use agentmesh_proto::doc_comment;
use agentmesh_proto::options::field_rules;
use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use crate::json::enum_names;

/// Which way a message travels, which decides how strict its schema is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the client: validated strictly by the gateway.
    Request,
    /// Rendered by the gateway: every field present.
    Response,
}

/// Prefix of a local schema reference.
pub const SCHEMA_REF: &str = "#/components/schemas/";

/// The component schemas reached so far, by name.
#[derive(Debug, Default)]
pub struct Schemas {
    components: BTreeMap<String, Json>,
    /// The fields left out of each `-Body` component (bodies minus path variables).
    bodies: BTreeMap<String, Vec<String>>,
}

impl Schemas {
    /// The components, to be placed under `components.schemas`.
    pub fn into_components(self) -> Map<String, Json> {
        self.components.into_iter().collect()
    }

    /// Adds a hand-written component (the error bodies).
    pub fn insert(&mut self, name: &str, schema: Json) {
        self.components.insert(name.to_owned(), schema);
    }

    /// A reference to `message`'s component in `direction`, generating it (and everything
    /// it reaches) on first use. Well-known types are returned inline.
    pub fn message(&mut self, message: &MessageDescriptor, direction: Direction) -> Json {
        if let Some(inline) = well_known(message) {
            return inline;
        }
        let name = component_name(message, direction);
        if !self.components.contains_key(&name) {
            // A placeholder first, so recursive messages end at a reference.
            self.components.insert(name.clone(), Json::Null);
            let schema = self.object(message, direction, &[]);
            self.components.insert(name.clone(), schema);
        }
        reference(&name)
    }

    /// A whole-message request body (`body: "*"`) without the fields bound by the path:
    /// the `-Input` component when nothing is left out, else a `-Body` component.
    pub fn body(&mut self, message: &MessageDescriptor, path_fields: &[String]) -> Json {
        if path_fields.is_empty() || well_known(message).is_some() {
            return self.message(message, Direction::Request);
        }
        let name = format!("{}-Body", message.full_name());
        match self.bodies.get(&name) {
            Some(left_out) if left_out.as_slice() == path_fields => reference(&name),
            // Another binding of the same message leaves out other fields: inline it.
            Some(_) => self.object(message, Direction::Request, path_fields),
            None => {
                self.bodies.insert(name.clone(), path_fields.to_vec());
                let schema = self.object(message, Direction::Request, path_fields);
                self.components.insert(name.clone(), schema);
                reference(&name)
            }
        }
    }

    /// The object schema of `message`, leaving out the fields named in `skip`.
    fn object(&mut self, message: &MessageDescriptor, direction: Direction, skip: &[String]) -> Json {
        let mut properties = Map::new();
        let mut required = Vec::new();
        let mut oneofs = Vec::new();
        for field in message.fields() {
            if skip.iter().any(|s| s == field.name()) {
                continue;
            }
            let rules = field_rules(&field).unwrap_or_default();
            let real_oneof = field.containing_oneof().filter(|oneof| !oneof.is_synthetic());
            let mut schema = self.field(&field, &rules, direction, true);
            if let Some(text) = doc_comment(&field.parent_file(), field.path()) {
                describe(&mut schema, &text);
            }
            properties.insert(field.name().to_owned(), schema);
            let always_there = match direction {
                Direction::Response => real_oneof.is_none(),
                Direction::Request => rules.required,
            };
            if always_there {
                required.push(Json::from(field.name()));
            }
            if let Some(oneof) = real_oneof
                && !oneofs.contains(&oneof.name().to_owned())
            {
                oneofs.push(oneof.name().to_owned());
            }
        }
        let mut schema = json!({ "type": "object", "properties": properties, "additionalProperties": false });
        if !required.is_empty() {
            schema["required"] = Json::Array(required);
        }
        let mut description = doc_comment(&message.parent_file(), message.path()).unwrap_or_default();
        for name in oneofs {
            let members: Vec<String> = message
                .oneofs()
                .filter(|o| o.name() == name)
                .flat_map(|o| o.fields().map(|f| format!("`{}`", f.name())).collect::<Vec<_>>())
                .collect();
            let note = match direction {
                Direction::Response => format!("At most one of {} is present (`{name}`).", members.join(", ")),
                Direction::Request => format!("Set at most one of {} (`{name}`).", members.join(", ")),
            };
            description = if description.is_empty() { note } else { format!("{description}\n\n{note}") };
        }
        if !description.is_empty() {
            schema["description"] = Json::from(description);
        }
        schema
    }

    /// The schema of one field: a list, a map or a single value. `may_be_null` is false
    /// for a named request body (the body itself must be the value).
    pub fn field(
        &mut self,
        field: &FieldDescriptor,
        rules: &FieldRules,
        direction: Direction,
        may_be_null: bool,
    ) -> Json {
        let request = direction == Direction::Request;
        if field.is_map() {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            };
            let values = self.single(&value_kind, &FieldRules::default(), direction);
            let schema = json!({ "type": "object", "additionalProperties": values });
            return if request && may_be_null { nullable(schema) } else { schema };
        }
        if field.is_list() {
            let mut schema = json!({ "type": "array", "items": self.single(&field.kind(), rules, direction) });
            if request {
                if rules.max_items > 0 {
                    schema["maxItems"] = Json::from(rules.max_items);
                }
                if rules.required {
                    schema["minItems"] = Json::from(1);
                } else if may_be_null {
                    schema = nullable(schema);
                }
            }
            return schema;
        }
        let mut schema = self.single(&field.kind(), rules, direction);
        let null_allowed = match direction {
            Direction::Response => field.supports_presence(),
            Direction::Request => may_be_null && field.supports_presence() && !rules.required,
        };
        if null_allowed {
            schema = nullable(schema);
        }
        if request && let Some(default) = default_value(rules) {
            schema["default"] = default;
        }
        schema
    }

    /// The schema of a single value of `kind` (a list item, a map value, a parameter).
    pub fn single(&mut self, kind: &Kind, rules: &FieldRules, direction: Direction) -> Json {
        let request = direction == Direction::Request;
        match kind {
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => {
                let mut schema = json!({ "type": "string" });
                if request {
                    let min_length = rules.min_length.max(u32::from(rules.required));
                    if min_length > 0 {
                        schema["minLength"] = Json::from(min_length);
                    }
                    if rules.max_length > 0 {
                        schema["maxLength"] = Json::from(rules.max_length);
                    }
                    if !rules.pattern.is_empty() {
                        schema["pattern"] = Json::from(rules.pattern.clone());
                    }
                    if rules.format == "json" {
                        // JSON text: JSON Schema's content keyword, not a `format` (which
                        // tools would not know).
                        schema["contentMediaType"] = Json::from("application/json");
                    } else if !rules.format.is_empty() {
                        schema["format"] = Json::from(rules.format.as_str());
                    }
                }
                schema
            }
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                integer(Some("int32"), i128::from(i32::MIN), i128::from(i32::MAX), rules, request)
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                integer(Some("int64"), i128::from(i64::MIN), i128::from(i64::MAX), rules, request)
            }
            Kind::Uint32 | Kind::Fixed32 => integer(None, 0, i128::from(u32::MAX), rules, request),
            Kind::Uint64 | Kind::Fixed64 => integer(None, 0, i128::from(u64::MAX), rules, request),
            // Non-finite values are rendered as `null`.
            Kind::Double if !request => json!({ "type": ["number", "null"], "format": "double" }),
            Kind::Float if !request => json!({ "type": ["number", "null"], "format": "float" }),
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Enum(descriptor) => enumeration(descriptor, direction),
            Kind::Message(message) => self.message(message, direction),
        }
    }
}

/// The component name of `message` in `direction`: the full protobuf name, with `-Input`
/// for the request form (the convention of tools that split models by direction).
pub fn component_name(message: &MessageDescriptor, direction: Direction) -> String {
    match direction {
        Direction::Response => message.full_name().to_owned(),
        Direction::Request => format!("{}-Input", message.full_name()),
    }
}

/// A `$ref` to the component `name`.
pub fn reference(name: &str) -> Json {
    json!({ "$ref": format!("{SCHEMA_REF}{name}") })
}

/// The same schema, also accepting `null`.
pub fn nullable(mut schema: Json) -> Json {
    let Some(object) = schema.as_object_mut() else { return schema };
    if object.is_empty() {
        return schema; // Anything, null included.
    }
    if object.contains_key("$ref") || object.contains_key("anyOf") {
        return json!({ "anyOf": [schema, { "type": "null" }] });
    }
    if let Some(Json::Array(values)) = object.get_mut("enum")
        && !values.contains(&Json::Null)
    {
        values.push(Json::Null);
    }
    match object.get_mut("type") {
        Some(Json::String(kind)) => {
            let kind = std::mem::take(kind);
            object.insert("type".into(), json!([kind, "null"]));
        }
        Some(Json::Array(kinds)) if !kinds.contains(&Json::from("null")) => kinds.push(Json::from("null")),
        _ => {}
    }
    schema
}

/// Adds a description beside a schema (allowed next to `$ref` in OpenAPI 3.1).
pub fn describe(schema: &mut Json, text: &str) {
    if let Some(object) = schema.as_object_mut() {
        object.insert("description".into(), Json::from(text));
    }
}

/// The parsed `default_value` rule, when set and valid JSON.
pub fn default_value(rules: &FieldRules) -> Option<Json> {
    (!rules.default_value.is_empty()).then(|| serde_json::from_str(&rules.default_value).ok()).flatten()
}

fn integer(format: Option<&str>, min: i128, max: i128, rules: &FieldRules, request: bool) -> Json {
    let mut schema = json!({ "type": "integer" });
    if let Some(format) = format {
        schema["format"] = Json::from(format);
    }
    if request {
        let min = rules.minimum.map_or(min, |m| i128::from(m).max(min));
        let max = rules.maximum.map_or(max, |m| i128::from(m).min(max));
        schema["minimum"] = number(min);
        schema["maximum"] = number(max);
    }
    schema
}

/// An integer bound as a JSON number (every bound fits an `i64` or a `u64`).
fn number(n: i128) -> Json {
    i64::try_from(n).map(Json::from).or_else(|_| u64::try_from(n).map(Json::from)).unwrap_or(Json::Null)
}

/// Lowercase value names; the unspecified value is rendered as `null` in responses and
/// cannot be sent.
fn enumeration(descriptor: &EnumDescriptor, direction: Direction) -> Json {
    let names: Vec<Json> = enum_names(descriptor).into_iter().map(Json::from).collect();
    let mut schema = json!({ "type": "string", "enum": names });
    if let Some(text) = doc_comment(&descriptor.parent_file(), descriptor.path()) {
        describe(&mut schema, &text);
    }
    match direction {
        Direction::Response => nullable(schema),
        Direction::Request => schema,
    }
}

/// The JSON form of the well-known types the gateway renders specially.
fn well_known(message: &MessageDescriptor) -> Option<Json> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Value" => json!({}),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &str) -> MessageDescriptor {
        agentmesh_proto::descriptor_pool().get_message_by_name(name).unwrap()
    }

    #[test]
    fn responses_list_every_field_and_allow_null_where_the_gateway_renders_it() {
        let mut schemas = Schemas::default();
        assert_eq!(
            schemas.message(&message("agentmesh.session.v1.Session"), Direction::Response),
            json!({ "$ref": "#/components/schemas/agentmesh.session.v1.Session" })
        );
        let components = schemas.into_components();
        let session = &components["agentmesh.session.v1.Session"];
        assert_eq!(session["required"].as_array().unwrap().len(), 8);
        assert_eq!(session["properties"]["id"]["type"], "string");
        assert_eq!(session["properties"]["title"]["type"], json!(["string", "null"]));
        assert_eq!(session["properties"]["message_count"]["format"], "int64");
        assert_eq!(session["properties"]["created_at"]["type"], json!(["string", "null"]));
        assert_eq!(session["properties"]["created_at"]["format"], "date-time");
        assert_eq!(session["properties"]["metadata"]["type"], json!(["object", "null"]));
        assert_eq!(session["additionalProperties"], false);
    }

    #[test]
    fn requests_carry_the_contract_rules() {
        let mut schemas = Schemas::default();
        schemas.message(&message("agentmesh.session.v1.CreateMessageRequest"), Direction::Request);
        let components = schemas.into_components();
        let create = &components["agentmesh.session.v1.CreateMessageRequest-Input"];
        assert_eq!(create["required"], json!(["session_id"]), "content may be empty on tool-call-only messages");
        assert_eq!(create["properties"]["content"]["type"], json!("string"));
        let call = &components["agentmesh.session.v1.ToolCall-Input"];
        assert_eq!(call["required"], json!(["id", "name", "arguments"]));
        assert_eq!(call["properties"]["id"]["maxLength"], json!(255));
        let arguments = &call["properties"]["arguments"];
        assert_eq!((arguments["contentMediaType"].clone(), arguments.get("format")), (json!("application/json"), None));
        let role = &create["properties"]["role"];
        assert_eq!(role["enum"], json!(["user", "assistant", "system", "tool"]));
        assert_eq!(role["default"], "user");
        assert_eq!(create["properties"]["parent_message_id"]["type"], json!(["string", "null"]));
        assert_eq!(create["properties"]["parent_message_id"]["format"], "uuid");
        assert_eq!(create["properties"]["tool_calls"]["type"], json!(["array", "null"]));
        assert_eq!(create["properties"]["metadata"]["type"], json!(["object", "null"]));
    }

    #[test]
    fn nullable_handles_every_shape() {
        assert_eq!(nullable(json!({})), json!({}));
        assert_eq!(nullable(json!({"$ref": "#/x"})), json!({"anyOf": [{"$ref": "#/x"}, {"type": "null"}]}));
        assert_eq!(
            nullable(json!({"type": "string", "enum": ["a"]})),
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
        assert_eq!(nullable(json!({"type": ["number", "null"]})), json!({"type": ["number", "null"]}));
    }
}
