//! Opaque page tokens for cursor pagination (`page_token` / `next_page_token`).
//!
//! Lists are ordered by name and names are unique, so a token holds the last name of a
//! page and a fingerprint of the query it came from: a token cannot be replayed against
//! a different filter (that would silently skip or repeat items). Tokens are base64url
//! JSON: not secret, but validated like any other input.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::Cursor;

#[derive(Serialize, Deserialize)]
struct Token {
    /// Name of the last item.
    n: String,
    /// Fingerprint of the query.
    q: String,
}

/// A fingerprint of everything that shapes a listing except its position.
pub fn query_fingerprint(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    URL_SAFE_NO_PAD.encode(&hasher.finalize()[..12])
}

/// The token continuing after `cursor` for the query with `fingerprint`.
pub fn encode(cursor: &Cursor, fingerprint: &str) -> String {
    let token = Token { n: cursor.name.clone(), q: fingerprint.to_owned() };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this service issued.
    #[error("is not a valid page token")]
    Malformed,
    /// Issued for another filter.
    #[error("belongs to a different query (filters must stay the same while paging)")]
    OtherQuery,
}

/// The position in `token`, if it was issued for the query with `fingerprint`.
pub fn decode(token: &str, fingerprint: &str) -> Result<Cursor, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if token.q != fingerprint {
        return Err(TokenError::OtherQuery);
    }
    if token.n.contains('\0') {
        return Err(TokenError::Malformed);
    }
    Ok(Cursor { name: token.n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_only_for_their_own_query() {
        let cursor = Cursor { name: "everything_echo".into() };
        let query = query_fingerprint(&["tools", "enabled"]);
        let token = encode(&cursor, &query);
        assert_eq!(decode(&token, &query), Ok(cursor));
        assert_eq!(decode(&token, &query_fingerprint(&["tools", "disabled"])), Err(TokenError::OtherQuery));
        assert_eq!(decode("garbage!", &query), Err(TokenError::Malformed));
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode(b"{}"), &query), Err(TokenError::Malformed));
    }
}
