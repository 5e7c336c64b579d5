//! The contract's paged lists (`limit`, `offset`, `page_token` in; items,
//! `next_page_token`, `total_count` out), shared by every service that lists records, so
//! each one only says what its cursor is and what a query's filters are.
//!
//! A page token holds the position of the last item of a page (the service's cursor
//! type, serialized with serde) and a fingerprint of the query it came from, so a token
//! cannot be replayed against a different filter or sort order (that would silently skip
//! or repeat items). Tokens are base64url JSON: not secret, but validated like any other
//! input; like every request string ([`crate::validate`]), no string in a token may
//! contain NUL.
//!
//! ```
//! use agentmesh_runtime::paging::{self, Page, PageRequest};
//! use serde::{Deserialize, Serialize};
//!
//! /// Items are listed by name: the last name seen is the position.
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct ByName {
//!     #[serde(rename = "n")]
//!     name: String,
//! }
//!
//! # fn main() -> Result<(), agentmesh_runtime::ApiError> {
//! let fingerprint = paging::query_fingerprint(&["agents", &paging::filter_part(Some(true))]);
//! // The first page: no token yet.
//! let request: PageRequest<ByName> = PageRequest::parse(Some(2), None, "", &fingerprint, 20)?;
//! assert_eq!((request.limit, request.offset, request.after), (2, 0, None));
//!
//! // The store answers a page; the next token continues after its last item.
//! let page = Page { items: vec!["alpha".to_owned(), "beta".to_owned()], total: 3, has_more: true };
//! let token = page.next_token(|name| ByName { name: name.clone() }, &fingerprint);
//! let next: PageRequest<ByName> = PageRequest::parse(Some(2), Some(5), &token, &fingerprint, 20)?;
//! assert_eq!(next.after, Some(ByName { name: "beta".into() }));
//! assert_eq!(next.offset, 0, "a token takes precedence over offset");
//! assert_eq!(page.total_count(), 3);
//! # Ok(())
//! # }
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, FieldViolation};

/// A token's JSON: the cursor's own fields, then the query fingerprint.
#[derive(Serialize, Deserialize)]
struct Token<C> {
    #[serde(flatten)]
    cursor: C,
    /// Fingerprint of the query.
    q: String,
}

/// A fingerprint of everything that shapes a listing except its position: its name and
/// its filters and sort order, each as one part (parts are separated, so `["a", "bc"]`
/// and `["ab", "c"]` differ).
pub fn query_fingerprint(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    URL_SAFE_NO_PAD.encode(&hasher.finalize()[..12])
}

/// An optional filter as a fingerprint part that tells "absent" from any value (also
/// from an empty one).
pub fn filter_part<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("+{v}"))
}

/// The token continuing after `cursor` for the query with `fingerprint`.
pub fn encode<C: Serialize>(cursor: &C, fingerprint: &str) -> String {
    let token = Token { cursor, q: fingerprint.to_owned() };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this service issued.
    #[error("is not a valid page token")]
    Malformed,
    /// Issued for another filter or sort order.
    #[error("belongs to a different query (filters and sort must stay the same while paging)")]
    OtherQuery,
}

/// The position in `token`, if it was issued for the query with `fingerprint`.
pub fn decode<C: DeserializeOwned>(token: &str, fingerprint: &str) -> Result<C, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if json.get("q").and_then(Value::as_str) != Some(fingerprint) {
        return Err(if json.get("q").is_some() { TokenError::OtherQuery } else { TokenError::Malformed });
    }
    if holds_nul(&json) {
        return Err(TokenError::Malformed);
    }
    let token: Token<C> = serde_json::from_value(json).map_err(|_| TokenError::Malformed)?;
    Ok(token.cursor)
}

