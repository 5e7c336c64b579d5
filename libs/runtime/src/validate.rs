//! Contract-driven validation: the `agentmesh.common.v1.field` rules written in `proto/`
//! (required, lengths, formats, bounds, list sizes) are enforced here, for every service
//! and the gateway alike, so the contract and the checks can never drift apart.
//!
//! A request is read through its descriptor (prost-reflect) and every violation is
//! collected at once, named by its field path as a client sends it (`sessions[3].title`),
//! into one `validation_error` with field violations.
//!
//! One rule holds for every string of a request, annotated or not, down to the keys and
//! values inside `google.protobuf.Struct` metadata: it must not contain the NUL character
//! (U+0000). PostgreSQL text and jsonb cannot store it, so without this rule the same
//! request would be stored by the memory and Redis backends and fail inside PostgreSQL.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{LazyLock, PoisonError, RwLock};

use agentmesh_proto::agentmesh::common::v1::FieldRules;
use agentmesh_proto::descriptor_pool;
use agentmesh_proto::options::field_rules;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value};
use regex::Regex;
use serde_json::Value as Json;

use crate::error::{ApiError, FieldViolation};

/// Checks `message` against the field rules of its contract type; all violations at once.
pub fn validate<M: prost::Message + prost::Name>(message: &M) -> Result<(), ApiError> {
    let Some(descriptor) = agentmesh_proto::descriptor_pool().get_message_by_name(&M::full_name()) else {
        return Ok(());
    };
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).map_err(|error| {
        tracing::error!(%error, message = M::full_name(), "generated message does not decode with its own descriptor");
        ApiError::internal()
    })?;
    validate_dynamic(&dynamic)
}

/// Checks a message already in dynamic form (what the gateway holds after transcoding).
pub fn validate_dynamic(message: &DynamicMessage) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    check_message(message, &Path::Root, &mut violations);
    if violations.is_empty() { Ok(()) } else { Err(ApiError::validation(violations)) }
}

/// The rules of every field of every contract message, by message full name and field
/// position, decoded once: descriptors keep options encoded, and decoding them (or even
/// looking each field up by name) on every request was a measurable share of a call.
static CONTRACT_RULES: LazyLock<HashMap<String, Vec<Option<FieldRules>>>> = LazyLock::new(|| {
    let messages = descriptor_pool().all_messages();
    messages
        .map(|message| (message.full_name().to_owned(), message.fields().map(|f| field_rules(&f)).collect()))
        .collect()
});

/// What a field without rules is checked against.
static NO_RULES: LazyLock<FieldRules> = LazyLock::new(FieldRules::default);

/// The rules of `message`'s fields in declaration order: from the cache for the
/// contract's own descriptors, decoded for any other pool.
fn rules_of(message: &MessageDescriptor) -> Cow<'static, [Option<FieldRules>]> {
    if message.parent_pool() == descriptor_pool()
        && let Some(rules) = CONTRACT_RULES.get(message.full_name())
    {
        return Cow::Borrowed(rules.as_slice());
    }
    Cow::Owned(message.fields().map(|field| field_rules(&field)).collect())
}

/// Where a value sits in the request, as a client names it (`sessions[3].title`); written
/// out only when a violation needs it.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl Path<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Path::Root => {}
            Path::Field(parent, name) => {
                parent.write(out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Path::Index(parent, index) => {
                parent.write(out);
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
            Path::Key(parent, key) => {
                parent.write(out);
                out.push('.');
                out.push_str(&shown_key(key));
            }
        }
    }
}

fn check_message(message: &DynamicMessage, at: &Path<'_>, out: &mut Vec<FieldViolation>) {
    let descriptor = message.descriptor();
    let all_rules = rules_of(&descriptor);
    for (position, field) in descriptor.fields().enumerate() {
        let path = Path::Field(at, field.name());
        let declared = all_rules.get(position).and_then(Option::as_ref);
        let rules = declared.unwrap_or(&NO_RULES);
        let present = message.has_field(&field);
        if field.is_list() {
            let value = message.get_field(&field);
            let items = value.as_list().unwrap_or_default();
            if rules.required && items.is_empty() {
                out.push(violation(&path, "is required and must not be empty", Json::Array(vec![])));
            }
            if rules.max_items > 0 && items.len() > rules.max_items as usize {
                let message = format!("must have at most {} items", rules.max_items);
                out.push(violation(&path, &message, Json::from(items.len())));
            }
            for (index, item) in items.iter().enumerate() {
                check_value(&field, rules, item, &Path::Index(&path, index), out);
            }
        } else if field.is_map() {
            let value_field = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field(),
                _ => continue,
            };
            let value = message.get_field(&field);
            for (key, item) in value.as_map().into_iter().flatten() {
                let key = key_text(key);
                let entry = Path::Key(&path, &key);
                check_nul_key(&key, &entry, out);
                check_value(&value_field, &NO_RULES, item, &entry, out);
            }
        } else if !present && field.supports_presence() {
            if rules.required {
                out.push(violation(&path, "is required", Json::Null));
            }
        } else if present || declared.is_some() {
            // An unset field without rules holds its default, which breaks no rule.
            check_value(&field, rules, &message.get_field(&field), &path, out);
        }
    }
}

