//! Rate limits, concurrency and budgets, in-process and shared through the real Redis.

use std::time::Duration;

use futures_util::StreamExt;
use pylon_providers::mock::Behaviour;
use serde_json::{json, Value};

use crate::harness::*;

const ADMIN: &str = "limits-admin";

/// Keys on, no per-IP limit unless asked, a price that makes every request cost $8
/// (2 input + 6 output tokens at $1 each).
fn config(mock: &MockServer, extra: &str) -> String {
    format!(
        r#"
[auth]
mode = "keys"
refresh = "100ms"

[limits]
ip_rpm = 0
{extra}

[[prices]]
model = "mock-a"
input_per_million = 1000000
output_per_million = 1000000

[[providers]]
name = "a"
kind = "openai"
base_url = "http://{}/v1"
api_key = "sk-a"

[[models]]
name = "m"
targets = [ {{ provider = "a", model = "mock-a" }} ]
"#,
        mock.addr
    )
}

async fn key(gw: &Gateway, body: Value) -> String {
    create_key_with(gw, ADMIN, body).await
}

async fn call(gw: &Gateway, key: &str) -> reqwest::Response {
    chat_as(gw, key, "m").await
}

#[tokio::test]
async fn key_rpm_limit_gives_429_with_retry_after_and_ratelimit_headers() {
    let mock = MockServer::start().await;
    let (gw, _) = Gateway::with_admin(&config(&mock, ""), Some(ADMIN)).await;
    let k = key(&gw, json!({"name": "slow", "limits": {"rpm": 3}})).await;
    for expected in ["2", "1", "0"] {
        let resp = call(&gw, &k).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-ratelimit-limit-requests"], "3");
        assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], expected);
    }
    let resp = call(&gw, &k).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=20).contains(&retry),
        "one slot frees every 20 s: {retry}"
    );
    assert!(resp.headers().contains_key("retry-after-ms"));
    assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("3 requests per minute for key `slow`"));
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &k)
        .json(&json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "rate_limit_error"
    );
    assert_eq!(
        mock.stats().requests,
        3,
        "limited requests never reach the provider"
    );
}

#[tokio::test]
async fn per_ip_limit_and_trusted_proxies() {
    let mock = MockServer::start().await;
    let text = config(&mock, "")
        .replace("mode = \"keys\"", "mode = \"none\"")
        .replace("ip_rpm = 0", "ip_rpm = 2");
    let gw = Gateway::from_text(&text).await;
    let with_xff = |xff: &'static str| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-forwarded-for", xff)
            .json(&hello("m"))
            .send()
    };
    assert_eq!(with_xff("1.1.1.1").await.unwrap().status(), 200);
    assert_eq!(with_xff("2.2.2.2").await.unwrap().status(), 200);
    let resp = with_xff("3.3.3.3").await.unwrap();
    assert_eq!(
        resp.status(),
        429,
        "an untrusted peer cannot pick its IP with X-Forwarded-For"
    );
    assert!(resp.text().await.unwrap().contains("client IP 127.0.0.1"));

    let trusted = Gateway::from_text(&text.replace(
        "ip_rpm = 2",
        "ip_rpm = 2\ntrusted_proxies = [\"127.0.0.1\"]",
    ))
    .await;
    let send = |xff: &'static str| {
        client()
            .post(trusted.url("/v1/chat/completions"))
            .header("x-forwarded-for", xff)
            .json(&hello("m"))
            .send()
    };
    for xff in ["9.9.9.9", "9.9.9.9"] {
        assert_eq!(send(xff).await.unwrap().status(), 200);
    }
    assert_eq!(
        send("9.9.9.9").await.unwrap().status(),
        429,
        "behind a trusted proxy the forwarded client is limited"
    );
    assert_eq!(
        send("8.8.8.8, 9.9.9.9").await.unwrap().status(),
        429,
        "the right-most untrusted entry counts, not a spoofed left one"
    );
    assert_eq!(send("7.7.7.7").await.unwrap().status(), 200);
}

