//! The mock's HTTP surface: its routes, the OpenAI handlers, the control endpoints, and what
//! every wire format shares (admission of a request by the behaviour, delayed JSON, SSE).
//! Anthropic's and Gemini's handlers are in their own modules.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde_json::{json, Value};

use super::script::{embedding, text_of, Script};
use super::{Behaviour, Mock, Stats};
use crate::{responses, sse, unix_now};

/// The mock's routes.
pub fn router(mock: Arc<Mock>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/responses", post(openai_responses))
        .route("/v1/completions", post(openai_completions))
        .route(
            "/v1/messages/count_tokens",
            post(super::anthropic::anthropic_count_tokens),
        )
        .route("/v1/models", get(models))
        .route("/v1/messages", post(super::anthropic::anthropic_messages))
        .route("/v1beta/models/{*rest}", post(super::gemini::gemini))
        .route("/mock/behaviour", get(get_behaviour).put(put_behaviour))
        .route("/mock/stats", get(stats))
        .route("/mock/reset", post(reset))
        .merge(super::cloud::routes())
        .layer(axum::middleware::from_fn_with_state(
            mock.clone(),
            provider_headers,
        ))
        .with_state(mock)
}

/// The headers providers send with every answer: their request id, OpenAI's processing time,
/// and each provider's rate-limit state under its own names.
async fn provider_headers(
    State(m): State<Arc<Mock>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let anthropic = req.uri().path().starts_with("/v1/messages");
    if !req.uri().path().starts_with("/mock/") && !req.uri().path().starts_with("/sts/") {
        let uri = req.uri().to_string();
        m.record(|s| s.last_uri = Some(uri));
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, axum::http::HeaderValue::from_static(value));
    };
    if anthropic {
        set(h, "request-id", "req_mock_anthropic");
        set(h, "anthropic-ratelimit-requests-remaining", "999");
    } else {
        set(h, "x-request-id", "req_mock_openai");
        set(h, "openai-processing-ms", "7");
        set(h, "x-ratelimit-remaining-requests", "999");
    }
    resp
}

async fn get_behaviour(State(m): State<Arc<Mock>>) -> Json<Behaviour> {
    Json(m.behaviour())
}

async fn put_behaviour(State(m): State<Arc<Mock>>, Json(b): Json<Behaviour>) -> StatusCode {
    m.set(b);
    StatusCode::NO_CONTENT
}

async fn stats(State(m): State<Arc<Mock>>) -> Json<Stats> {
    Json(m.stats())
}

async fn reset(State(m): State<Arc<Mock>>) -> StatusCode {
    m.reset();
    StatusCode::NO_CONTENT
}

async fn models(State(m): State<Arc<Mock>>) -> Response {
    // A refused key is refused here too, as real providers do.
    if let Some(status @ (401 | 403)) = m.behaviour().error_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
        let body = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}});
        return (status, Json(body)).into_response();
    }
    let data: Vec<Value> = ["mock-gpt", "mock-claude", "mock-gemini", "mock-embed"]
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(Clone, Copy)]
pub(super) enum Wire {
    OpenAi,
    Anthropic,
    Gemini,
}

/// Records the request, applies latency and error injection. `Err` is the response to send.
pub(super) async fn admit(
    m: &Mock,
    wire: Wire,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Behaviour, Response> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let credential = header("authorization")
        .or_else(|| header("x-api-key"))
        .or_else(|| header("x-goog-api-key"));
    let body_json: Option<Value> = serde_json::from_slice(body).ok();
    m.record(|s| {
        s.requests += 1;
        s.last_credential = credential;
        s.last_request_id = header("x-request-id");
        s.last_traceparent = header("traceparent");
        s.last_path = Some(path.to_owned());
        s.last_body = body_json;
        s.last_headers = headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
    });
    let mut b = m.behaviour();
    let fault = m.chaos(&b);
    if let Some(k) = fault {
        m.record(|s| s.faults[k as usize] += 1);
        match k {
            0 => {
                b.error_status = Some(500);
                b.error_rate = 1.0;
            }
            1 => {
                b.error_status = Some(429);
                b.error_rate = 1.0;
                // Fractional seconds: providers send them, and Pylon must cope.
                b.retry_after_raw = Some("0.05".into());
            }
            2 => b.drop_after_chunks = Some(0),
            3 => b.ttft = std::time::Duration::from_secs(10),
            _ => b.drop_after_chunks = Some(2),
        }
    }
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    let forced = fault
        .and(b.error_status)
        .filter(|_| fault.is_some_and(|k| k < 2));
    if let Some(status) = forced.or_else(|| m.fails(&b)) {
        m.record(|s| s.errors += 1);
        let msg = format!("mock provider injected error {status}");
        let body = match wire {
            Wire::OpenAi => {
                json!({"error": {"message": msg, "type": "server_error", "code": null}})
            }
            Wire::Anthropic => {
                json!({"type": "error", "error": {"type": "api_error", "message": msg}})
            }
            Wire::Gemini => {
                json!({"error": {"code": status, "message": msg, "status": "UNAVAILABLE"}})
            }
        };
        let mut resp = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(body),
        )
            .into_response();
        let retry_after = b
            .retry_after_raw
            .clone()
            .or_else(|| b.retry_after.map(|s| s.to_string()));
        if let Some(v) = retry_after.and_then(|v| v.parse().ok()) {
            resp.headers_mut().insert("retry-after", v);
        }
        return Err(resp);
    }
    Ok(b)
}

