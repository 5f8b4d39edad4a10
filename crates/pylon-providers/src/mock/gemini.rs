//! The mock's Gemini surface: `generateContent`, `streamGenerateContent` and
//! `batchEmbedContents` under `/v1beta/models/`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use super::handlers::{admit, bad_request, json_after, sse_response, Wire};
use super::script::{embedding, text_of, Script};
use super::Mock;

/// `:batchEmbedContents`: one vector per request, of `outputDimensionality` (default 64).
async fn gemini_embed(m: &Mock, path: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    let b = match admit(m, Wire::Gemini, path, headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return bad_request("malformed JSON");
    };
    let Some(requests) = req["requests"].as_array() else {
        return bad_request("requests required");
    };
    let embeddings: Vec<Value> = requests
        .iter()
        .map(|r| {
            let dims = r["outputDimensionality"]
                .as_u64()
                .unwrap_or(64)
                .clamp(1, 4096) as usize;
            json!({"values": embedding(&text_of(&r["content"]["parts"]), dims)})
        })
        .collect();
    json_after(m, &b, json!({"embeddings": embeddings})).await
}

/// `POST /v1beta/models/{model}:{action}`: generate, stream or embed, by the action.
pub(super) async fn gemini(
    State(m): State<Arc<Mock>>,
    Path(rest): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((model, action)) = rest.split_once(':') else {
        return bad_request("expected models/{model}:{action}");
    };
    let stream = match action {
        "generateContent" => false,
        "streamGenerateContent" => true,
        "batchEmbedContents" => return gemini_embed(&m, uri.path(), &headers, &body).await,
        _ => return bad_request("unknown action"),
    };
    let b = match admit(
        &m,
        Wire::Gemini,
        // The path as sent (still percent-encoded), so tests see what the gateway built.
        uri.path(),
        &headers,
        &body,
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("malformed JSON");
    };
    let Some(contents) = req["contents"].as_array() else {
        return bad_request("contents required");
    };
    let parts_text = |c: &Value| text_of(&c["parts"]);
    let last_user = contents
        .iter()
        .rev()
        .find(|c| c["role"] == "user" && c["parts"][0]["text"].is_string())
        .map(parts_text)
        .unwrap_or_default();
    let last_is_tool_result = contents
        .last()
        .is_some_and(|c| c["parts"][0]["functionResponse"].is_object());
    let tool = req["tools"][0]["functionDeclarations"][0]["name"]
        .as_str()
        .filter(|_| !last_is_tool_result)
        .map(str::to_owned);
    let chars = contents.iter().map(|c| parts_text(c).len()).sum();
    let s = Script::new(model, &last_user, tool, chars, &b);
    let usage = json!({"promptTokenCount": s.input_tokens, "candidatesTokenCount": s.output_tokens, "totalTokenCount": s.input_tokens + s.output_tokens});
    let candidate = |parts: Value, finish: Option<&str>| {
        let mut c = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        c
    };
    let tool_parts = s.tool.as_ref().map(|(name, args)| {
        json!([{"functionCall": {"name": name, "args": serde_json::from_str::<Value>(args).unwrap_or_default()}}])
    });
    if !stream {
        let parts = tool_parts.unwrap_or_else(|| json!([{"text": s.text()}]));
        // Unique per answer, as Gemini's are (tool-call ids are made from it).
        let id = format!("mock{}", m.stats().requests);
        let body = json!({"candidates": [candidate(parts, Some("STOP"))], "usageMetadata": usage, "modelVersion": model, "responseId": id});
        return json_after(&m, &b, body).await;
    }
    let mut events: Vec<Value> = match tool_parts {
        Some(parts) => vec![json!({"candidates": [candidate(parts, None)]})],
        None => s
            .pieces
            .iter()
            .map(|p| json!({"candidates": [candidate(json!([{"text": p}]), None)]}))
            .collect(),
    };
    events.push(json!({"candidates": [candidate(json!([{"text": ""}]), Some("STOP"))], "usageMetadata": usage, "modelVersion": model}));
    let frames = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\r\n\r\n")))
        .collect();
    sse_response(m, b, frames)
}
