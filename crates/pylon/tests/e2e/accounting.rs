//! Billing from the provider's own counts: streams whose client did not ask for usage, and
//! prompt-cache reads at their price.

use std::time::Duration;

use pylon_providers::mock::Behaviour;
use serde_json::{json, Value};

use crate::hardening::{call, create_key, ADMIN};
use crate::harness::*;

/// Keys on; `mock-a` (OpenAI) and `mock-claude` (Anthropic) at $1 per token in and out, cache
/// reads at $0.10, so every count shows in the cost.
fn billed(mock: &MockServer) -> String {
    format!(
        r#"
[auth]
mode = "keys"
refresh = "100ms"

[[prices]]
model = "mock-a"
input_per_million = 1000000
output_per_million = 1000000

[[prices]]
model = "mock-claude"
input_per_million = 1000000
output_per_million = 1000000
cache_read_per_million = 100000

[[providers]]
name = "a"
kind = "openai"
base_url = "http://{0}/v1"

[[providers]]
name = "ant"
kind = "anthropic"
base_url = "http://{0}"

[[models]]
name = "m"
targets = [ {{ provider = "a", model = "mock-a" }} ]

[[models]]
name = "claude"
targets = [ {{ provider = "ant", model = "mock-claude" }} ]
"#,
        mock.addr
    )
}

/// The newest request-log row once `n` rows exist.
async fn newest_row(gw: &Gateway, n: usize) -> Value {
    let mut rows = Value::Null;
    for _ in 0..100 {
        rows = admin_get(gw, ADMIN, "/admin/v1/requests?limit=100").await;
        if rows["data"].as_array().map_or(0, Vec::len) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    rows["data"][0].clone()
}

#[tokio::test]
async fn streams_are_billed_from_the_providers_usage_even_when_the_client_did_not_ask() {
    let mock = MockServer::start().await;
    let (gw, _) = Gateway::with_admin(&billed(&mock), Some(ADMIN)).await;
    let k = create_key(&gw, json!({"name": "streamer"})).await;
    // The same question without a stream: the provider's own count.
    let whole: Value = call(&gw, &k, "m").await.json().await.unwrap();
    let (input, output) = (
        whole["usage"]["prompt_tokens"].as_u64().unwrap(),
        whole["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&k)
        .json(&json!({"model": "m", "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    // The client did not ask for usage, so it gets no usage chunk…
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        sse_data(&text)
            .iter()
            .all(|d| !d.contains("\"choices\":[]")),
        "{text}"
    );
    // …but the provider was asked, and the stream is billed from its count.
    assert_eq!(
        mock.stats().last_body.unwrap()["stream_options"]["include_usage"],
        true
    );
    let row = newest_row(&gw, 2).await;
    assert_eq!(row["input_tokens"], input, "{row}");
    assert_eq!(row["output_tokens"], output, "{row}");
    assert_eq!(row["cost_usd"].as_f64().unwrap(), (input + output) as f64);
}

#[tokio::test]
async fn prompt_cache_reads_are_billed_at_their_price() {
    let mock = MockServer::start().await;
    let (gw, _) = Gateway::with_admin(&billed(&mock), Some(ADMIN)).await;
    let k = create_key(&gw, json!({"name": "cached"})).await;
    mock.set(Behaviour {
        cache_read_tokens: 1000,
        ..Behaviour::default()
    });
    for stream in [false, true] {
        let resp = client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", &k)
            .header("anthropic-version", "2023-06-01")
            .json(
                &json!({"model": "claude", "max_tokens": 16, "stream": stream,
                          "messages": [{"role": "user", "content": "hello"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.text().await.unwrap();
        let row = newest_row(&gw, if stream { 2 } else { 1 }).await;
        let input = row["input_tokens"].as_u64().unwrap();
        let output = row["output_tokens"].as_u64().unwrap();
        assert!(input > 1000, "cache reads count as input: {row}");
        // Plain input and output at $1 each, the 1,000 cached tokens at $0.10 each.
        let expected = (input - 1000) as f64 + output as f64 + 100.0;
        let cost = row["cost_usd"].as_f64().unwrap();
        assert!(
            (cost - expected).abs() < 1e-6,
            "stream {stream}: {cost} vs {expected}: {row}"
        );
    }
}
