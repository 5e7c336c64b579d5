//! `google.protobuf.Struct` ↔ JSON: metadata, tool parameters and JSON schemas cross the
//! contract as `Struct` but are stored and sent to providers as JSON, and every service
//! must convert them the same way (integral numbers come back as integers).

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

/// A JSON object as a `Struct`.
pub fn object_to_struct(object: &Map<String, Json>) -> Struct {
    Struct { fields: object.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

/// A JSON value as a protobuf `Value`.
pub fn json_to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(json_to_value).collect() }),
        Json::Object(object) => Kind::StructValue(object_to_struct(object)),
    };
    Value { kind: Some(kind) }
}

/// A `Struct` as a JSON object. Numbers are JSON numbers; integral values come back as
/// integers (`3`, not `3.0`), which is how clients sent them.
pub fn struct_to_object(value: &Struct) -> Map<String, Json> {
    value.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect()
}

/// A protobuf `Value` as JSON (see [`struct_to_object`] for numbers).
pub fn value_to_json(value: &Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(object)) => Json::Object(struct_to_object(object)),
    }
}

/// Largest integer a double holds exactly (2^53).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

fn number(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INTEGER {
        // Exact: |n| ≤ 2^53 and integral.
        #[allow(clippy::cast_possible_truncation)]
        return Json::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Json::Null, Json::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_survive_a_struct_round_trip() {
        let object: Map<String, Json> = serde_json::from_str(
            r#"{"a": 1, "b": 2.5, "c": "x", "d": [true, null, {"e": -7}], "f": {"g": []}, "big": 9007199254740992}"#,
        )
        .unwrap();
        assert_eq!(struct_to_object(&object_to_struct(&object)), object);
    }
}