fn check_value(
    field: &FieldDescriptor,
    rules: &FieldRules,
    value: &Value,
    path: &Path<'_>,
    out: &mut Vec<FieldViolation>,
) {
    match value {
        Value::String(text) => check_string(rules, text, path, out),
        Value::I32(_) | Value::I64(_) | Value::U32(_) | Value::U64(_) => check_integer(rules, value, path, out),
        Value::EnumNumber(number) => {
            if let Kind::Enum(descriptor) = field.kind()
                && descriptor.get_value(*number).is_none()
            {
                out.push(violation(path, "is not one of the allowed values", Json::from(*number)));
            }
        }
        Value::Message(inner) => match inner.descriptor().full_name() {
            "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
                check_json_strings(inner, path, out);
            }
            _ => check_message(inner, path, out),
        },
        _ => {}
    }
}

/// The NUL rule inside a `Struct`, `Value` or `ListValue`: object keys and string values,
/// named by their JSON path (`metadata.tags[2]`).
fn check_json_strings(message: &DynamicMessage, path: &Path<'_>, out: &mut Vec<FieldViolation>) {
    for (field, value) in message.fields() {
        match (field.name(), value) {
            ("fields", Value::Map(entries)) => {
                for (key, item) in entries {
                    let key = key_text(key);
                    let entry = Path::Key(path, &key);
                    check_nul_key(&key, &entry, out);
                    if let Value::Message(inner) = item {
                        check_json_strings(inner, &entry, out);
                    }
                }
            }
            ("values", Value::List(items)) => {
                for (index, item) in items.iter().enumerate() {
                    if let Value::Message(inner) = item {
                        check_json_strings(inner, &Path::Index(path, index), out);
                    }
                }
            }
            ("string_value", Value::String(text)) if text.contains('\0') => out.push(nul_violation(path)),
            (_, Value::Message(inner)) => check_json_strings(inner, path, out),
            _ => {}
        }
    }
}

/// A map key as text, as JSON objects and field paths name it.
pub fn key_text(key: &MapKey) -> Cow<'_, str> {
    match key {
        MapKey::Bool(b) => Cow::Owned(b.to_string()),
        MapKey::I32(n) => Cow::Owned(n.to_string()),
        MapKey::I64(n) => Cow::Owned(n.to_string()),
        MapKey::U32(n) => Cow::Owned(n.to_string()),
        MapKey::U64(n) => Cow::Owned(n.to_string()),
        MapKey::String(text) => Cow::Borrowed(text),
    }
}

/// A map key as it appears in a field path: NUL shown as `\u0000`.
fn shown_key(key: &str) -> Cow<'_, str> {
    if key.contains('\0') { Cow::Owned(key.replace('\0', "\\u0000")) } else { Cow::Borrowed(key) }
}

fn check_nul_key(key: &str, path: &Path<'_>, out: &mut Vec<FieldViolation>) {
    if key.contains('\0') {
        out.push(violation(path, "must not contain the NUL character (U+0000) in its key", Json::Null));
    }
}

fn nul_violation(path: &Path<'_>) -> FieldViolation {
    violation(path, "must not contain the NUL character (U+0000)", Json::Null)
}

