//! JSON ⇄ protobuf in the seed's REST shape, for any contract message.
//!
//! Out: proto field names (snake_case), every field present (unset optional fields and
//! messages as `null`), enum values as the seed's lowercase strings (`AGENT_STATUS_IDLE` →
//! `"idle"`), 64-bit integers as JSON numbers, timestamps as RFC 3339, `Struct` as plain
//! JSON. In: the same shape, strictly — unknown fields, wrong types, unknown enum strings
//! and out-of-range numbers are field violations, all collected at once, never a panic.
//! Query parameters and path variables are parsed with the same rules from strings.

use std::fmt::Write as _;

use agentmesh_runtime::error::FieldViolation;
use agentmesh_runtime::validate::key_text;
use chrono::{DateTime, SecondsFormat, Utc};
use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{Map, Number, Value as Json};

/// JSON nesting deeper than this is refused (protects the recursive converters).
pub const MAX_DEPTH: usize = 64;

// ---- protobuf → JSON ----------------------------------------------------------------

/// A message as the seed's JSON object.
pub fn message_to_json(message: &DynamicMessage) -> Json {
    let descriptor = message.descriptor();
    if let Some(special) = well_known_to_json(message, &descriptor) {
        return special;
    }
    let mut object = Map::new();
    for field in descriptor.fields() {
        let set = message.has_field(&field);
        // Members of a real oneof appear only when set; proto3 `optional` fields (synthetic
        // oneofs) always appear, as `null` when unset.
        if field.containing_oneof().is_some_and(|oneof| !oneof.is_synthetic()) && !set {
            continue;
        }
        let value = if !set && field.supports_presence() && !field.is_list() && !field.is_map() {
            Json::Null
        } else {
            field_to_json(&field, &message.get_field(&field))
        };
        object.insert(field.name().to_owned(), value);
    }
    Json::Object(object)
}

/// One field's value (a list, map or single value) as JSON.
pub fn field_to_json(field: &FieldDescriptor, value: &Value) -> Json {
    match value {
        Value::List(items) => Json::Array(items.iter().map(|item| value_to_json(&field.kind(), item)).collect()),
        Value::Map(entries) => {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            };
            Json::Object(
                entries.iter().map(|(k, v)| (key_text(k).into_owned(), value_to_json(&value_kind, v))).collect(),
            )
        }
        single => value_to_json(&field.kind(), single),
    }
}

fn value_to_json(kind: &Kind, value: &Value) -> Json {
    match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(n) => Json::from(*n),
        Value::I64(n) => Json::from(*n),
        Value::U32(n) => Json::from(*n),
        Value::U64(n) => Json::from(*n),
        Value::F32(n) => float(f64::from(*n)),
        Value::F64(n) => float(*n),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(bytes) => {
            use base64::Engine as _;
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Value::EnumNumber(number) => match kind {
            Kind::Enum(descriptor) => enum_to_json(descriptor, *number),
            _ => Json::from(*number),
        },
        Value::Message(message) => message_to_json(message),
        Value::List(items) => Json::Array(items.iter().map(|item| value_to_json(kind, item)).collect()),
        Value::Map(_) => Json::Null,
    }
}

/// Largest integer a double holds exactly (2^53).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A double as JSON: integral values as integers (`3`, as clients sent them in `Struct`s),
/// non-finite values as `null`.
fn float(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INTEGER {
        // Exact: integral and within ±2^53.
        #[allow(clippy::cast_possible_truncation)]
        return Json::from(n as i64);
    }
    Number::from_f64(n).map_or(Json::Null, Json::Number)
}

/// `PREFIX_` of an enum's values: `MessageRole` → `MESSAGE_ROLE_`.
fn enum_prefix(descriptor: &EnumDescriptor) -> String {
    let mut prefix = String::new();
    for (i, c) in descriptor.name().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    prefix
}

/// The seed's string for an enum value; `null` for the zero (unspecified) value.
pub fn enum_to_json(descriptor: &EnumDescriptor, number: i32) -> Json {
    if number == 0 {
        return Json::Null;
    }
    match descriptor.get_value(number) {
        Some(value) => Json::String(enum_value_name(descriptor, value.name())),
        None => Json::from(number),
    }
}