/// Whether any string in `json` contains NUL (which no store can take).
fn holds_nul(json: &Value) -> bool {
    match json {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields.iter().any(|(key, value)| key.contains('\0') || holds_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Where a listing starts, read from the contract's paging fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest<C> {
    /// Page size: the request's, or the listing's default.
    pub limit: u32,
    /// Items to skip (0 when `after` is set).
    pub offset: u64,
    /// Continue after this position (from `page_token`).
    pub after: Option<C>,
}

impl<C: DeserializeOwned> PageRequest<C> {
    /// Reads `limit` (`default_limit` when absent), `offset` and `page_token`; a token
    /// takes precedence over `offset`, as the contract says. The bounds of `limit` and
    /// `offset` are the contract's field rules, already checked by
    /// [`validate`](crate::validate::validate); a token issued for another query (another
    /// `fingerprint`) is a validation error on `page_token`.
    pub fn parse(
        limit: Option<i32>,
        offset: Option<i32>,
        page_token: &str,
        fingerprint: &str,
        default_limit: u32,
    ) -> Result<Self, ApiError> {
        let after = if page_token.is_empty() {
            None
        } else {
            let cursor = decode(page_token, fingerprint).map_err(|error| {
                ApiError::validation(vec![FieldViolation {
                    field: "page_token".to_owned(),
                    message: error.to_string(),
                    value: Value::Null,
                }])
            })?;
            Some(cursor)
        };
        let offset = match after {
            Some(_) => 0,
            None => offset.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        };
        Ok(Self { limit: limit.and_then(|n| u32::try_from(n).ok()).unwrap_or(default_limit), offset, after })
    }
}

/// One page of a listing, as a store answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in listing order.
    pub items: Vec<T>,
    /// How many items match the filters in all (ignoring paging).
    pub total: u64,
    /// Whether items follow this page.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// The page of a listing that fetched up to `limit + 1` items (the one past the page
    /// only tells that more follow), of `total` matches in all.
    pub fn from_fetched(mut items: Vec<T>, limit: u32, total: u64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = items.len() > limit;
        items.truncate(limit);
        Self { items, total, has_more }
    }

    /// The `next_page_token` of this page: the position of its last item (`cursor` of
    /// it) for the query with `fingerprint`, empty on the last page.
    pub fn next_token<C: Serialize>(&self, cursor: impl FnOnce(&T) -> C, fingerprint: &str) -> String {
        match self.items.last() {
            Some(last) if self.has_more => encode(&cursor(last), fingerprint),
            _ => String::new(),
        }
    }

    /// The `total_count` of the response.
    pub fn total_count(&self) -> i64 {
        i64::try_from(self.total).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Position {
        k: i64,
        n: String,
    }

    #[test]
    fn tokens_round_trip_only_for_their_own_query() {
        let cursor = Position { k: 42, n: "everything_echo".into() };
        let query = query_fingerprint(&["created_at", "asc", "u1"]);
        let token = encode(&cursor, &query);
        assert_eq!(decode(&token, &query), Ok(cursor));
        let other = query_fingerprint(&["created_at", "desc", "u1"]);
        assert_eq!(decode::<Position>(&token, &other), Err(TokenError::OtherQuery));
        assert_eq!(decode::<Position>("garbage!", &query), Err(TokenError::Malformed));
        assert_eq!(decode::<Position>(&URL_SAFE_NO_PAD.encode(b"{}"), &query), Err(TokenError::Malformed));
        assert_ne!(query_fingerprint(&["a", "bc"]), query_fingerprint(&["ab", "c"]));
    }

    #[test]
    fn a_token_is_the_cursor_fields_then_the_fingerprint() {
        let token = encode(&Position { k: 1, n: "a".into() }, "fp");
        let json = URL_SAFE_NO_PAD.decode(token).unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&json), r#"{"k":1,"n":"a","q":"fp"}"#);
    }

    #[test]
    fn tokens_carrying_nul_are_refused() {
        let token = encode(&Position { k: 1, n: "a\0b".into() }, "fp");
        assert_eq!(decode::<Position>(&token, "fp"), Err(TokenError::Malformed));
    }

    #[test]
    fn requests_default_and_tokens_take_precedence_over_offset() {
        let first: PageRequest<Position> =
            PageRequest::parse(None, Some(7), "", "fp", 20).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((first.limit, first.offset, first.after), (20, 7, None));
        let token = encode(&Position { k: 3, n: "c".into() }, "fp");
        let next: PageRequest<Position> =
            PageRequest::parse(Some(5), Some(7), &token, "fp", 20).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((next.limit, next.offset), (5, 0));
        assert!(PageRequest::<Position>::parse(None, None, &token, "other", 20).is_err());
    }

    #[test]
    fn a_fetched_item_past_the_limit_means_more_follow() {
        assert_eq!(Page::from_fetched(vec![1, 2, 3], 2, 9), Page { items: vec![1, 2], total: 9, has_more: true });
        assert_eq!(Page::from_fetched(vec![1, 2], 2, 2), Page { items: vec![1, 2], total: 2, has_more: false });
    }

    #[test]
    fn next_tokens_only_while_more_follow() {
        let page = Page { items: vec![1_i64, 2], total: 5, has_more: true };
        let token = page.next_token(|n| Position { k: *n, n: String::new() }, "fp");
        assert_eq!(decode(&token, "fp"), Ok(Position { k: 2, n: String::new() }));
        let last = Page { items: vec![3_i64], total: 5, has_more: false };
        assert!(last.next_token(|n| Position { k: *n, n: String::new() }, "fp").is_empty());
        assert_eq!(Page::<i64> { items: vec![], total: u64::MAX, has_more: false }.total_count(), i64::MAX);
    }
}