#[tokio::test]
async fn token_limit_uses_the_estimate_then_reconciles() {
    let mock = MockServer::start().await;
    let (gw, _) = Gateway::with_admin(&config(&mock, ""), Some(ADMIN)).await;
    let k = key(&gw, json!({"name": "tokens", "limits": {"tpm": 80}})).await;
    let big =
        json!({"model": "m", "max_tokens": 45, "messages": [{"role": "user", "content": "hello"}]});
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&k)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-ratelimit-limit-tokens"], "80");
    // Estimated ~64 (a quarter of the body's bytes plus max_tokens), but the answer used 8
    // tokens: the refund makes room for another.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&k)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "reconciled with the provider's usage");
    let resp = client().post(gw.url("/v1/chat/completions")).bearer_auth(&k).json(&json!({"model": "m", "max_tokens": 59, "messages": [{"role": "user", "content": "hello"}]})).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.text().await.unwrap().contains("tokens per minute"));
}

#[tokio::test]
async fn concurrency_limit_frees_the_slot_when_a_stream_ends() {
    let mock = MockServer::start().await;
    mock.set(Behaviour {
        chunk_delay: Duration::from_millis(30),
        ..Behaviour::default()
    });
    let (gw, _) = Gateway::with_admin(&config(&mock, ""), Some(ADMIN)).await;
    let k = key(
        &gw,
        json!({"name": "one-at-a-time", "limits": {"max_concurrent": 1}}),
    )
    .await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&k)
        .json(&hello_stream("m"))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(
        call(&gw, &k).await.status(),
        429,
        "the slot is taken while the stream runs"
    );
    while stream.next().await.is_some() {}
    drop(stream);
    let mut ok = false;
    for _ in 0..50 {
        if call(&gw, &k).await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot was released");
}

