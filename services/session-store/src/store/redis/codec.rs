//! How records are laid out in Redis hashes and how script replies are read back.
//!
//! A session is a hash with fields `id`, `tenant`, `owner`, `user_id`?, `title`?,
//! `metadata` (JSON text), `message_count`, `created_at`, `updated_at`, `last_activity`
//! (integer microseconds since the Unix epoch) and the internal `horizon` (see the TTL
//! notes in `lua/common.lua`). A message is a hash with `id`, `session_id`, `role`,
//! `content`, `content_lc` (lowercased content, for search), `metadata`, `tool_calls`
//! (JSON text: a list of `{id, name, arguments}`), `tool_call_id`?, `parent`?,
//! `created_at`, `updated_at`. JSON stays opaque text to Lua, so
//! numbers in metadata round-trip exactly (cjson would rewrite them).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fred::prelude::Value;
use uuid::Uuid;

use crate::store::{JsonObject, MessageRecord, Owner, Role, SessionRecord, ToolCall};

/// A reply or stored record this code cannot accept.
#[derive(Debug, thiserror::Error)]
pub(super) enum CodecError {
    /// The reply does not have the expected shape.
    #[error("unexpected reply from script {script}: {detail}")]
    Reply {
        /// The script (or command) that answered.
        script: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A stored field is missing.
    #[error("stored {record} lacks field {field}")]
    Missing {
        /// `session` or `message`.
        record: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A stored field does not parse.
    #[error("stored {record} has an invalid {field}: {detail}")]
    Invalid {
        /// `session` or `message`.
        record: &'static str,
        /// The field.
        field: &'static str,
        /// Why it does not parse.
        detail: String,
    },
}

/// The fields of one stored hash.
pub(super) type Fields = HashMap<String, String>;

/// An optional string argument as the scripts expect it: `-` when absent, `+value` when set.
pub(super) fn optional(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("+{value}"))
}

/// Microseconds since the Unix epoch.
pub(super) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// JSON text of a value that always serialises (maps with string keys).
pub(super) fn json(value: &impl serde::Serialize) -> String {
    // Serialising a map of JSON values cannot fail; an empty object is the safe fallback.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

/// A script's reply split into its status word and the rest.
pub(super) struct Reply {
    /// `ok`, `not_found`, `invalid_parent`, ...
    pub(super) status: String,
    /// The values after the status.
    pub(super) rest: std::vec::IntoIter<Value>,
    /// The script, for errors.
    pub(super) script: &'static str,
}

impl Reply {
    /// Splits `value`, the reply of `script`.
    pub(super) fn parse(script: &'static str, value: Value) -> Result<Self, CodecError> {
        let mut items = array(script, value)?.into_iter();
        let status = match items.next() {
            Some(first) => text(script, first)?,
            None => return Err(reply_error(script, "empty reply")),
        };
        Ok(Self { status, rest: items, script })
    }

    /// The next value as an integer.
    pub(super) fn integer(&mut self) -> Result<i64, CodecError> {
        match self.rest.next() {
            Some(Value::Integer(n)) => Ok(n),
            other => Err(reply_error(self.script, format!("expected an integer, got {other:?}"))),
        }
    }

    /// The next value as raw bytes.
    pub(super) fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        match self.rest.next() {
            Some(Value::Bytes(bytes)) => Ok(bytes.to_vec()),
            Some(Value::String(text)) => Ok(text.as_bytes().to_vec()),
            other => Err(reply_error(self.script, format!("expected bytes, got {other:?}"))),
        }
    }

    /// The remaining values, each a stored hash.
    pub(super) fn records(self) -> Result<Vec<Fields>, CodecError> {
        let script = self.script;
        self.rest.map(|value| fields(script, value)).collect()
    }

    /// The next value, a stored hash.
    pub(super) fn record(&mut self) -> Result<Fields, CodecError> {
        match self.rest.next() {
            Some(value) => fields(self.script, value),
            None => Err(reply_error(self.script, "missing record")),
        }
    }

    /// The remaining values as text.
    pub(super) fn texts(self) -> Result<Vec<String>, CodecError> {
        let script = self.script;
        self.rest.map(|value| text(script, value)).collect()
    }

    /// An error for a status this caller does not expect.
    pub(super) fn unexpected(&self) -> CodecError {
        reply_error(self.script, format!("unexpected status {:?}", self.status))
    }
}

fn reply_error(script: &'static str, detail: impl Into<String>) -> CodecError {
    CodecError::Reply { script, detail: detail.into() }
}

fn array(script: &'static str, value: Value) -> Result<Vec<Value>, CodecError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(reply_error(script, format!("expected an array, got {other:?}"))),
    }
}

fn text(script: &'static str, value: Value) -> Result<String, CodecError> {
    match value {
        Value::String(text) => Ok(text.to_string()),
        Value::Bytes(bytes) => {
            String::from_utf8(bytes.to_vec()).map_err(|error| reply_error(script, format!("non-UTF-8 text: {error}")))
        }
        Value::Integer(n) => Ok(n.to_string()),
        other => Err(reply_error(script, format!("expected text, got {other:?}"))),
    }
}

