//! The schema a service's tables live in: checked once when configured, so the name can
//! be spliced into DDL, `search_path` and notification channels without further escaping.

use std::fmt;

/// Longest accepted schema name: PostgreSQL identifiers have 63 bytes, and derived names
/// such as the outbox channel `<schema>_outbox` must fit too.
pub const MAX_SCHEMA_LENGTH: usize = 56;

/// A schema name the library can use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

/// The schema name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid schema name {0:?}: use 1 to {MAX_SCHEMA_LENGTH} ASCII letters, digits or `_`, not starting with a digit"
)]
pub struct SchemaError(pub String);

impl Schema {
    /// `name` if it is 1 to [`MAX_SCHEMA_LENGTH`] ASCII letters, digits or `_`, not
    /// starting with a digit.
    pub fn new(name: &str) -> Result<Self, SchemaError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_SCHEMA_LENGTH
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if valid { Ok(Self(name.to_owned())) } else { Err(SchemaError(name.to_owned())) }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier (`"name"`).
    pub fn quoted(&self) -> String {
        quote_ident(&self.0)
    }

    /// The statement every pooled connection runs first: this schema, then `public`.
    pub fn set_search_path(&self) -> String {
        format!("SET search_path TO {}, public", self.quoted())
    }

    /// The notification channel `<schema>_<suffix>`, e.g. the outbox's wake-up channel.
    pub fn channel(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.0)
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `"name"`, escaping embedded quotes (valid schema names have none; this is defence in
/// depth for the one place identifiers are spliced).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_quoted_and_derived() {
        for ok in ["session_store", "gateway", "ss_0123456789abcdef", "_x", "A1", &"x".repeat(56)] {
            assert_eq!(Schema::new(ok).map(|s| s.as_str().to_owned()), Ok(ok.to_owned()));
        }
        for bad in ["", "1abc", "a-b", "a b", "a\"b", "é", &"x".repeat(57)] {
            assert_eq!(Schema::new(bad), Err(SchemaError(bad.to_owned())), "{bad:?}");
        }
        let schema = Schema::new("session_store").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(schema.quoted(), "\"session_store\"");
        assert_eq!(schema.set_search_path(), "SET search_path TO \"session_store\", public");
        assert_eq!(schema.channel("outbox"), "session_store_outbox");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
