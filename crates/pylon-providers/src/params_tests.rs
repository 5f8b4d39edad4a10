//! Each chat parameter through the Anthropic and Gemini translations: translated, or refused by
//! name unless the model drops what its provider cannot express. The README's table says the same.

use pylon_types::openai::{ChatRequest, ChatResponse};
use serde_json::{json, Value};

use crate::sse;
use crate::{anthropic, gemini, Options};

fn req(extra: Value) -> ChatRequest {
    let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn to_anthropic(r: &ChatRequest, opts: Options) -> Result<Value, String> {
    anthropic::to_messages(r, "claude-sonnet-4-5", opts)
        .map(|m| serde_json::to_value(m).unwrap())
        .map_err(|e| e.to_string())
}

fn to_gemini(r: &ChatRequest, opts: Options) -> Result<Value, String> {
    gemini::to_generate(r, opts)
        .map(|g| serde_json::to_value(g).unwrap())
        .map_err(|e| e.to_string())
}

const DROP: Options = Options {
    drop_unsupported: true,
    max_output_tokens: None,
};

#[test]
fn structured_output_becomes_each_providers_own() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let r = req(
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}}),
    );
    let a = to_anthropic(&r, Options::default()).unwrap();
    assert_eq!(a["output_config"]["format"]["type"], "json_schema");
    assert_eq!(a["output_config"]["format"]["schema"], schema);
    let g = to_gemini(&r, Options::default()).unwrap();
    assert_eq!(
        g["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert_eq!(g["generationConfig"]["responseJsonSchema"], schema);

    let r = req(json!({"response_format": {"type": "json_object"}}));
    let e = to_anthropic(&r, Options::default()).unwrap_err();
    assert!(e.contains("json_object"), "{e}");
    assert!(to_anthropic(&r, DROP)
        .unwrap()
        .get("output_config")
        .is_none());
    let g = to_gemini(&r, Options::default()).unwrap();
    assert_eq!(
        g["generationConfig"]["responseMimeType"],
        "application/json"
    );
}

#[test]
fn n_seed_and_logprobs_are_translated_or_refused_by_name() {
    let r = req(json!({"n": 2, "seed": 7}));
    let e = to_anthropic(&r, Options::default()).unwrap_err();
    assert!(e.contains("`n`"), "{e}");
    let a = to_anthropic(&r, DROP).unwrap();
    assert!(a.get("n").is_none() && a.get("seed").is_none());
    let g = to_gemini(&r, Options::default()).unwrap();
    assert_eq!(g["generationConfig"]["candidateCount"], 2);
    assert_eq!(g["generationConfig"]["seed"], 7);
    let streamed = req(json!({"n": 2, "stream": true}));
    assert!(to_gemini(&streamed, Options::default()).is_err());

    let r = req(json!({"seed": 7}));
    assert!(to_anthropic(&r, Options::default())
        .unwrap_err()
        .contains("`seed`"));
    let r = req(json!({"logprobs": true, "top_logprobs": 3}));
    assert!(to_anthropic(&r, Options::default())
        .unwrap_err()
        .contains("logprobs"));
    assert!(to_gemini(&r, Options::default())
        .unwrap_err()
        .contains("logprobs"));
    assert!(to_gemini(&r, DROP).is_ok());
}

#[test]
fn parallel_tool_calls_false_disables_parallel_use_or_is_refused() {
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let r = req(json!({"tools": tools, "parallel_tool_calls": false, "tool_choice": "required"}));
    let a = to_anthropic(&r, Options::default()).unwrap();
    assert_eq!(
        a["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert!(to_gemini(&r, Options::default())
        .unwrap_err()
        .contains("parallel_tool_calls"));
    let r = req(json!({"tools": tools}));
    assert!(to_anthropic(&r, Options::default())
        .unwrap()
        .get("tool_choice")
        .is_none());
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget_with_room_to_answer() {
    let r = req(json!({"reasoning_effort": "medium", "max_tokens": 1000, "temperature": 0.3}));
    let a = to_anthropic(&r, Options::default()).unwrap();
    assert_eq!(
        a["thinking"],
        json!({"type": "enabled", "budget_tokens": 8192})
    );
    assert!(a["max_tokens"].as_u64().unwrap() > 8192, "{a}");
    assert!(
        a.get("temperature").is_none(),
        "thinking takes the default temperature"
    );
    let g = to_gemini(&r, Options::default()).unwrap();
    assert_eq!(
        g["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 8192, "includeThoughts": true})
    );
}

#[test]
fn thinking_comes_back_as_reasoning_content() {
    let resp: pylon_types::anthropic::MessagesResponse = serde_json::from_value(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "c",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "42"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 2}
    }))
    .unwrap();
    let chat = anthropic::response_to_openai(resp);
    assert_eq!(
        chat.choices[0].message.reasoning_content.as_deref(),
        Some("hmm")
    );
    assert_eq!(chat.choices[0].message.content.as_deref(), Some("42"));

    let resp: gemini::GenerateResponse = serde_json::from_value(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "plan", "thought": true}, {"text": "42"}]}, "finishReason": "STOP"}]
    }))
    .unwrap();
    let chat = gemini::response_to_openai(resp, "g");
    assert_eq!(
        chat.choices[0].message.reasoning_content.as_deref(),
        Some("plan")
    );
    assert_eq!(chat.choices[0].message.content.as_deref(), Some("42"));

    let mut dec = anthropic::StreamDecoder::default();
    let mut out = Vec::new();
    for (name, data) in [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "c", "content": [], "stop_reason": null, "usage": {"input_tokens": 1, "output_tokens": 0}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": {}}}),
        ),
    ] {
        let data = data.to_string();
        dec.decode(
            &sse::Event {
                name: Some(name),
                data,
            },
            &mut out,
        )
        .unwrap();
    }
    assert_eq!(
        out[1].choices[0].delta.reasoning_content.as_deref(),
        Some("hm")
    );
    assert_eq!(out.len(), 2, "an unknown delta type is skipped, not fatal");
}

