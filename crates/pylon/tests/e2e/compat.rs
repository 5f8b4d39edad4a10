//! The Responses API, legacy completions, count_tokens and model lookup, driven over HTTP: kept
//! responses continued across providers and fallbacks, ownership per key, failure mid-stream.

use pylon_providers::mock::Behaviour;
use serde_json::{json, Value};

use crate::harness::*;

const ADMIN: &str = "compat-admin";

/// TWO_MOCKS plus `mixed`: an OpenAI target (mock b) first, then an Anthropic one (mock a).
fn config() -> String {
    TWO_MOCKS.to_owned()
        + r#"
[[models]]
name = "mixed"
targets = [ { provider = "b", model = "mock-b" }, { provider = "a-anthropic", model = "mock-claude" } ]
strategy = "priority"
retries = 1
"#
}

async fn respond(gw: &Gateway, body: Value) -> (u16, Value) {
    let resp = client()
        .post(gw.url("/v1/responses"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn output_text(r: &Value) -> String {
    r["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["type"] == "message")
        .flat_map(|o| o["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_conversation_continues_across_a_failover_from_openai_to_anthropic_and_back() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let gw = Gateway::start(&config(), &a, &b).await;
    b.set(Behaviour {
        error_status: Some(500),
        ..Behaviour::default()
    });
    let (status, first) = respond(
        &gw,
        json!({"model": "mixed", "input": "hello", "instructions": "Be brief."}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        output_text(&first),
        "Hello from mock-claude! You said: hello"
    );
    let sent = a.stats().last_body.unwrap();
    assert_eq!(
        sent["system"], "Be brief.",
        "instructions became the system prompt"
    );

    b.set(Behaviour::default());
    let id = first["id"].as_str().unwrap();
    let (status, second) = respond(
        &gw,
        json!({"model": "mixed", "input": "and again", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        output_text(&second),
        "Hello from mock-b! You said: and again"
    );
    // The OpenAI provider never saw Pylon's id: it got the whole conversation instead.
    let sent = b.stats().last_body.unwrap();
    assert!(sent.get("previous_response_id").is_none(), "{sent}");
    let items = sent["input"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{sent}");
    assert_eq!(items[1]["role"], "assistant");
    assert_eq!(items[2]["content"], "and again");

    let got: Value = client()
        .get(gw.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, first, "GET returns the response as it was sent");
}

#[tokio::test]
async fn responses_belong_to_the_key_that_made_them() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let text = config()
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string())
        .replace("[auth]\nmode = \"none\"", "[auth]\nmode = \"keys\"");
    let (gw, _control) = Gateway::with_admin(&text, Some(ADMIN)).await;
    let mine = create_key_with(&gw, ADMIN, json!({"name": "mine"})).await;
    let theirs = create_key_with(&gw, ADMIN, json!({"name": "theirs"})).await;
    let made: Value = client()
        .post(gw.url("/v1/responses"))
        .bearer_auth(&mine)
        .json(&json!({"model": "claude", "input": "secret plans"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = made["id"].as_str().unwrap();
    let get = |key: String| {
        let url = gw.url(&format!("/v1/responses/{id}"));
        async move {
            client()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(mine.clone()).await, 200);
    assert_eq!(get(theirs.clone()).await, 404);
    let resp = client()
        .post(gw.url("/v1/responses"))
        .bearer_auth(&theirs)
        .json(&json!({"model": "claude", "input": "go on", "previous_response_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "another key cannot continue it");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "response_not_found");
    let deleted = client()
        .delete(gw.url(&format!("/v1/responses/{id}")))
        .bearer_auth(&theirs)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 404, "nor delete it");
    assert_eq!(get(mine).await, 200);
}

#[tokio::test]
async fn store_false_keeps_nothing_and_an_unknown_id_passes_only_to_openai_providers() {
    let (a, _b, gw) = two_mocks().await;
    let (_, made) = respond(
        &gw,
        json!({"model": "gemini", "input": "x", "store": false}),
    )
    .await;
    let id = made["id"].as_str().unwrap();
    let status = client()
        .get(gw.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    // Only the provider that made an id Pylon does not hold could continue it.
    let (status, body) = respond(
        &gw,
        json!({"model": "claude", "input": "x", "previous_response_id": "resp_elsewhere"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let before = a.stats().requests;
    let (status, _) = respond(
        &gw,
        json!({"model": "a-strict", "input": "x", "previous_response_id": "resp_elsewhere"}),
    )
    .await;
    assert_eq!(status, 404, "the OpenAI provider's own answer");
    assert_eq!(a.stats().requests, before + 1, "it was asked");
    assert_eq!(
        a.stats().last_body.unwrap()["previous_response_id"],
        "resp_elsewhere"
    );
}

#[tokio::test]
async fn a_translated_stream_cut_midway_ends_with_an_error_event_and_is_not_kept() {
    let (a, _b, gw) = two_mocks().await;
    a.set(Behaviour {
        drop_after_chunks: Some(3),
        ..Behaviour::default()
    });
    let body = client()
        .post(gw.url("/v1/responses"))
        .json(&json!({"model": "claude", "input": "hello there my friend", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = sse_data(&body)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "response.created");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "error", "{body}");
    assert!(events.iter().all(|e| e["type"] != "response.completed"));
    let id = events[0]["response"]["id"].as_str().unwrap();
    let status = client()
        .get(gw.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "an unfinished response is not kept");
}

#[tokio::test]
async fn responses_usage_is_counted_for_passed_through_and_translated_streams() {
    let (_a, _b, gw) = two_mocks().await;
    for model in ["a-strict", "gemini"] {
        let body = client()
            .post(gw.url("/v1/responses"))
            .json(&json!({"model": model, "input": "hello", "stream": true}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let done: Value = serde_json::from_str(sse_data(&body).last().unwrap()).unwrap();
        assert_eq!(done["type"], "response.completed", "{body}");
        assert!(done["response"]["usage"]["output_tokens"].as_u64().unwrap() > 0);
    }
    let a = metric(
        &gw,
        "pylon_tokens_total{model=\"a-strict\",provider=\"a\",type=\"output\"}",
    )
    .await;
    let g = metric(
        &gw,
        "pylon_tokens_total{model=\"gemini\",provider=\"a-gemini\",type=\"output\"}",
    )
    .await;
    assert!(a > 0.0 && g > 0.0, "{a} {g}");
}

#[tokio::test]
async fn legacy_completions_pass_through_and_are_refused_by_name_elsewhere() {
    let (a, _b, gw) = two_mocks().await;
    let resp = client()
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "a-strict", "prompt": "hello", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        !body.contains("\"usage\""),
        "usage asked for upstream is not passed on"
    );
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        a.stats().last_body.unwrap()["stream_options"]["include_usage"],
        true
    );
    let resp = client()
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "claude", "prompt": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("/v1/completions"), "{msg}");
    let resp = client()
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "a-strict"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "prompt is required");
}

#[tokio::test]
async fn count_tokens_is_forwarded_to_anthropic_and_estimated_elsewhere() {
    let (a, _b, gw) = two_mocks().await;
    let count = |model: &str| {
        let url = gw.url("/v1/messages/count_tokens");
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
        async move {
            client()
                .post(url)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let resp = count("claude").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-pylon-estimated").is_none());
    let n: Value = resp.json().await.unwrap();
    assert_eq!(n["input_tokens"], 2);
    let s = a.stats();
    assert_eq!(s.last_path.as_deref(), Some("/v1/messages/count_tokens"));
    assert_eq!(s.last_body.unwrap()["model"], "mock-claude");
    assert_eq!(s.last_credential.as_deref(), Some("sk-ant-provider"));

    let resp = count("gemini").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-pylon-estimated"], "true");
    let resp = count("nope").await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "Anthropic's error shape");
}

#[tokio::test]
async fn a_model_is_looked_up_by_id_in_the_clients_dialect() {
    let (_a, _b, gw) = two_mocks().await;
    let got: Value = client()
        .get(gw.url("/v1/models/claude"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["object"], "model");
    let got: Value = client()
        .get(gw.url("/v1/models/claude"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["type"], "model");
    let status = client()
        .get(gw.url("/v1/models/nope"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn provider_headers_clients_use_come_back_and_rate_limits_only_when_asked() {
    let (_a, _b, gw) = two_mocks().await;
    let resp = gw.chat(hello("a-strict")).await;
    let h = resp.headers();
    assert_eq!(h["x-pylon-upstream-request-id"], "req_mock_openai");
    assert_eq!(h["openai-processing-ms"], "7");
    assert_ne!(h["x-request-id"], "req_mock_openai", "Pylon's own id stays");
    assert!(h
        .get("x-pylon-upstream-x-ratelimit-remaining-requests")
        .is_none());
    for (model, name) in [
        (
            "a-strict",
            "x-pylon-upstream-x-ratelimit-remaining-requests",
        ),
        ("claude", "anthropic-ratelimit-requests-remaining"),
    ] {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-pylon-provider-headers", "true")
            .json(&hello_stream(model))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()[name], "999", "{model}");
    }
}

#[tokio::test]
async fn anthropic_pass_through_accepts_every_block_and_tool_type() {
    let (a, _b, gw) = two_mocks().await;
    let body = json!({
        "model": "claude", "max_tokens": 64,
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        "messages": [
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "a doc"}, "citations": {"enabled": true}},
                {"type": "search_result", "source": "s", "title": "t", "content": [{"type": "text", "text": "r"}]},
                {"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
            ]},
            {"role": "user", "content": "go on"}
        ]
    });
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = a.stats().last_body.unwrap();
    assert_eq!(
        sent["messages"], body["messages"],
        "passed through untouched"
    );
    assert_eq!(sent["tools"], body["tools"]);
    // Translated for an OpenAI provider, a block chat cannot carry is refused by name.
    let mut to_openai = body.clone();
    to_openai["model"] = json!("a-strict");
    let resp = client()
        .post(gw.url("/v1/messages"))
        .json(&to_openai)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("document") || text.contains("web_search"),
        "{text}"
    );
}

#[tokio::test]
async fn a_parameter_the_provider_cannot_express_is_refused_by_name_unless_the_model_drops_it() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let text = TWO_MOCKS.to_owned()
        + r#"
[[models]]
name = "claude-lenient"
targets = [ { provider = "a-anthropic", model = "mock-claude", max_output_tokens = 2048 } ]
unsupported_params = "drop"
"#;
    let gw = Gateway::start(&text, &a, &b).await;
    let ask = |model: &str| json!({"model": model, "seed": 7, "messages": [{"role": "user", "content": "hello"}]});
    let before = a.stats().requests;
    let resp = gw.chat(ask("claude")).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`seed`") && msg.contains("unsupported_params"),
        "{msg}"
    );
    assert_eq!(a.stats().requests, before, "nothing was sent");

    let resp = gw.chat(ask("claude-lenient")).await;
    assert_eq!(resp.status(), 200);
    let sent = a.stats().last_body.unwrap();
    assert!(sent.get("seed").is_none());
    assert_eq!(sent["max_tokens"], 2048, "the target's configured cap");
}

#[tokio::test]
async fn an_openai_compatible_server_without_the_responses_api_gets_chat() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let text = TWO_MOCKS.replace(
        "api_key = \"sk-provider-a\"",
        "api_key = \"sk-provider-a\"\nresponses_api = false",
    );
    let gw = Gateway::start(&text, &a, &b).await;
    let (status, r) = respond(
        &gw,
        json!({"model": "a-strict", "input": "hello", "instructions": "x"}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(output_text(&r), "Hello from mock-a! You said: hello");
    let s = a.stats();
    assert_eq!(s.last_path.as_deref(), Some("/v1/chat/completions"));
    assert_eq!(s.last_body.unwrap()["messages"][0]["role"], "system");
    let body = client()
        .post(gw.url("/v1/responses"))
        .json(&json!({"model": "a-strict", "input": "hello", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let last: Value = serde_json::from_str(sse_data(&body).last().unwrap()).unwrap();
    assert_eq!(last["type"], "response.completed", "{body}");
    assert!(last["response"]["usage"]["output_tokens"].as_u64() > Some(0));
}