/// `MESSAGE_ROLE_USER` → `user`.
pub fn enum_value_name(descriptor: &EnumDescriptor, full: &str) -> String {
    full.strip_prefix(&enum_prefix(descriptor)).unwrap_or(full).to_ascii_lowercase()
}

/// The seed's strings of an enum's values, without the unspecified one.
pub fn enum_names(descriptor: &EnumDescriptor) -> Vec<String> {
    descriptor.values().filter(|v| v.number() != 0).map(|v| enum_value_name(descriptor, v.name())).collect()
}

fn well_known_to_json(message: &DynamicMessage, descriptor: &MessageDescriptor) -> Option<Json> {
    let field = |name: &str| descriptor.get_field_by_name(name).map(|f| message.get_field(&f).into_owned());
    Some(match descriptor.full_name() {
        "google.protobuf.Timestamp" => {
            let seconds = field("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
            let nanos = field("nanos").and_then(|v| v.as_i32()).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
            DateTime::<Utc>::from_timestamp(seconds, nanos)
                .map_or(Json::Null, |at| Json::String(at.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
        }
        "google.protobuf.Struct" => match field("fields") {
            Some(Value::Map(entries)) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| (key_text(k).into_owned(), v.as_message().map_or(Json::Null, message_to_json)))
                    .collect(),
            ),
            _ => Json::Object(Map::new()),
        },
        "google.protobuf.ListValue" => match field("values") {
            Some(Value::List(items)) => {
                Json::Array(items.iter().map(|v| v.as_message().map_or(Json::Null, message_to_json)).collect())
            }
            _ => Json::Array(Vec::new()),
        },
        "google.protobuf.Value" => {
            let Some(oneof) = descriptor.oneofs().next() else { return Some(Json::Null) };
            let Some(set) = oneof.fields().find(|f| message.has_field(f)) else { return Some(Json::Null) };
            match message.get_field(&set).as_ref() {
                Value::EnumNumber(_) => Json::Null,
                other => value_to_json(&set.kind(), other),
            }
        }
        _ => return None,
    })
}

// ---- JSON → protobuf ----------------------------------------------------------------

/// Collects violations while converting.
#[derive(Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    fn push(&mut self, path: &str, message: impl Into<String>, value: &Json) {
        let shown = match value {
            Json::String(s) if s.chars().count() > 64 => Json::String(s.chars().take(64).collect()),
            Json::Array(_) | Json::Object(_) => Json::Null,
            other => other.clone(),
        };
        self.0.push(FieldViolation { field: path.to_owned(), message: message.into(), value: shown });
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

/// Fills `message` from a JSON object, strictly. `prefix` names fields in violations.
pub fn merge_object(message: &mut DynamicMessage, json: &Json, prefix: &str, out: &mut Violations) {
    merge_object_at(message, json, prefix, out, 0);
}

fn merge_object_at(message: &mut DynamicMessage, json: &Json, prefix: &str, out: &mut Violations, depth: usize) {
    let Json::Object(object) = json else {
        out.push(if prefix.is_empty() { "body" } else { prefix }, "must be a JSON object", json);
        return;
    };
    let descriptor = message.descriptor();
    for (name, value) in object {
        let path = join(prefix, name);
        let Some(field) = descriptor.get_field_by_name(name) else {
            out.push(&path, "is not a known field", value);
            continue;
        };
        if value.is_null() {
            if !field.supports_presence() && !field.is_list() && !field.is_map() {
                out.push(&path, "must not be null", value);
            }
            continue;
        }
        if let Some(converted) = field_from_json(&field, value, &path, out, depth + 1) {
            message.set_field(&field, converted);
        }
    }
}

/// The value of `field` from JSON, or `None` after recording why not.
pub fn field_from_json(
    field: &FieldDescriptor,
    json: &Json,
    path: &str,
    out: &mut Violations,
    depth: usize,
) -> Option<Value> {
    if depth > MAX_DEPTH {
        out.push(path, "is nested too deeply", &Json::Null);
        return None;
    }
    if field.is_map() {
        let Json::Object(entries) = json else {
            out.push(path, "must be a JSON object", json);
            return None;
        };
        let Kind::Message(entry) = field.kind() else { return None };
        let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let mut map = std::collections::HashMap::new();
        for (key, value) in entries {
            let item_path = format!("{path}.{key}");
            let key = match key_field.kind() {
                Kind::String => MapKey::String(key.clone()),
                _ => {
                    out.push(&item_path, "map keys other than strings are not supported", &Json::Null);
                    continue;
                }
            };
            if let Some(value) = single_from_json(&value_field.kind(), value, &item_path, out, depth + 1) {
                map.insert(key, value);
            }
        }
        return Some(Value::Map(map));
    }
    if field.is_list() {
        let Json::Array(items) = json else {
            out.push(path, "must be a JSON array", json);
            return None;
        };
        let kind = field.kind();
        let values: Vec<Value> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| single_from_json(&kind, item, &format!("{path}[{i}]"), out, depth + 1))
            .collect();
        return (values.len() == items.len()).then_some(Value::List(values));
    }
    single_from_json(&field.kind(), json, path, out, depth)
}

