//! Every provider format through both client dialects, stream and non-stream.

use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn openai_non_stream_passes_through_with_the_providers_credential() {
    let (a, _b, gw) = two_mocks().await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("client-secret-must-not-leak")
        .header("x-request-id", "req-123")
        .json(&json!({"model": "a-only", "messages": [{"role": "user", "content": "hello"}], "seed": 7, "logit_bias": {"50256": -100}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from mock-a! You said: hello"
    );
    assert_eq!(body["usage"]["completion_tokens"], 6);
    let s = a.stats();
    assert_eq!(s.last_credential.as_deref(), Some("Bearer sk-provider-a"));
    assert_eq!(s.last_request_id.as_deref(), Some("req-123"));
    let sent = s.last_body.unwrap();
    assert_eq!(
        sent["model"], "mock-a",
        "alias replaced by the target model"
    );
    assert_eq!(sent["seed"], 7, "unknown fields pass through untouched");
    assert_eq!(sent["logit_bias"]["50256"], -100);
}

#[tokio::test]
async fn request_id_is_generated_when_absent() {
    let (a, _b, gw) = two_mocks().await;
    let resp = gw.chat(hello("a-only")).await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(a.stats().last_request_id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn anthropic_provider_is_translated_both_ways() {
    let (a, _b, gw) = two_mocks().await;
    let body: Value = gw
        .chat(json!({"model": "claude", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from mock-claude! You said: hello"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let s = a.stats();
    assert_eq!(s.last_path.as_deref(), Some("/v1/messages"));
    assert_eq!(s.last_credential.as_deref(), Some("sk-ant-provider"));
    let sent = s.last_body.unwrap();
    assert_eq!(sent["system"], "sys");
    assert_eq!(
        sent["max_tokens"], 64_000,
        "the model's own cap, not a fixed 4096 that cuts answers short"
    );
}

#[tokio::test]
async fn gemini_provider_is_translated_both_ways() {
    let (a, _b, gw) = two_mocks().await;
    let body: Value = gw.chat(hello("gemini")).await.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from mock-gemini! You said: hello"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    let s = a.stats();
    assert_eq!(
        s.last_path.as_deref(),
        Some("/v1beta/models/mock-gemini:generateContent")
    );
    assert_eq!(s.last_credential.as_deref(), Some("gemini-provider"));
}

#[tokio::test]
async fn tool_calls_come_back_from_every_provider() {
    let (_a, _b, gw) = two_mocks().await;
    for model in ["a-only", "claude", "gemini"] {
        for stream in [false, true] {
            let req = json!({"model": model, "stream": stream,
                "messages": [{"role": "user", "content": "weather?"}],
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
            let text = gw.chat(req).await.text().await.unwrap();
            if stream {
                let mut name = None;
                let mut args = String::new();
                let mut finish = None;
                for d in sse_data(&text).iter().filter(|d| *d != "[DONE]") {
                    let c: Value = serde_json::from_str(d).unwrap();
                    if let Some(tc) = c["choices"][0]["delta"]["tool_calls"][0].as_object() {
                        if let Some(n) = tc["function"]["name"].as_str() {
                            name = Some(n.to_owned());
                        }
                        args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
                    }
                    if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
                        finish = Some(f.to_owned());
                    }
                }
                assert_eq!(name.as_deref(), Some("get_weather"), "{model} stream");
                assert_eq!(
                    serde_json::from_str::<Value>(&args).unwrap()["input"],
                    "weather?",
                    "{model}"
                );
                assert_eq!(finish.as_deref(), Some("tool_calls"), "{model}");
            } else {
                let body: Value = serde_json::from_str(&text).unwrap();
                let call = &body["choices"][0]["message"]["tool_calls"][0];
                assert_eq!(call["function"]["name"], "get_weather", "{model}: {body}");
                assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{model}");
            }
        }
    }
}

#[tokio::test]
async fn messages_api_works_against_every_provider() {
    let (a, _b, gw) = two_mocks().await;
    for model in ["a-only", "claude", "gemini"] {
        let resp = client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", "client-key")
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": model, "max_tokens": 64, "system": "be nice", "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], "message", "{model}: {body}");
        assert!(
            body["content"][0]["text"]
                .as_str()
                .unwrap()
                .ends_with("You said: hello"),
            "{model}: {body}"
        );
        assert_eq!(body["stop_reason"], "end_turn");
        assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);
        assert_ne!(a.stats().last_credential.as_deref(), Some("client-key"));
    }
}

#[tokio::test]
async fn messages_stream_has_the_anthropic_event_sequence_for_every_provider() {
    let (_a, _b, gw) = two_mocks().await;
    for model in ["a-only", "claude", "gemini"] {
        let text = client()
            .post(gw.url("/v1/messages"))
            .json(&json!({"model": model, "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .filter(|n| *n != "ping")
            .collect();
        assert_eq!(names.first(), Some(&"message_start"), "{model}: {text}");
        assert_eq!(names[1], "content_block_start");
        assert_eq!(
            &names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"],
            "{model}"
        );
        let joined: String = sse_data(&text)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
            .collect();
        assert!(joined.ends_with("You said: hello"), "{model}: {joined}");
    }
}

#[tokio::test]
async fn embeddings_and_models() {
    let (_a, _b, gw) = two_mocks().await;
    let resp = client()
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "b-only", "input": ["one", "two"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 64);

    let resp = client()
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "claude", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "anthropic has no embeddings API");

    let models: Value = client()
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-only", "b-only", "a-strict", "claude", "gemini"]);
}

#[tokio::test]
async fn provider_slash_model_addresses_a_provider_directly() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let text = TWO_MOCKS.replace(
        "api_key = \"sk-provider-b\"",
        "api_key = \"sk-provider-b\"\ndirect = true",
    );
    let gw = Gateway::start(&text, &a, &b).await;
    let resp = gw.chat(hello("b/some-model")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(b.stats().last_body.unwrap()["model"], "some-model");
}