#[tokio::test]
async fn hard_budget_stops_requests_and_usage_is_recorded() {
    let mock = MockServer::start().await;
    let (gw, _) = Gateway::with_admin(&config(&mock, ""), Some(ADMIN)).await;
    let k = key(
        &gw,
        json!({"name": "thrifty", "budget": {"amount_usd": 20.0, "period": "monthly"}}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(call(&gw, &k).await.status(), 200);
    }
    let resp = call(&gw, &k).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        resp.headers()["x-should-retry"],
        "false",
        "SDKs must not retry a spent budget"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$24.0000 used"),
        "{body}"
    );

    let mut report = Value::Null;
    for _ in 0..100 {
        report = client()
            .get(gw.url("/admin/v1/usage?group_by=model"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // Three answered, one refused by the budget: all are requests, one is an error.
        if report["rows"][0]["requests"] == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(report["rows"][0]["group"], "m", "{report}");
    assert_eq!(report["rows"][0]["requests"], 4, "{report}");
    assert_eq!(report["rows"][0]["errors"], 1, "{report}");
    assert_eq!(report["rows"][0]["input_tokens"], 6);
    assert_eq!(report["rows"][0]["cost_usd"], 24.0);
}

fn redis_url() -> String {
    std::env::var("PYLON_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn two_instances(mock: &MockServer) -> (Gateway, Gateway) {
    let data = temp_dir("redis-pair");
    let text = format!(
        "[data]\ndir = \"{}\"\nredis_url = \"{}\"\n{}",
        data.display(),
        redis_url(),
        config(mock, "")
    );
    let (one, _) = Gateway::with_admin(&text, Some(ADMIN)).await;
    let (two, _) = Gateway::with_admin(&text, Some(ADMIN)).await;
    (one, two)
}

async fn wait_for_key(gw: &Gateway, key: &str) {
    for _ in 0..100 {
        let resp = client()
            .get(gw.url("/v1/models"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("key never reached the second instance");
}

/// Sends `n` chat requests at once, alternating between the two instances; their statuses.
async fn fan_out(one: &Gateway, two: &Gateway, key: &str, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = if i % 2 == 0 {
                one.url("/v1/chat/completions")
            } else {
                two.url("/v1/chat/completions")
            };
            let key = key.to_owned();
            tokio::spawn(async move {
                client()
                    .post(url)
                    .bearer_auth(key)
                    .json(&hello("m"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn two_instances_sharing_redis_enforce_one_rpm_limit_exactly() {
    let mock = MockServer::start().await;
    let (one, two) = two_instances(&mock).await;
    let k = key(&one, json!({"name": "shared", "limits": {"rpm": 10}})).await;
    wait_for_key(&two, &k).await;
    let statuses = fan_out(&one, &two, &k, 40).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 10, "one shared limit across both instances");
}

#[tokio::test]
async fn budget_across_two_instances_overshoots_by_at_most_the_requests_in_flight() {
    let mock = MockServer::start().await;
    mock.set(Behaviour {
        latency: Duration::from_millis(20),
        ..Behaviour::default()
    });
    let (one, two) = two_instances(&mock).await;
    let k = key(
        &one,
        json!({"name": "shared-budget", "budget": {"amount_usd": 100.0, "period": "daily"}}),
    )
    .await;
    wait_for_key(&two, &k).await;
    // Waves of 10 concurrent requests, half on each instance, until one is refused.
    let mut ok = 0;
    let mut refused = false;
    for _wave in 0..10 {
        for status in fan_out(&one, &two, &k, 10).await {
            match status {
                200 => ok += 1,
                429 => refused = true,
                other => panic!("{other}"),
            }
        }
        if refused {
            break;
        }
    }
    assert!(refused, "the budget was enforced");
    // $100 allows 13 requests of $8 (the 13th starts at $96); at most one wave (10) may
    // have been in flight when the budget ran out.
    assert!((13..=13 + 10).contains(&ok), "{ok} requests succeeded");
    assert_eq!(call(&one, &k).await.status(), 429);
    assert_eq!(call(&two, &k).await.status(), 429);
}

/// A webhook receiver that records every JSON body it gets.
async fn webhook_sink() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn soft_budget_thresholds_notify_once_each() {
    let mock = MockServer::start().await;
    let (hook, seen) = webhook_sink().await;
    let extra = format!("[budgets]\nthresholds = [0.5, 1.0]\nwebhooks = [\"{hook}\"]");
    let text = config(&mock, "").replace("[[prices]]", &format!("{extra}\n\n[[prices]]"));
    let (gw, _) = Gateway::with_admin(&text, Some(ADMIN)).await;
    let k = key(
        &gw,
        json!({"name": "watched", "budget": {"amount_usd": 20.0, "period": "monthly"}}),
    )
    .await;
    let thresholds = || {
        let mut t: Vec<f64> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["threshold"].as_f64().unwrap())
            .collect();
        t.sort_by(f64::total_cmp);
        t
    };
    assert_eq!(call(&gw, &k).await.status(), 200); // $8: 40 %
    assert_eq!(call(&gw, &k).await.status(), 200); // $16: 80 %, past 50 %
    assert!(
        eventually(Duration::from_secs(10), || thresholds() == [0.5]).await,
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(call(&gw, &k).await.status(), 200); // $24: past 100 %
    assert!(
        eventually(Duration::from_secs(10), || thresholds() == [0.5, 1.0]).await,
        "{:?}",
        seen.lock().unwrap()
    );
    let event = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (
            event["type"].as_str(),
            event["scope"].as_str(),
            event["name"].as_str()
        ),
        (Some("budget.threshold"), Some("key"), Some("watched"))
    );
    assert_eq!(event["budget_usd"], 20.0);
    // Later refreshes and further (refused) requests send nothing more.
    assert_eq!(call(&gw, &k).await.status(), 429);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(thresholds(), [0.5, 1.0], "once per threshold per period");
}

#[tokio::test]
async fn usage_estimate_prices_a_traffic() {
    let mock = MockServer::start().await;
    let (gw, _) = Gateway::with_admin(&config(&mock, ""), Some(ADMIN)).await;
    let get = |q: &'static str| {
        client()
            .get(gw.url(&format!("/admin/v1/usage/estimate?{q}")))
            .bearer_auth(ADMIN)
            .send()
    };
    let est: Value = get("model=m&requests=10&input_tokens=2&output_tokens=6")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (est["priced_as"].as_str(), est["cost_usd"].as_f64()),
        (Some("mock-a"), Some(80.0))
    );
    let est: Value = get("model=gpt-4o-mini&requests=1000&input_tokens=1000&output_tokens=1000")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        (est["cost_usd"].as_f64().unwrap() - 0.75).abs() < 1e-9,
        "{est}"
    );
    assert_eq!(
        get("model=unknown-model&input_tokens=1&output_tokens=1")
            .await
            .unwrap()
            .status(),
        404
    );
}