fn check_string(rules: &FieldRules, text: &str, path: &Path<'_>, out: &mut Vec<FieldViolation>) {
    if text.contains('\0') {
        out.push(nul_violation(path));
        return;
    }
    let length = text.chars().count();
    if rules.required && text.is_empty() {
        out.push(violation(path, "is required", Json::from(text)));
        return;
    }
    if rules.min_length > 0 && length < rules.min_length as usize {
        out.push(violation(path, &format!("must be at least {} characters long", rules.min_length), Json::from(text)));
    }
    if rules.max_length > 0 && length > rules.max_length as usize {
        // Echo only the start of an oversized value.
        let shown: String = text.chars().take(64).collect();
        out.push(violation(path, &format!("must be at most {} characters long", rules.max_length), Json::from(shown)));
    }
    if rules.format == "uuid" && !text.is_empty() && uuid::Uuid::try_parse(text).is_err() {
        out.push(violation(path, "must be a UUID", Json::from(text)));
    }
    if rules.format == "json" && !text.is_empty() && serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        let shown: String = text.chars().take(64).collect();
        out.push(violation(path, "must be valid JSON text", Json::from(shown)));
    }
    if !rules.pattern.is_empty() && !text.is_empty() && !matches_pattern(&rules.pattern, text) {
        let shown: String = text.chars().take(64).collect();
        out.push(violation(path, &format!("must match {}", rules.pattern), Json::from(shown)));
    }
}

/// Whether `text` matches the contract's `pattern`, compiled once per pattern. A pattern
/// that does not compile matches nothing, so the contract's mistake refuses input rather
/// than letting it through (a test compiles every pattern of the contract).
fn matches_pattern(pattern: &str, text: &str) -> bool {
    static COMPILED: LazyLock<RwLock<HashMap<String, Option<Regex>>>> = LazyLock::new(RwLock::default);
    if let Some(compiled) = COMPILED.read().unwrap_or_else(PoisonError::into_inner).get(pattern) {
        return compiled.as_ref().is_some_and(|regex| regex.is_match(text));
    }
    let compiled = Regex::new(pattern).ok();
    let matched = compiled.as_ref().is_some_and(|regex| regex.is_match(text));
    COMPILED.write().unwrap_or_else(PoisonError::into_inner).insert(pattern.to_owned(), compiled);
    matched
}

fn check_integer(rules: &FieldRules, value: &Value, path: &Path<'_>, out: &mut Vec<FieldViolation>) {
    let number = match value {
        Value::I32(n) => i128::from(*n),
        Value::I64(n) => i128::from(*n),
        Value::U32(n) => i128::from(*n),
        Value::U64(n) => i128::from(*n),
        _ => return,
    };
    let message = match (rules.minimum, rules.maximum) {
        (Some(min), Some(max)) if number < i128::from(min) || number > i128::from(max) => {
            format!("must be between {min} and {max}")
        }
        (Some(min), None) if number < i128::from(min) => format!("must be at least {min}"),
        (None, Some(max)) if number > i128::from(max) => format!("must be at most {max}"),
        _ => return,
    };
    out.push(violation(path, &message, Json::from(i64::try_from(number).unwrap_or(i64::MAX))));
}