#[test]
fn image_and_file_parts_and_cache_hints_reach_each_provider() {
    let r = req(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "read this", "cache_control": {"type": "ephemeral"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}}
    ]}]}));
    let a = to_anthropic(&r, Options::default()).unwrap();
    let blocks = &a["messages"][0]["content"];
    assert_eq!(blocks[0]["cache_control"]["type"], "ephemeral");
    assert_eq!(blocks[1]["source"]["media_type"], "image/png");
    assert_eq!(blocks[2]["type"], "document");
    assert_eq!(blocks[2]["source"]["media_type"], "application/pdf");
    let g = to_gemini(&r, Options::default()).unwrap();
    let parts = &g["contents"][0]["parts"];
    assert_eq!(parts[2]["inlineData"]["mimeType"], "application/pdf");
    let by_id = req(
        json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}),
    );
    assert!(to_anthropic(&by_id, Options::default())
        .unwrap_err()
        .contains("file_id"));
}

#[test]
fn stop_and_the_default_output_cap_follow_the_model() {
    let r = req(json!({"stop": ["END"]}));
    let a = to_anthropic(&r, Options::default()).unwrap();
    assert_eq!(a["stop_sequences"], json!(["END"]));
    assert_eq!(a["max_tokens"], 64_000, "the model's own limit, not 4096");
    let g = to_gemini(&r, Options::default()).unwrap();
    assert_eq!(g["generationConfig"]["stopSequences"], json!(["END"]));
    let capped = Options {
        max_output_tokens: Some(1234),
        ..Options::default()
    };
    assert_eq!(to_anthropic(&r, capped).unwrap()["max_tokens"], 1234);
    assert_eq!(
        anthropic::model_max_tokens("claude-3-5-haiku-20241022"),
        8192
    );
}

#[test]
fn gemini_tool_call_ids_are_unique_across_rounds_and_carry_thought_signatures() {
    let round = |rid: &str| -> ChatResponse {
        let resp: gemini::GenerateResponse = serde_json::from_value(json!({
            "responseId": rid,
            "candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": format!("sig-{rid}")}
            ]}, "finishReason": "STOP"}]
        }))
        .unwrap();
        gemini::response_to_openai(resp, "g")
    };
    let one = round("r1");
    let two = round("r2");
    let id1 = &one.choices[0].message.tool_calls.as_ref().unwrap()[0].id;
    let id2 = &two.choices[0].message.tool_calls.as_ref().unwrap()[0].id;
    assert_ne!(id1, id2);
    // Two rounds of the same function: each result maps to its own call, signatures go back.
    let r = req(json!({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [{"id": id1, "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
        {"role": "tool", "tool_call_id": id1, "content": "one"},
        {"role": "assistant", "tool_calls": [{"id": id2, "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
        {"role": "tool", "tool_call_id": id2, "content": "two"}
    ]}));
    let g = to_gemini(&r, Options::default()).unwrap();
    let contents = g["contents"].as_array().unwrap();
    assert_eq!(contents[1]["parts"][0]["thoughtSignature"], "sig-r1");
    assert_eq!(contents[3]["parts"][0]["thoughtSignature"], "sig-r2");
    assert_eq!(
        contents[4]["parts"][0]["functionResponse"]["response"]["result"],
        "two"
    );
}