pub(super) fn bad_request(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"message": msg, "type": "invalid_request_error"}})),
    )
        .into_response()
}

pub(super) async fn openai_chat(
    State(m): State<Arc<Mock>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = match admit(&m, Wire::OpenAi, "/v1/chat/completions", &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("malformed JSON");
    };
    let Some(messages) = req["messages"].as_array() else {
        return bad_request("messages required");
    };
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let last_is_tool_result = messages.last().is_some_and(|m| m["role"] == "tool");
    let tool = req["tools"][0]["function"]["name"]
        .as_str()
        .filter(|_| !last_is_tool_result)
        .map(str::to_owned);
    let chars = messages.iter().map(|m| text_of(&m["content"]).len()).sum();
    let model = req["model"].as_str().unwrap_or("mock");
    let s = Script::new(model, &last_user, tool, chars, &b);
    let id = "chatcmpl-mock";
    if req["stream"].as_bool() != Some(true) {
        return json_after(&m, &b, chat_body(&s, id)).await;
    }
    let usage = req["stream_options"]["include_usage"].as_bool() == Some(true) && !b.no_usage;
    let mut frames: Vec<Bytes> = chat_chunks(&s, id, usage)
        .iter()
        .map(|e| frame(None, &e.to_string()))
        .collect();
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(m, b, frames)
}

fn usage_of(s: &Script) -> Value {
    json!({"prompt_tokens": s.input_tokens, "completion_tokens": s.output_tokens, "total_tokens": s.input_tokens + s.output_tokens})
}

/// The script as a non-stream chat completion.
fn chat_body(s: &Script, id: &str) -> Value {
    let (content, calls, finish) = match &s.tool {
        Some((name, args)) => (
            Value::Null,
            json!([{"id": "call_0", "type": "function", "function": {"name": name, "arguments": args}}]),
            "tool_calls",
        ),
        None => (json!(s.text()), Value::Null, "stop"),
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_null() {
        message["tool_calls"] = calls;
    }
    json!({"id": id, "object": "chat.completion", "created": unix_now(), "model": s.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage_of(s)})
}

/// The script as chat stream chunks (with the usage chunk when `usage`).
fn chat_chunks(s: &Script, id: &str, usage: bool) -> Vec<Value> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": s.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let finish = match &s.tool {
        Some((name, args)) => {
            events.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_0", "type": "function", "function": {"name": name, "arguments": ""}}]}), Value::Null));
            for piece in args.as_bytes().chunks(8) {
                let piece = String::from_utf8_lossy(piece);
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
            "tool_calls"
        }
        None => {
            events.extend(
                s.pieces
                    .iter()
                    .map(|p| chunk(json!({"content": p}), Value::Null)),
            );
            "stop"
        }
    };
    events.push(chunk(json!({}), json!(finish)));
    if usage {
        events.push(json!({"id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": s.model, "choices": [], "usage": usage_of(s)}));
    }
    events
}

