//! What makes two requests the same for the cache, and what the client asked of the cache.

use http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Fields that never change the answer: who asked, and how it is delivered.
const IGNORED: [&str; 4] = ["user", "stream", "stream_options", "model"];

/// A request's identity in the cache, and its temperature (absent counts as 1.0).
pub(crate) struct Identity {
    /// Hex SHA-256 of the endpoint, model and the request without ignored fields, keys sorted.
    pub hash: String,
    pub temperature: f64,
}

/// Normalizes the body (`serde_json` maps are sorted, so key order does not matter) and hashes it
/// with the endpoint and the model it resolved to. `None` when the body is not a JSON object.
pub(crate) fn identity(endpoint: &str, model: &str, body: &[u8]) -> Option<Identity> {
    let Value::Object(mut map) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    for f in IGNORED {
        map.remove(f);
    }
    let temperature = map
        .get("temperature")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    let canonical = serde_json::to_vec(&map).ok()?;
    let mut h = Sha256::new();
    h.update(endpoint.as_bytes());
    h.update([0]);
    h.update(model.as_bytes());
    h.update([0]);
    h.update(&canonical);
    let hash = h
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        });
    Some(Identity { hash, temperature })
}

/// What the client asked of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directive {
    /// Read and write.
    Use,
    /// Skip the read, store the fresh answer (`x-pylon-cache: refresh`, `Cache-Control: no-cache`).
    Refresh,
    /// Neither read nor write (`x-pylon-cache: bypass`, `Cache-Control: no-store`).
    Bypass,
}

/// Reads `x-pylon-cache` first, then `Cache-Control`.
pub(crate) fn directive(headers: &HeaderMap) -> Directive {
    if let Some(v) = headers.get("x-pylon-cache").and_then(|v| v.to_str().ok()) {
        match v.trim().to_ascii_lowercase().as_str() {
            "bypass" => return Directive::Bypass,
            "refresh" => return Directive::Refresh,
            _ => {}
        }
    }
    let cc = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    if cc.iter().any(|d| d == "no-store") {
        Directive::Bypass
    } else if cc.iter().any(|d| d == "no-cache") {
        Directive::Refresh
    } else {
        Directive::Use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_and_delivery_fields_do_not_change_the_identity() {
        let a = identity(
            "chat",
            "m",
            br#"{"model":"x","messages":[{"role":"user","content":"hi"}],"temperature":0,"user":"u1","stream":true}"#,
        )
        .unwrap();
        let b = identity(
            "chat",
            "m",
            br#"{"temperature":0,"messages":[{"content":"hi","role":"user"}],"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.temperature, 0.0);
        let c = identity(
            "chat",
            "m",
            br#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
        )
        .unwrap();
        assert_ne!(
            a.hash, c.hash,
            "a parameter that changes the output changes the key"
        );
        let d = identity(
            "chat",
            "other",
            br#"{"messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        )
        .unwrap();
        assert_ne!(a.hash, d.hash, "the model is part of the key");
        assert!(identity("chat", "m", b"[1]").is_none());
    }

    #[test]
    fn directives_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(directive(&h), Directive::Use);
        h.insert("cache-control", "max-age=0, no-cache".parse().unwrap());
        assert_eq!(directive(&h), Directive::Refresh);
        h.insert("cache-control", "no-store".parse().unwrap());
        assert_eq!(directive(&h), Directive::Bypass);
        h.insert("x-pylon-cache", "refresh".parse().unwrap());
        assert_eq!(directive(&h), Directive::Refresh);
    }
}
