//! The mock's Anthropic Messages surface: messages (whole and streamed) and token counting.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use pylon_types::anthropic::{self as an, Block, BlockDelta, MessagesResponse, StreamEvent};
use serde_json::{json, Value};

use super::handlers::{admit, bad_request, frame, json_after, sse_response, Wire};
use super::script::{text_of, Script};
use super::Mock;

/// `POST /v1/messages/count_tokens`: a quarter of the messages' text, at least one.
pub(super) async fn anthropic_count_tokens(
    State(m): State<Arc<Mock>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = match admit(
        &m,
        Wire::Anthropic,
        "/v1/messages/count_tokens",
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
    let Some(messages) = req["messages"].as_array() else {
        return bad_request("messages: Field required");
    };
    let chars: usize = messages.iter().map(|m| text_of(&m["content"]).len()).sum();
    json_after(
        &m,
        &b,
        json!({"input_tokens": (chars as u64).div_ceil(4).max(1)}),
    )
    .await
}

/// `POST /v1/messages`: the scripted answer as a message or as Anthropic's event stream.
pub(super) async fn anthropic_messages(
    State(m): State<Arc<Mock>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = match admit(&m, Wire::Anthropic, "/v1/messages", &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("malformed JSON");
    };
    let Some(messages) = req["messages"].as_array() else {
        return bad_request("messages required");
    };
    if req["max_tokens"].as_u64().is_none() {
        return bad_request("max_tokens: Field required");
    }
    let last = messages.last();
    let last_is_tool_result = last.is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    });
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let tool = req["tools"][0]["name"]
        .as_str()
        .filter(|_| !last_is_tool_result)
        .map(str::to_owned);
    let chars = messages
        .iter()
        .map(|m| text_of(&m["content"]).len())
        .sum::<usize>()
        + text_of(&req["system"]).len();
    let s = Script::new(
        req["model"].as_str().unwrap_or("mock"),
        &last_user,
        tool,
        chars,
        &b,
    );
    let (content, stop) = match &s.tool {
        Some((name, args)) => (
            vec![Block::ToolUse {
                id: "toolu_0".into(),
                name: name.clone(),
                input: serde_json::from_str(args).unwrap_or_default(),
            }],
            "tool_use",
        ),
        None => (vec![Block::text(s.text())], "end_turn"),
    };
    let message = |content: Vec<Block>, stop: Option<&str>, out: u64| MessagesResponse {
        id: "msg_mock".into(),
        kind: "message".into(),
        role: "assistant".into(),
        model: s.model.clone(),
        content,
        stop_reason: stop.map(str::to_owned),
        stop_sequence: None,
        usage: an::Usage {
            input_tokens: s.input_tokens,
            output_tokens: out,
            cache_read_input_tokens: b.cache_read_tokens,
            ..an::Usage::default()
        },
    };
    if req["stream"].as_bool() != Some(true) {
        let body =
            serde_json::to_value(message(content, Some(stop), s.output_tokens)).unwrap_or_default();
        return json_after(&m, &b, body).await;
    }
    let mut events = vec![StreamEvent::MessageStart {
        message: message(Vec::new(), None, 1),
    }];
    match &s.tool {
        Some((name, args)) => {
            events.push(StreamEvent::ContentBlockStart {
                index: 0,
                content_block: Block::ToolUse {
                    id: "toolu_0".into(),
                    name: name.clone(),
                    input: json!({}),
                },
            });
            for piece in args.as_bytes().chunks(8) {
                let partial_json = String::from_utf8_lossy(piece).into_owned();
                events.push(StreamEvent::ContentBlockDelta {
                    index: 0,
                    delta: BlockDelta::InputJsonDelta { partial_json },
                });
            }
        }
        None => {
            events.push(StreamEvent::ContentBlockStart {
                index: 0,
                content_block: Block::text(""),
            });
            events.push(StreamEvent::Ping);
            for p in &s.pieces {
                events.push(StreamEvent::ContentBlockDelta {
                    index: 0,
                    delta: BlockDelta::TextDelta { text: p.clone() },
                });
            }
        }
    }
    events.push(StreamEvent::ContentBlockStop { index: 0 });
    events.push(StreamEvent::MessageDelta {
        delta: an::MessageDelta {
            stop_reason: Some(stop.into()),
            stop_sequence: None,
        },
        usage: an::Usage {
            input_tokens: 0,
            output_tokens: s.output_tokens,
            ..an::Usage::default()
        },
    });
    events.push(StreamEvent::MessageStop);
    let frames = events
        .iter()
        .map(|e| {
            frame(
                Some(e.name()),
                &serde_json::to_string(e).unwrap_or_default(),
            )
        })
        .collect();
    sse_response(m, b, frames)
}