/// `POST /v1/completions` (legacy): the same script as `text_completion` objects.
pub(super) async fn openai_completions(
    State(m): State<Arc<Mock>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = match admit(&m, Wire::OpenAi, "/v1/completions", &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("malformed JSON");
    };
    let prompt = text_of(&req["prompt"]);
    if req.get("prompt").is_none() {
        return bad_request("prompt: Field required");
    }
    let model = req["model"].as_str().unwrap_or("mock");
    let s = Script::new(model, &prompt, None, prompt.len(), &b);
    let id = "cmpl-mock";
    let choice = |text: &str, finish: Value| {
        json!({"id": id, "object": "text_completion", "created": unix_now(), "model": s.model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
    };
    if req["stream"].as_bool() != Some(true) {
        let mut body = choice(&s.text(), json!("stop"));
        body["usage"] = usage_of(&s);
        return json_after(&m, &b, body).await;
    }
    let mut frames: Vec<Bytes> = s
        .pieces
        .iter()
        .map(|p| frame(None, &choice(p, Value::Null).to_string()))
        .collect();
    frames.push(frame(None, &choice("", json!("stop")).to_string()));
    if req["stream_options"]["include_usage"].as_bool() == Some(true) && !b.no_usage {
        let usage = json!({"id": id, "object": "text_completion", "created": unix_now(),
            "model": s.model, "choices": [], "usage": usage_of(&s)});
        frames.push(frame(None, &usage.to_string()));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(m, b, frames)
}

/// `POST /v1/responses`: the same script, in the Responses API's shapes. It keeps nothing, so
/// a `previous_response_id` it is sent is unknown to it, as to OpenAI for another's ids.
pub(super) async fn openai_responses(
    State(m): State<Arc<Mock>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = match admit(&m, Wire::OpenAi, "/v1/responses", &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("malformed JSON");
    };
    if let Some(prev) = req["previous_response_id"].as_str() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"message": format!("Previous response with id '{prev}' not found."),
                "type": "invalid_request_error", "param": "previous_response_id", "code": "previous_response_not_found"}})),
        )
            .into_response();
    }
    let chat = match responses::input_items(&req).and_then(|items| responses::to_chat(&req, &items))
    {
        Ok(c) => c,
        Err(e) => return bad_request(&e.to_string()),
    };
    let last_user = chat
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| m.content.as_ref())
        .map(|c| c.text())
        .unwrap_or_default();
    let last_is_tool_result = chat.messages.last().is_some_and(|m| m.role == "tool");
    let tool = chat
        .tools
        .as_ref()
        .and_then(|t| t.first())
        .map(|t| t.function.name.clone())
        .filter(|_| !last_is_tool_result);
    let chars = chat
        .messages
        .iter()
        .map(|m| m.content.as_ref().map_or(0, |c| c.text().len()))
        .sum();
    let s = Script::new(&chat.model, &last_user, tool, chars, &b);
    // Unique across mock restarts, as a provider's ids are.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let meta = responses::Meta {
        id: format!("resp_mock{nanos:x}{:04}", m.stats().requests),
        created_at: unix_now(),
        request: req.clone(),
    };
    if req["stream"].as_bool() != Some(true) {
        let Ok(chat) = serde_json::from_value(chat_body(&s, "chatcmpl-mock")) else {
            return bad_request("unencodable answer");
        };
        return json_after(&m, &b, responses::response_from_chat(&chat, &meta)).await;
    }
    let mut enc = responses::StreamEncoder::new(meta);
    let mut frames = Vec::new();
    for c in chat_chunks(&s, "chatcmpl-mock", !b.no_usage) {
        if let Ok(chunk) = serde_json::from_value(c) {
            let mut out = Vec::new();
            enc.encode(&chunk, &mut out);
            frames.push(Bytes::from(out));
        }
    }
    let mut out = Vec::new();
    enc.finish(&mut out);
    frames.push(Bytes::from(out));
    sse_response(m, b, frames)
}

pub(super) async fn openai_embeddings(
    State(m): State<Arc<Mock>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = match admit(&m, Wire::OpenAi, "/v1/embeddings", &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("malformed JSON");
    };
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => return bad_request("input must be a string or an array"),
    };
    let dims = req["dimensions"].as_u64().unwrap_or(64).clamp(1, 4096) as usize;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": embedding(t, dims)}))
        .collect();
    let tokens: u64 = inputs.iter().map(|t| (t.len() as u64).div_ceil(4)).sum();
    let body = json!({"object": "list", "data": data, "model": req["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    json_after(&m, &b, body).await
}

pub(super) fn frame(name: Option<&str>, data: &str) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    sse::write(&mut out, name, data);
    Bytes::from(out)
}

pub(super) async fn json_after(m: &Mock, b: &Behaviour, body: Value) -> Response {
    if !b.ttft.is_zero() {
        tokio::time::sleep(b.ttft).await;
    }
    if b.drop_after_chunks.is_some() {
        // A non-stream answer that breaks off: headers, then a body that fails.
        m.record(|s| s.errors += 1);
        let failing = stream::once(async { Err::<Bytes, _>(std::io::Error::other("mock drop")) });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(failing))
            .unwrap_or_default();
    }
    Json(body).into_response()
}

/// Counts a stream as completed or cancelled when the server drops it.
struct StreamGuard {
    mock: Arc<Mock>,
    done: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let done = self.done;
        self.mock.record(|s| {
            if done {
                s.streams_completed += 1
            } else {
                s.streams_cancelled += 1
            }
        });
    }
}

pub(super) fn sse_response(mock: Arc<Mock>, b: Behaviour, frames: Vec<Bytes>) -> Response {
    let guard = StreamGuard { mock, done: false };
    let state = (frames.into_iter(), 0usize, b, guard);
    let body = stream::unfold(state, |(mut frames, sent, b, mut guard)| async move {
        let delay = if sent == 0 { b.ttft } else { b.chunk_delay };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if b.drop_after_chunks == Some(sent) {
            // Let the server flush what was already sent, as a real connection drop mid-stream
            // would: otherwise headers and early chunks could die in the write buffer.
            if sent > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            guard.done = true;
            return Some((
                Err(std::io::Error::other("mock drop")),
                (frames, sent, b, guard),
            ));
        }
        match frames.next() {
            Some(f) => Some((Ok::<Bytes, std::io::Error>(f), (frames, sent + 1, b, guard))),
            None => {
                guard.done = true;
                drop(guard);
                None
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}