fn single_from_json(kind: &Kind, json: &Json, path: &str, out: &mut Violations, depth: usize) -> Option<Value> {
    let integer = |out: &mut Violations| -> Option<i128> {
        match json.as_i64().map(i128::from).or_else(|| json.as_u64().map(i128::from)) {
            Some(n) => Some(n),
            None => {
                out.push(path, "must be an integer", json);
                None
            }
        }
    };
    let ranged = |n: i128, min: i128, max: i128, out: &mut Violations| -> Option<i128> {
        if (min..=max).contains(&n) {
            Some(n)
        } else {
            out.push(path, format!("must be between {min} and {max}"), json);
            None
        }
    };
    match kind {
        Kind::Bool => json.as_bool().map(Value::Bool).or_else(|| {
            out.push(path, "must be a boolean", json);
            None
        }),
        Kind::String => json.as_str().map(|s| Value::String(s.to_owned())).or_else(|| {
            out.push(path, "must be a string", json);
            None
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            let n = ranged(integer(out)?, i128::from(i32::MIN), i128::from(i32::MAX), out)?;
            i32::try_from(n).ok().map(Value::I32)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            let n = ranged(integer(out)?, i128::from(i64::MIN), i128::from(i64::MAX), out)?;
            i64::try_from(n).ok().map(Value::I64)
        }
        Kind::Uint32 | Kind::Fixed32 => {
            let n = ranged(integer(out)?, 0, i128::from(u32::MAX), out)?;
            u32::try_from(n).ok().map(Value::U32)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            let n = ranged(integer(out)?, 0, i128::from(u64::MAX), out)?;
            u64::try_from(n).ok().map(Value::U64)
        }
        Kind::Double => json.as_f64().map(Value::F64).or_else(|| {
            out.push(path, "must be a number", json);
            None
        }),
        #[allow(clippy::cast_possible_truncation)]
        Kind::Float => json.as_f64().map(|n| Value::F32(n as f32)).or_else(|| {
            out.push(path, "must be a number", json);
            None
        }),
        Kind::Bytes => {
            use base64::Engine as _;
            let decoded = json.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
            decoded.map(|b| Value::Bytes(b.into())).or_else(|| {
                out.push(path, "must be a base64 string", json);
                None
            })
        }
        Kind::Enum(descriptor) => enum_from_json(descriptor, json, path, out),
        Kind::Message(descriptor) => message_from_json(descriptor, json, path, out, depth),
    }
}

/// An enum value from the seed's lowercase string.
fn enum_from_json(descriptor: &EnumDescriptor, json: &Json, path: &str, out: &mut Violations) -> Option<Value> {
    let found = json.as_str().and_then(|text| {
        descriptor.values().find(|v| v.number() != 0 && enum_value_name(descriptor, v.name()) == text)
    });
    found.map(|v| Value::EnumNumber(v.number())).or_else(|| {
        let mut message = String::from("must be one of: ");
        for (i, name) in enum_names(descriptor).iter().enumerate() {
            let _ = write!(message, "{}{name}", if i > 0 { ", " } else { "" });
        }
        out.push(path, message, json);
        None
    })
}

fn message_from_json(
    descriptor: &MessageDescriptor,
    json: &Json,
    path: &str,
    out: &mut Violations,
    depth: usize,
) -> Option<Value> {
    if depth > MAX_DEPTH {
        out.push(path, "is nested too deeply", &Json::Null);
        return None;
    }
    let mut message = DynamicMessage::new(descriptor.clone());
    match descriptor.full_name() {
        "google.protobuf.Struct" => {
            let Json::Object(object) = json else {
                out.push(path, "must be a JSON object", json);
                return None;
            };
            let fields = descriptor.get_field_by_name("fields")?;
            let Kind::Message(entry) = fields.kind() else { return None };
            let value_kind = entry.map_entry_value_field().kind();
            let mut map = std::collections::HashMap::new();
            for (key, value) in object {
                map.insert(MapKey::String(key.clone()), single_from_json(&value_kind, value, path, out, depth + 1)?);
            }
            message.set_field(&fields, Value::Map(map));
        }
        "google.protobuf.ListValue" => {
            let Json::Array(items) = json else {
                out.push(path, "must be a JSON array", json);
                return None;
            };
            let values = descriptor.get_field_by_name("values")?;
            let kind = values.kind();
            let converted: Option<Vec<Value>> =
                items.iter().map(|item| single_from_json(&kind, item, path, out, depth + 1)).collect();
            message.set_field(&values, Value::List(converted?));
        }
        "google.protobuf.Value" => {
            let (name, value) = match json {
                Json::Null => ("null_value", Value::EnumNumber(0)),
                Json::Bool(b) => ("bool_value", Value::Bool(*b)),
                Json::Number(n) => ("number_value", Value::F64(n.as_f64().unwrap_or(0.0))),
                Json::String(s) => ("string_value", Value::String(s.clone())),
                Json::Array(_) => {
                    let list = descriptor.get_field_by_name("list_value")?;
                    ("list_value", single_from_json(&list.kind(), json, path, out, depth + 1)?)
                }
                Json::Object(_) => {
                    let object = descriptor.get_field_by_name("struct_value")?;
                    ("struct_value", single_from_json(&object.kind(), json, path, out, depth + 1)?)
                }
            };
            message.set_field_by_name(name, value);
        }
        "google.protobuf.Timestamp" => {
            let parsed = json.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok());
            let Some(at) = parsed else {
                out.push(path, "must be an RFC 3339 timestamp", json);
                return None;
            };
            message.set_field_by_name("seconds", Value::I64(at.timestamp()));
            message.set_field_by_name("nanos", Value::I32(i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0)));
        }
        _ => merge_object_at(&mut message, json, path, out, depth + 1),
    }
    Some(Value::Message(message))
}