fn violation(path: &Path<'_>, message: &str, value: Json) -> FieldViolation {
    FieldViolation { field: path.render(), message: message.to_owned(), value }
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::agentmesh::session::v1::{
        BulkCreateSessionsRequest, CreateMessageRequest, CreateSessionRequest, ListMessagesRequest,
        ListSessionsRequest, ToolCall,
    };

    use super::*;
    use crate::error::ErrorCode;

    fn fields(error: ApiError) -> Vec<String> {
        assert_eq!(error.code, ErrorCode::Validation);
        error.field_violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn strings_must_match_their_pattern() {
        use agentmesh_proto::agentmesh::mcp::v1::CreateToolRequest;
        let tool = |name: &str| CreateToolRequest {
            name: name.to_owned(),
            description: "d".to_owned(),
            schema: Some(prost_types::Struct::default()),
            ..Default::default()
        };
        validate(&tool("get_weather-2")).unwrap();
        for bad in ["get weather", "ünïcode", &"x".repeat(65)] {
            let error = validate(&tool(bad)).unwrap_err();
            assert_eq!(fields(error.clone()), ["name"], "{bad:?}");
            assert!(error.field_violations[0].message.starts_with("must match "), "{error:?}");
        }
    }

    #[test]
    fn every_pattern_of_the_contract_compiles() {
        let patterns: Vec<String> = descriptor_pool()
            .all_messages()
            .flat_map(|message| message.fields().collect::<Vec<_>>())
            .filter_map(|field| field_rules(&field))
            .map(|rules| rules.pattern)
            .filter(|pattern| !pattern.is_empty())
            .collect();
        assert!(!patterns.is_empty());
        for pattern in patterns {
            Regex::new(&pattern).unwrap_or_else(|error| panic!("{pattern}: {error}"));
        }
    }

    #[test]
    fn valid_requests_pass() {
        validate(&ListSessionsRequest { limit: Some(100), offset: Some(0), ..Default::default() }).unwrap();
        validate(&CreateMessageRequest {
            session_id: uuid::Uuid::now_v7().to_string(),
            content: "hi".into(),
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn the_seed_bounds_are_enforced_with_every_violation_named() {
        let error =
            validate(&ListSessionsRequest { limit: Some(0), offset: Some(-1), ..Default::default() }).unwrap_err();
        assert_eq!(fields(error.clone()), ["limit", "offset"]);
        assert_eq!(error.field_violations[0].message, "must be between 1 and 100");
        assert_eq!(error.field_violations[0].value, Json::from(0));
        let error = validate(&ListMessagesRequest {
            session_id: "nope".into(),
            limit: Some(201),
            role: Some(42),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(fields(error), ["session_id", "limit", "role"]);
    }

    #[test]
    fn nested_items_are_named_by_index_and_lists_are_bounded() {
        let long = CreateSessionRequest { title: Some("x".repeat(501)), ..Default::default() };
        let ok = CreateSessionRequest::default();
        let error = validate(&BulkCreateSessionsRequest { sessions: vec![ok.clone(), long] }).unwrap_err();
        assert_eq!(fields(error), ["sessions[1].title"]);
        let error = validate(&BulkCreateSessionsRequest { sessions: vec![ok; 101] }).unwrap_err();
        assert_eq!(fields(error), ["sessions"]);
        let error = validate(&BulkCreateSessionsRequest { sessions: vec![] }).unwrap_err();
        assert_eq!(fields(error), ["sessions"]);
    }

    #[test]
    fn required_strings_must_not_be_empty() {
        let error = validate(&CreateMessageRequest::default()).unwrap_err();
        assert_eq!(fields(error), ["session_id"]);
    }

    fn text(value: &str) -> prost_types::Value {
        prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(value.into())) }
    }

    fn object(entries: Vec<(&str, prost_types::Value)>) -> prost_types::Struct {
        prost_types::Struct { fields: entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() }
    }

    #[test]
    fn nul_characters_are_refused_in_every_string_with_its_path() {
        let list = prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(prost_types::ListValue {
                values: vec![text("fine"), text("x\0")],
            })),
        };
        let nested =
            prost_types::Value { kind: Some(prost_types::value::Kind::StructValue(object(vec![("tags", list)]))) };
        let request = CreateSessionRequest {
            user_id: Some("\0".into()),
            title: Some("a\0b".into()),
            metadata: Some(object(vec![("ok", text("fine")), ("k\0", text("v")), ("deep", nested)])),
        };
        let error = validate(&request).unwrap_err();
        let mut found = fields(error.clone());
        found.sort();
        assert_eq!(found, ["metadata.deep.tags[1]", "metadata.k\\u0000", "title", "user_id"]);
        assert!(error.field_violations.iter().all(|v| v.message.contains("NUL") && v.value.is_null()));
        let search = ListMessagesRequest {
            session_id: uuid::Uuid::now_v7().to_string(),
            search: Some("\0".into()),
            ..Default::default()
        };
        assert_eq!(fields(validate(&search).unwrap_err()), ["search"]);
        let clean = CreateSessionRequest { metadata: Some(object(vec![("k", text("v"))])), ..Default::default() };
        validate(&clean).unwrap();
    }

    #[test]
    fn json_text_must_parse_and_tool_calls_need_ids_and_names() {
        let call =
            |id: &str, arguments: &str| ToolCall { id: id.into(), name: "f".into(), arguments: arguments.into() };
        let request = CreateMessageRequest {
            session_id: uuid::Uuid::now_v7().to_string(),
            tool_calls: vec![call("a", "{\"x\": [1, null]}"), call("b", "{oops"), call("", "\"text\""), call("d", "")],
            tool_call_id: Some("t".repeat(256)),
            ..Default::default()
        };
        let error = validate(&request).unwrap_err();
        assert_eq!(
            fields(error),
            ["tool_calls[1].arguments", "tool_calls[2].id", "tool_calls[3].arguments", "tool_call_id"]
        );
    }
}
