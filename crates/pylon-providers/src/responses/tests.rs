use pylon_types::openai::{Chunk, Delta, FunctionDelta, ToolCallDelta, Usage};
use serde_json::{json, Value};

use super::*;
use crate::sse;

fn chat(req: Value) -> Result<ChatRequest, TranslateError> {
    let items = input_items(&req)?;
    to_chat(&req, &items)
}

#[test]
fn a_string_input_with_instructions_is_a_system_and_a_user_message() {
    let c = chat(
        json!({"model": "m", "instructions": "Be brief.", "input": "hi",
        "max_output_tokens": 64, "temperature": 0.2, "stream": true}),
    )
    .unwrap();
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(
        v["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(v["messages"][1], json!({"role": "user", "content": "hi"}));
    assert_eq!(v["max_tokens"], 64);
    assert_eq!(v["temperature"], 0.2);
    assert_eq!(v["stream_options"]["include_usage"], true);
}

#[test]
fn function_calls_and_their_outputs_become_one_assistant_turn_and_tool_messages() {
    let c = chat(json!({"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "cold"},
        {"type": "function_call_output", "call_id": "c2", "output": "warm"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ], "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
       "tool_choice": {"type": "function", "name": "weather"}}))
    .unwrap();
    let v = serde_json::to_value(&c).unwrap();
    let m = v["messages"].as_array().unwrap();
    assert_eq!(m.len(), 4, "{v}");
    assert_eq!(m[1]["role"], "assistant");
    assert_eq!(m[1]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(m[1]["tool_calls"][1]["id"], "c2");
    assert_eq!(
        m[2],
        json!({"role": "tool", "content": "cold", "tool_call_id": "c1"})
    );
    assert_eq!(v["tools"][0]["function"]["name"], "weather");
    assert_eq!(v["tool_choice"]["function"]["name"], "weather");
}

#[test]
fn structured_output_and_reasoning_effort_map_to_their_chat_fields() {
    let c = chat(json!({"model": "m", "input": "x",
        "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": true}},
        "reasoning": {"effort": "low"}}))
    .unwrap();
    assert_eq!(
        c.response_format,
        Some(
            json!({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": true}})
        )
    );
    assert_eq!(c.reasoning_effort.as_deref(), Some("low"));
}

#[test]
fn what_chat_cannot_carry_is_refused_by_name() {
    for (req, named) in [
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search_preview"}]}),
            "web_search_preview",
        ),
        (
            json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "item_reference",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
            "file_id",
        ),
    ] {
        let e = chat(req).unwrap_err().to_string();
        assert!(e.contains(named), "{e}");
    }
    assert!(head(br#"{"model":"m","input":5}"#).is_err());
    assert!(chat(json!({"model": "m", "instructions": "x"})).is_err());
}

#[test]
fn a_stored_conversation_is_its_input_then_its_output() {
    let items = conversation(
        &[json!({"role": "user", "content": "hi"})],
        &json!({"output": [{"type": "message", "role": "assistant", "content": []}]}),
    );
    assert_eq!(items.len(), 2);
    let body = with_input(
        &json!({"model": "a", "previous_response_id": "resp_1", "input": "next"}),
        items,
        "b",
    );
    assert_eq!(body["model"], "b");
    assert!(body.get("previous_response_id").is_none());
}

#[test]
fn usage_is_read_from_a_body_or_a_completed_event() {
    let u = usage_of(br#"{"usage":{"input_tokens":10,"output_tokens":3,"input_tokens_details":{"cached_tokens":4}}}"#).unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cache_read_tokens),
        (10, 3, 4)
    );
    let u = usage_of(br#"{"type":"response.completed","response":{"usage":{"input_tokens":2,"output_tokens":5}}}"#).unwrap();
    assert_eq!(u.total_tokens, 7);
    assert!(usage_of(br#"{"type":"response.output_text.delta","delta":"x"}"#).is_none());
}

fn meta() -> Meta {
    Meta {
        id: "resp_abc".into(),
        created_at: 1,
        request: json!({"model": "chat", "instructions": "Be brief."}),
    }
}

fn events(bytes: &[u8]) -> Vec<Value> {
    sse::events(bytes)
        .map(|raw| serde_json::from_str(&sse::parse(raw).data).unwrap())
        .collect()
}

#[test]
fn a_text_stream_is_the_typed_event_sequence_ending_with_the_whole_response() {
    let mut enc = StreamEncoder::new(meta());
    let mut out = Vec::new();
    for piece in ["Hel", "lo"] {
        let delta = Delta {
            content: Some(piece.into()),
            ..Delta::default()
        };
        enc.encode(&Chunk::delta("c", "m1", 0, delta, None), &mut out);
    }
    enc.encode(
        &Chunk::delta("c", "m1", 0, Delta::default(), Some("stop".into())),
        &mut out,
    );
    enc.encode(&Chunk::usage("c", "m1", 0, Usage::new(5, 2)), &mut out);
    enc.finish(&mut out);
    let evs = events(&out);
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let seqs: Vec<u64> = evs
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    let done = &evs[9]["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["usage"]["total_tokens"], 7);
    assert_eq!(done["instructions"], "Be brief.");
    assert_eq!(enc.response(), Some(done));
    assert_eq!(evs[4]["item_id"], done["output"][0]["id"]);
}

#[test]
fn a_tool_call_stream_carries_its_arguments_and_a_cut_answer_is_incomplete() {
    let mut enc = StreamEncoder::new(meta());
    let mut out = Vec::new();
    let call = |id: Option<&str>, name: Option<&str>, args: &str| Delta {
        tool_calls: Some(vec![ToolCallDelta {
            index: 0,
            id: id.map(str::to_owned),
            kind: None,
            function: FunctionDelta {
                name: name.map(str::to_owned),
                arguments: Some(args.into()),
            },
        }]),
        ..Delta::default()
    };
    enc.encode(
        &Chunk::delta("c", "m", 0, call(Some("call_9"), Some("f"), "{\"a\""), None),
        &mut out,
    );
    enc.encode(
        &Chunk::delta("c", "m", 0, call(None, None, ":1}"), Some("length".into())),
        &mut out,
    );
    enc.finish(&mut out);
    let evs = events(&out);
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    let item = &last["response"]["output"][0];
    assert_eq!(
        (item["call_id"].as_str(), item["arguments"].as_str()),
        (Some("call_9"), Some("{\"a\":1}"))
    );
    assert!(evs
        .iter()
        .any(|e| e["type"] == "response.function_call_arguments.done"));
}
