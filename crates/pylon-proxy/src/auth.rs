//! Auth: which virtual key a request carries, checked against an in-memory index (no store I/O).

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use pylon_types::Principal;
use sha2::{Digest, Sha256};

use crate::ProxyError;

/// SHA-256 of a presented key: keys carry 256 random bits, so a fast hash is enough to store
/// and look them up without keeping the key itself.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Active keys by hash; rebuilt by the control plane and swapped in whole.
#[derive(Debug, Default)]
pub struct KeyIndex {
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
}

impl KeyIndex {
    /// An index of (key hash, principal) pairs.
    pub fn new(entries: impl IntoIterator<Item = ([u8; 32], Principal)>) -> Self {
        KeyIndex {
            by_hash: entries.into_iter().map(|(h, p)| (h, Arc::new(p))).collect(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The key a client sent: `Authorization: Bearer …` (OpenAI SDK) or `x-api-key` (Anthropic SDK).
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(token) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(token.trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Authenticates a request against the index at `now` (Unix seconds).
pub(crate) fn authenticate(
    index: &KeyIndex,
    headers: &HeaderMap,
    now: i64,
) -> Result<Arc<Principal>, ProxyError> {
    let Some(key) = presented(headers).filter(|k| !k.is_empty()) else {
        return Err(ProxyError::Unauthorized(
            "no API key: send `Authorization: Bearer pk-…` or `x-api-key: pk-…`".into(),
        ));
    };
    match index.by_hash.get(&hash_key(key)) {
        Some(p) if p.expires_at.is_none_or(|e| now < e) => Ok(p.clone()),
        Some(_) => Err(ProxyError::Unauthorized(
            "this API key has expired; ask for a new one".into(),
        )),
        None => Err(ProxyError::Unauthorized(
            "invalid API key (unknown or revoked)".into(),
        )),
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix milliseconds now.
pub(crate) fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
