//! Opaque page tokens for cursor pagination (`page_token` / `next_page_token`).
//!
//! Lists are newest first by id (UUID v7), so a token holds the id of the last item of a
//! page and a fingerprint of the query it came from: a token cannot be replayed against
//! a different filter (that would silently skip or repeat items). Tokens are base64url
//! JSON: not secret, but validated like any other input.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Serialize, Deserialize)]
struct Token {
    /// Id of the last item.
    i: Uuid,
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

/// The token continuing after the item `last` for the query with `fingerprint`.
pub fn encode(last: Uuid, fingerprint: &str) -> String {
    let token = Token { i: last, q: fingerprint.to_owned() };
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

/// The id of the last item seen in `token`, if it was issued for the query with
/// `fingerprint`.
pub fn decode(token: &str, fingerprint: &str) -> Result<Uuid, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if token.q != fingerprint {
        return Err(TokenError::OtherQuery);
    }
    Ok(token.i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_only_for_their_own_query() {
        let last = Uuid::now_v7();
        let query = query_fingerprint(&["agents", "u1", "-"]);
        let token = encode(last, &query);
        assert_eq!(decode(&token, &query), Ok(last));
        assert_eq!(decode(&token, &query_fingerprint(&["agents", "u2", "-"])), Err(TokenError::OtherQuery));
        assert_eq!(decode("garbage!", &query), Err(TokenError::Malformed));
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode(b"{}"), &query), Err(TokenError::Malformed));
    }
}
