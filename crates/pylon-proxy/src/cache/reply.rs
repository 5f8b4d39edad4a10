//! A cache hit as the client's response: the stored body, or the same answer replayed as a
//! well-formed stream.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use pylon_providers::assemble;
use pylon_types::openai::ChatResponse;

use super::Entry;

/// The response for a hit; `stream` replays it as SSE (with usage when `include_usage`).
pub(crate) fn hit_response(
    e: &Entry,
    age_secs: i64,
    stream: bool,
    include_usage: bool,
) -> Response {
    let (content_type, body) = if stream {
        let Ok(r) = serde_json::from_slice::<ChatResponse>(&e.body) else {
            return Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Body::from("a cached answer could not be replayed"))
                .unwrap_or_default();
        };
        let mut out = Vec::with_capacity(e.body.len() + 256);
        for chunk in assemble::replay(&r, include_usage) {
            out.extend_from_slice(b"data: ");
            if serde_json::to_writer(&mut out, &chunk).is_err() {
                continue;
            }
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        ("text/event-stream", Bytes::from(out))
    } else {
        ("application/json", e.body.clone())
    };
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("x-pylon-cache", HeaderValue::from_static("hit"));
    h.insert(header::AGE, HeaderValue::from(age_secs.max(0)));
    if let Ok(v) = HeaderValue::from_str(&e.meta.provider) {
        h.insert("x-pylon-provider", v);
    }
    if let Ok(v) = HeaderValue::from_str(&e.meta.served_model) {
        h.insert("x-pylon-served-model", v);
    }
    if stream {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}
