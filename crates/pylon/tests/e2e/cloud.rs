//! Azure OpenAI and AWS Bedrock against a mock that checks their wire: Azure's deployment paths,
//! api-version, api-key and Entra tokens, content-filter errors; Bedrock's SigV4 signature
//! (recomputed by the mock with a known key), event-stream frames with their CRCs, STS.

use pylon_providers::mock::{AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, FILTERED};
use serde_json::{json, Value};

use crate::harness::*;

fn config(a: &MockServer, token_file: &std::path::Path, identity_file: &std::path::Path) -> String {
    format!(
        r#"
[auth]
mode = "none"
refresh = "100ms"

[[providers]]
name = "azure"
kind = "azure"
base_url = "http://{a}"
api_key = "azure-key"

[[providers]]
name = "azure-v1"
kind = "azure"
base_url = "http://{a}"
api_version = "v1"
token_file = "{token}"

[[providers]]
name = "bedrock"
kind = "bedrock"
base_url = "http://{a}"
aws = {{ region = "us-east-1", access_key_id = "{akid}", secret_access_key = "{secret}" }}

[[providers]]
name = "bedrock-wrong-key"
kind = "bedrock"
base_url = "http://{a}"
aws = {{ region = "us-east-1", access_key_id = "{akid}", secret_access_key = "not-the-secret" }}

[[providers]]
name = "bedrock-irsa"
kind = "bedrock"
base_url = "http://{a}"
aws = {{ region = "us-east-1", role_arn = "arn:aws:iam::1:role/pylon", web_identity_token_file = "{identity}", sts_url = "http://{a}/sts" }}

[[models]]
name = "azure-chat"
targets = [ {{ provider = "azure", model = "gpt-4o-deploy" }} ]

[[models]]
name = "azure-v1"
targets = [ {{ provider = "azure-v1", model = "gpt-4o-deploy" }} ]

[[models]]
name = "bedrock-claude"
targets = [ {{ provider = "bedrock", model = "anthropic.claude-3-5-haiku-20241022-v1:0" }} ]

[[models]]
name = "bedrock-broken"
targets = [ {{ provider = "bedrock-wrong-key", model = "anthropic.claude-x" }} ]
retries = 0

[[models]]
name = "bedrock-irsa"
targets = [ {{ provider = "bedrock-irsa", model = "amazon.nova-lite-v1:0" }} ]
"#,
        a = a.addr,
        token = token_file.display(),
        identity = identity_file.display(),
        akid = AWS_ACCESS_KEY_ID,
        secret = AWS_SECRET_ACCESS_KEY,
    )
}

async fn env() -> (MockServer, Gateway, std::path::PathBuf) {
    let a = MockServer::start().await;
    let dir = temp_dir("cloud");
    let token = dir.join("entra-token");
    std::fs::write(&token, "entra-1\n").unwrap();
    let identity = dir.join("web-identity");
    std::fs::write(&identity, "eyJ-web-identity").unwrap();
    let gw = Gateway::from_text(&config(&a, &token, &identity)).await;
    (a, gw, token)
}