/// A hash as returned by `HGETALL` inside a script (flat field/value array) or by the
/// client (a map in RESP3).
pub(super) fn fields(script: &'static str, value: Value) -> Result<Fields, CodecError> {
    match value {
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(key, value)| {
                let key = key.into_string().ok_or_else(|| reply_error(script, "non-UTF-8 field name"))?;
                Ok((key, text(script, value)?))
            })
            .collect(),
        value => {
            let items = array(script, value)?;
            if items.len() % 2 != 0 {
                return Err(reply_error(script, "odd number of hash items"));
            }
            let mut fields = Fields::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                fields.insert(text(script, key)?, text(script, value)?);
            }
            Ok(fields)
        }
    }
}

/// Reads one record's fields.
struct Record<'a> {
    kind: &'static str,
    fields: &'a Fields,
}

impl Record<'_> {
    fn text(&self, field: &'static str) -> Result<&str, CodecError> {
        self.fields.get(field).map(String::as_str).ok_or(CodecError::Missing { record: self.kind, field })
    }

    fn optional(&self, field: &'static str) -> Option<String> {
        self.fields.get(field).cloned()
    }

    fn invalid(&self, field: &'static str, detail: impl ToString) -> CodecError {
        CodecError::Invalid { record: self.kind, field, detail: detail.to_string() }
    }

    fn uuid(&self, field: &'static str) -> Result<Uuid, CodecError> {
        self.text(field)?.parse().map_err(|error| self.invalid(field, error))
    }

    fn integer(&self, field: &'static str) -> Result<i64, CodecError> {
        self.text(field)?.parse().map_err(|error| self.invalid(field, error))
    }

    fn time(&self, field: &'static str) -> Result<DateTime<Utc>, CodecError> {
        let micros = self.integer(field)?;
        DateTime::from_timestamp_micros(micros).ok_or_else(|| self.invalid(field, "out of range"))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, field: &'static str) -> Result<T, CodecError> {
        serde_json::from_str(self.text(field)?).map_err(|error| self.invalid(field, error))
    }
}

/// A session from its stored hash.
pub(super) fn session(fields: &Fields) -> Result<SessionRecord, CodecError> {
    let record = Record { kind: "session", fields };
    Ok(SessionRecord {
        id: record.uuid("id")?,
        owner: Owner { tenant_id: record.text("tenant")?.to_owned(), user_id: record.text("owner")?.to_owned() },
        user_id: record.optional("user_id"),
        title: record.optional("title"),
        metadata: record.json::<JsonObject>("metadata")?,
        message_count: record.integer("message_count")?,
        last_activity: record.time("last_activity")?,
        created_at: record.time("created_at")?,
        updated_at: record.time("updated_at")?,
    })
}

/// A message from its stored hash.
pub(super) fn message(fields: &Fields) -> Result<MessageRecord, CodecError> {
    let record = Record { kind: "message", fields };
    let role = record.text("role")?;
    Ok(MessageRecord {
        id: record.uuid("id")?,
        session_id: record.uuid("session_id")?,
        role: Role::parse(role).ok_or_else(|| record.invalid("role", role))?,
        content: record.text("content")?.to_owned(),
        metadata: record.json::<JsonObject>("metadata")?,
        tool_calls: record.json::<Vec<ToolCall>>("tool_calls")?,
        tool_call_id: record.optional("tool_call_id"),
        parent_message_id: match record.optional("parent") {
            Some(parent) => Some(parent.parse().map_err(|error| record.invalid("parent", error))?),
            None => None,
        },
        created_at: record.time("created_at")?,
        updated_at: record.time("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn optional_arguments_are_unambiguous() {
        assert_eq!(optional(None), "-");
        assert_eq!(optional(Some("")), "+");
        assert_eq!(optional(Some("-")), "+-");
    }

    #[test]
    fn hashes_decode_from_flat_arrays() {
        let value = Value::Array(vec!["a".into(), "1".into(), "b".into(), Value::Bytes(b"2".to_vec().into())]);
        let fields = fields("test", value).unwrap();
        assert_eq!((fields["a"].as_str(), fields["b"].as_str()), ("1", "2"));
        assert!(super::fields("test", Value::Array(vec!["a".into()])).is_err());
    }

    #[test]
    fn sessions_report_missing_and_invalid_fields() {
        let mut stored: Fields = [
            ("id", Uuid::now_v7().to_string()),
            ("tenant", "t".into()),
            ("owner", "u".into()),
            ("metadata", r#"{"n":12345678901234567890}"#.into()),
            ("message_count", "3".into()),
            ("created_at", "1700000000123456".into()),
            ("updated_at", "1700000000123456".into()),
            ("last_activity", "1700000000123457".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let session = session(&stored).unwrap();
        assert_eq!(session.message_count, 3);
        assert_eq!(micros(session.last_activity), 1_700_000_000_123_457);
        assert_eq!(json(&session.metadata), r#"{"n":12345678901234567890}"#);
        stored.remove("owner");
        assert!(matches!(super::session(&stored), Err(CodecError::Missing { field: "owner", .. })));
        stored.insert("owner".into(), "u".into());
        stored.insert("created_at".into(), "soon".into());
        assert!(matches!(super::session(&stored), Err(CodecError::Invalid { field: "created_at", .. })));
    }
}
