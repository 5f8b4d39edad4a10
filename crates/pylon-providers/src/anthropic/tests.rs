//! Anthropic translation, both directions, with snapshots of the wire shapes.

use super::*;
use crate::{sse, Options, TranslateError};
use pylon_types::anthropic::{MessagesRequest, MessagesResponse};
use pylon_types::openai::{
    ChatRequest, Chunk, ChunkChoice, Delta, FunctionDelta, ToolCallDelta, Usage,
};
use serde_json::json;

fn chat_with_tools() -> ChatRequest {
    serde_json::from_value(json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            {"role": "tool", "tool_call_id": "call_2", "content": "cold"}
        ],
        "max_tokens": 50,
        "stop": "END",
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required"
    }))
    .unwrap()
}

#[test]
fn openai_request_becomes_messages() {
    let m = to_messages(&chat_with_tools(), "claude-x", Options::default()).unwrap();
    insta::assert_json_snapshot!(m, @r###"
    {
      "model": "claude-x",
      "messages": [
        {
          "role": "user",
          "content": [
            {
              "type": "text",
              "text": "Weather in Oslo?"
            }
          ]
        },
        {
          "role": "assistant",
          "content": [
            {
              "type": "tool_use",
              "id": "call_1",
              "name": "weather",
              "input": {
                "city": "Oslo"
              }
            }
          ]
        },
        {
          "role": "user",
          "content": [
            {
              "type": "tool_result",
              "tool_use_id": "call_1",
              "content": "rain"
            },
            {
              "type": "tool_result",
              "tool_use_id": "call_2",
              "content": "cold"
            }
          ]
        }
      ],
      "max_tokens": 50,
      "system": "Be brief.",
      "stop_sequences": [
        "END"
      ],
      "tools": [
        {
          "name": "weather",
          "input_schema": {
            "type": "object"
          }
        }
      ],
      "tool_choice": {
        "type": "any"
      }
    }
    "###);
}

#[test]
fn invalid_tool_arguments_are_a_client_error() {
    let mut req = chat_with_tools();
    req.messages[2].tool_calls.as_mut().unwrap()[0]
        .function
        .arguments = "{not json".into();
    assert!(to_messages(&req, "c", Options::default()).is_err());
}

#[test]
fn response_maps_tool_use_and_stop_reason() {
    let resp: MessagesResponse = serde_json::from_value(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5}
    }))
    .unwrap();
    let chat = response_to_openai(resp);
    assert_eq!(chat.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        chat.choices[0].message.content.as_deref(),
        Some("Checking.")
    );
    let call = &chat.choices[0].message.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.function.arguments, r#"{"city":"Oslo"}"#);
    assert_eq!(chat.usage, Some(Usage::new(10, 5)));
}

fn decode_all(events: &[(&str, serde_json::Value)]) -> Vec<Chunk> {
    let mut d = StreamDecoder::default();
    let mut out = Vec::new();
    for (name, data) in events {
        let ev = sse::Event {
            name: Some(name),
            data: data.to_string(),
        };
        d.decode(&ev, &mut out).unwrap();
    }
    out
}

#[test]
fn stream_decoder_emits_text_tool_finish_and_usage() {
    let chunks = decode_all(&[
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "c", "content": [], "stop_reason": null, "usage": {"input_tokens": 7, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "weather", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
        ),
        ("some_future_event", json!({"type": "some_future_event"})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ]);
    assert_eq!(
        chunks[0].choices[0].delta.role.as_deref(),
        Some("assistant")
    );
    assert_eq!(chunks[1].choices[0].delta.content.as_deref(), Some("Hi"));
    let tool = &chunks[2].choices[0].delta.tool_calls.as_ref().unwrap()[0];
    assert_eq!((tool.index, tool.id.as_deref()), (0, Some("t1")));
    assert_eq!(
        chunks[3].choices[0].delta.tool_calls.as_ref().unwrap()[0]
            .function
            .arguments
            .as_deref(),
        Some("{\"a\":")
    );
    assert_eq!(
        chunks[4].choices[0].finish_reason.as_deref(),
        Some("tool_calls")
    );
    assert_eq!(chunks[5].usage, Some(Usage::new(7, 9)));
}

#[test]
fn stream_error_event_is_an_error() {
    let mut d = StreamDecoder::default();
    let ev = sse::Event {
        name: Some("error"),
        data: json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
            .to_string(),
    };
    assert!(
        matches!(d.decode(&ev, &mut Vec::new()), Err(TranslateError::Upstream(m)) if m == "busy")
    );
}

#[test]
fn anthropic_client_request_becomes_chat() {
    let req: MessagesRequest = serde_json::from_value(json!({
        "model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "sys"}],
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}, {"type": "text", "text": "and?"}]}
        ],
        "stream": true
    }))
    .unwrap();
    let chat = to_chat(req);
    let roles: Vec<_> = chat.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
    assert_eq!(
        chat.messages[2].tool_calls.as_ref().unwrap()[0]
            .function
            .arguments,
        r#"{"x":1}"#
    );
    assert_eq!(chat.messages[3].tool_call_id.as_deref(), Some("t1"));
    assert!(chat.stream_options.unwrap().include_usage);
}

#[test]
fn stream_encoder_produces_the_anthropic_event_sequence() {
    let mut e = StreamEncoder::default();
    let mut out = Vec::new();
    let c = |delta: Delta, finish: Option<&str>| Chunk {
        id: "x".into(),
        object: String::new(),
        created: 0,
        model: "m".into(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish.map(Into::into),
        }],
        usage: None,
    };
    e.encode(
        &c(
            Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                ..Delta::default()
            },
            None,
        ),
        &mut out,
    );
    e.encode(
        &c(
            Delta {
                content: Some("Hi".into()),
                ..Delta::default()
            },
            None,
        ),
        &mut out,
    );
    e.encode(
        &c(
            Delta {
                tool_calls: Some(vec![ToolCallDelta {
                    index: 0,
                    id: Some("c1".into()),
                    kind: None,
                    function: FunctionDelta {
                        name: Some("f".into()),
                        arguments: Some("{}".into()),
                    },
                }]),
                ..Delta::default()
            },
            Some("tool_calls"),
        ),
        &mut out,
    );
    e.encode(&Chunk::usage("x", "m", 0, Usage::new(3, 4)), &mut out);
    e.finish(&mut out);
    let names: Vec<String> = sse::events(&out)
        .map(|ev| sse::parse(ev).name.unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(r#""stop_reason":"tool_use""#), "{text}");
    assert!(text.contains(r#""output_tokens":4"#), "{text}");
}