#[tokio::test]
async fn azure_uses_deployment_paths_api_version_and_its_key() {
    let (a, gw, _) = env().await;
    let resp = gw.chat(hello("azure-chat")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from gpt-4o-deploy! You said: hello"
    );
    let s = a.stats();
    assert_eq!(
        s.last_uri.as_deref(),
        Some("/openai/deployments/gpt-4o-deploy/chat/completions?api-version=2024-10-21")
    );
    assert_eq!(
        s.last_headers.get("api-key").map(String::as_str),
        Some("azure-key")
    );
    assert!(!s.last_headers.contains_key("authorization"));

    // A stream, and the Messages API translated onto Azure.
    let text = gw
        .chat(hello_stream("azure-chat"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"said: \""), "{text}");
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    let resp = client()
        .post(gw.url("/v1/messages"))
        .json(&json!({"model": "azure-chat", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message", "{body}");
}

#[tokio::test]
async fn azure_content_filter_errors_come_back_in_openais_shape() {
    let (_a, gw, _) = env().await;
    let resp = gw
        .chat(json!({"model": "azure-chat", "messages": [{"role": "user", "content": format!("tell me {FILTERED}")}]}))
        .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "content_filter", "{body}");
    assert_eq!(body["error"]["param"], "prompt");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"].get("innererror").is_none());
}

#[tokio::test]
async fn azure_v1_with_an_entra_token_read_from_its_file_and_renewed() {
    let (a, gw, token) = env().await;
    assert_eq!(gw.chat(hello("azure-v1")).await.status(), 200);
    let s = a.stats();
    assert_eq!(s.last_uri.as_deref(), Some("/openai/v1/chat/completions"));
    assert_eq!(s.last_body.unwrap()["model"], "gpt-4o-deploy");
    assert_eq!(
        s.last_headers.get("authorization").map(String::as_str),
        Some("Bearer entra-1")
    );
    // The sidecar writes a new token: the next requests carry it, no restart.
    std::fs::write(&token, "entra-2").unwrap();
    let mut renewed = false;
    for _ in 0..100 {
        gw.chat(hello("azure-v1")).await;
        if a.stats()
            .last_headers
            .get("authorization")
            .map(String::as_str)
            == Some("Bearer entra-2")
        {
            renewed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(renewed, "the renewed token was never sent");
    // The Responses API on Azure: the version-less path, the deployment in the body.
    let resp = client()
        .post(gw.url("/v1/responses"))
        .json(&json!({"model": "azure-v1", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(a.stats().last_uri.as_deref(), Some("/openai/v1/responses"));
}

#[tokio::test]
async fn bedrock_converse_is_signed_and_translated_both_ways() {
    let (a, gw, _) = env().await;
    let resp = gw
        .chat(
            json!({"model": "bedrock-claude", "max_tokens": 50, "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200, "the mock accepted the signature");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from anthropic.claude-3-5-haiku-20241022-v1:0! You said: hello"
    );
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let s = a.stats();
    assert_eq!(
        s.last_uri.as_deref(),
        Some("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse")
    );
    let sent = s.last_body.unwrap();
    assert_eq!(sent["system"][0]["text"], "be brief");
    assert_eq!(sent["inferenceConfig"]["maxTokens"], 50);
    let auth = s.last_headers.get("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDPYLONMOCK/"),
        "{auth}"
    );
}

#[tokio::test]
async fn bedrock_streams_arrive_as_event_stream_frames_and_leave_as_sse() {
    let (_a, gw, _) = env().await;
    let text = gw
        .chat(hello_stream("bedrock-claude"))
        .await
        .text()
        .await
        .unwrap();
    let chunks: Vec<Value> = sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(content.ends_with("You said: hello"), "{content}");
    assert!(chunks
        .iter()
        .any(|c| c["usage"]["completion_tokens"].as_u64() > Some(0)));
    assert!(text.ends_with("data: [DONE]\n\n"));

    // A tool call streamed, then answered.
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let text = gw
        .chat(
            json!({"model": "bedrock-claude", "stream": true, "tools": tools,
            "messages": [{"role": "user", "content": "weather?"}]}),
        )
        .await
        .text()
        .await
        .unwrap();
    let args: String = sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap()["input"],
        "weather?"
    );
    let resp = gw
        .chat(json!({"model": "bedrock-claude", "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [{"id": "tooluse_0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "tooluse_0", "content": "sunny"}]}))
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
}

#[tokio::test]
async fn a_bad_bedrock_signature_is_pylons_problem_not_the_clients() {
    let (a, gw, _) = env().await;
    let resp = gw.chat(hello("bedrock-broken")).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("refused Pylon's credential"), "{msg}");
    assert!(
        !msg.contains("signature we calculated"),
        "the provider's text stays out: {msg}"
    );
    assert_eq!(
        a.stats().requests,
        0,
        "rejected at the signature check, before the model"
    );
}

#[tokio::test]
async fn bedrock_credentials_come_from_a_web_identity_through_sts() {
    let (a, gw, _) = env().await;
    let resp = gw.chat(hello("bedrock-irsa")).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let s = a.stats();
    assert_eq!(
        s.last_headers
            .get("x-amz-security-token")
            .map(String::as_str),
        Some("mock-session")
    );
    // And the Responses API through Bedrock, streamed.
    let text = client()
        .post(gw.url("/v1/responses"))
        .json(&json!({"model": "bedrock-irsa", "input": "hello", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let last: Value = serde_json::from_str(sse_data(&text).last().unwrap()).unwrap();
    assert_eq!(last["type"], "response.completed", "{text}");
}

#[tokio::test]
async fn embeddings_through_azure_gemini_and_bedrock_come_back_in_openais_shape() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let text = TWO_MOCKS.to_owned()
        + &format!(
            r#"
[[providers]]
name = "azure"
kind = "azure"
base_url = "http://{a}"
api_key = "k"

[[providers]]
name = "bedrock"
kind = "bedrock"
base_url = "http://{a}"
aws = {{ region = "us-east-1", access_key_id = "{AWS_ACCESS_KEY_ID}", secret_access_key = "{AWS_SECRET_ACCESS_KEY}" }}

[[models]]
name = "azure-embed"
targets = [ {{ provider = "azure", model = "embed-deploy" }} ]

[[models]]
name = "gemini-embed"
targets = [ {{ provider = "a-gemini", model = "text-embedding-004" }} ]

[[models]]
name = "titan-embed"
targets = [ {{ provider = "bedrock", model = "amazon.titan-embed-text-v2:0" }} ]

[[models]]
name = "cohere-embed"
targets = [ {{ provider = "bedrock", model = "cohere.embed-english-v3" }} ]
"#,
            a = a.addr
        );
    let gw = Gateway::start(&text, &a, &b).await;
    let embed = |model: &str, input: Value| {
        let url = gw.url("/v1/embeddings");
        let body = json!({"model": model, "input": input, "dimensions": 16});
        async move {
            let resp = client().post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    for (model, input, n) in [
        ("azure-embed", json!(["one", "two"]), 2),
        ("gemini-embed", json!(["one", "two"]), 2),
        ("cohere-embed", json!(["one", "two"]), 2),
        ("titan-embed", json!("one"), 1),
    ] {
        let (status, body) = embed(model, input).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["object"], "list");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), n, "{model}");
        assert_eq!(
            data[0]["embedding"].as_array().unwrap().len(),
            16,
            "{model}"
        );
        assert!(
            body["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
            "{model}"
        );
    }
    assert_eq!(
        a.stats().last_uri.as_deref(),
        Some("/model/amazon.titan-embed-text-v2%3A0/invoke")
    );
    let (status, body) = embed("titan-embed", json!(["one", "two"])).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("one input"));
    let (status, _) = embed("claude", json!("x")).await;
    assert_eq!(status, 400, "no embeddings on an anthropic provider");
}