/// Sets a top-level field from a query parameter or path variable (always a string on
/// the wire). Repeated fields accumulate one value per occurrence.
pub fn set_from_text(message: &mut DynamicMessage, field: &FieldDescriptor, raw: &str, out: &mut Violations) {
    let json = text_to_json(&field.kind(), raw);
    let Some(value) = single_from_json(&field.kind(), &json, field.name(), out, 0) else { return };
    if field.is_list() {
        let mut items = message.get_field(field).as_list().map(<[Value]>::to_vec).unwrap_or_default();
        items.push(value);
        message.set_field(field, Value::List(items));
    } else {
        message.set_field(field, value);
    }
}

/// Reads a string as the JSON value its field kind expects (`"20"` → `20` for integers).
fn text_to_json(kind: &Kind, raw: &str) -> Json {
    match kind {
        Kind::Bool => match raw {
            "true" | "1" => Json::Bool(true),
            "false" | "0" => Json::Bool(false),
            other => Json::String(other.to_owned()),
        },
        Kind::Double | Kind::Float => {
            raw.parse::<f64>().ok().and_then(Number::from_f64).map_or(Json::String(raw.to_owned()), Json::Number)
        }
        Kind::String | Kind::Enum(_) | Kind::Bytes | Kind::Message(_) => Json::String(raw.to_owned()),
        _ => raw
            .parse::<i64>()
            .map(Json::from)
            .or_else(|_| raw.parse::<u64>().map(Json::from))
            .unwrap_or_else(|_| Json::String(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests;
