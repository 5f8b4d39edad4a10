//! The response cache through the HTTP surface: hits and misses, expiry on an injected clock,
//! client directives, tenant isolation, stream ↔ non-stream reuse, the temperature rule, purge,
//! coalescing, and two instances sharing a real Redis (and surviving without it).

use std::time::Duration;

use pylon_providers::mock::Behaviour;
use serde_json::{json, Value};

use crate::harness::*;

const ADMIN: &str = "cache-admin";

fn cached(extra: &str) -> String {
    format!("{TWO_MOCKS}\n[cache]\nenabled = true\n{extra}\n")
}

/// A question no other test asks, so shared state (Redis) never answers it by accident.
fn unique(temperature: f64) -> Value {
    json!({"model": "b-only", "temperature": temperature,
           "messages": [{"role": "user", "content": format!("q {}", uuid::Uuid::new_v4())}]})
}

async fn post(
    gw: &Gateway,
    body: &Value,
    headers: &[(&str, &str)],
) -> (String, Option<String>, String) {
    let mut req = client().post(gw.url("/v1/chat/completions")).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cache = resp
        .headers()
        .get("x-pylon-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let age = resp
        .headers()
        .get("age")
        .map(|v| v.to_str().unwrap().to_owned());
    (cache, age, resp.text().await.unwrap())
}

async fn start(
    extra: &str,
) -> (
    MockServer,
    MockServer,
    Gateway,
    std::sync::Arc<pylon_control::Control>,
) {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let text = cached(extra)
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let (gw, control) = Gateway::with_admin(&text, Some(ADMIN)).await;
    (a, b, gw, control)
}

#[tokio::test]
async fn hit_after_miss_then_expiry_on_the_injected_clock() {
    let (_a, b, gw, control) = start("").await;
    let q = unique(0.0);
    let (c1, _, body1) = post(&gw, &q, &[]).await;
    let (c2, age, body2) = post(&gw, &q, &[]).await;
    assert_eq!((c1.as_str(), c2.as_str()), ("miss", "hit"));
    assert_eq!(age.as_deref(), Some("0"));
    assert_eq!(body1, body2, "the same answer, byte for byte");
    assert_eq!(b.stats().requests, 1, "the hit never reached the provider");
    // Key order and delivery-only fields do not make a different request.
    let reordered = json!({"messages": q["messages"], "temperature": 0.0, "model": "b-only", "user": "someone-else"});
    assert_eq!(post(&gw, &reordered, &[]).await.0, "hit");

    control
        .gateway
        .advance_cache_clock(Duration::from_secs(4 * 60));
    let (c, age, _) = post(&gw, &q, &[]).await;
    assert_eq!((c.as_str(), age.as_deref()), ("hit", Some("240")));
    control.gateway.advance_cache_clock(Duration::from_secs(61));
    assert_eq!(
        post(&gw, &q, &[]).await.0,
        "miss",
        "the default TTL is 5 minutes"
    );
    assert_eq!(b.stats().requests, 2);

    let metrics = client()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pylon_cache_requests_total{result=\"hit\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("pylon_cache_requests_total{result=\"miss\"} 2"));
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("pylon_cache_tokens_saved_total ") && !l.ends_with(" 0")));
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("pylon_cache_bytes ") && !l.ends_with(" 0")));
}

#[tokio::test]
async fn bypass_and_refresh_directives() {
    let (_a, b, gw, _c) = start("").await;
    let q = unique(0.0);
    assert_eq!(post(&gw, &q, &[]).await.0, "miss");
    assert_eq!(
        post(&gw, &q, &[("x-pylon-cache", "bypass")]).await.0,
        "bypass"
    );
    assert_eq!(
        post(&gw, &q, &[("cache-control", "no-store")]).await.0,
        "bypass"
    );
    assert_eq!(b.stats().requests, 3, "bypass goes to the provider");
    assert_eq!(
        post(&gw, &q, &[("x-pylon-cache", "refresh")]).await.0,
        "miss"
    );
    assert_eq!(
        post(&gw, &q, &[("cache-control", "no-cache")]).await.0,
        "miss"
    );
    assert_eq!(b.stats().requests, 5, "refresh goes to the provider");
    assert_eq!(post(&gw, &q, &[]).await.0, "hit");
    assert_eq!(b.stats().requests, 5);
    // A bypassed request stores nothing.
    let fresh = unique(0.0);
    post(&gw, &fresh, &[("x-pylon-cache", "bypass")]).await;
    assert_eq!(post(&gw, &fresh, &[]).await.0, "miss");
}

#[tokio::test]
async fn temperature_above_the_ceiling_is_not_cached_unless_the_model_says_so() {
    let (_a, b, gw, _c) = start("max_temperature = 0.5").await;
    let hot = unique(0.9);
    assert_eq!(post(&gw, &hot, &[]).await.0, "bypass");
    assert_eq!(post(&gw, &hot, &[]).await.0, "bypass");
    assert_eq!(b.stats().requests, 2);
    let mut no_temp = unique(0.0);
    no_temp.as_object_mut().unwrap().remove("temperature");
    assert_eq!(
        post(&gw, &no_temp, &[]).await.0,
        "bypass",
        "no temperature means the default, 1.0"
    );

    let b = MockServer::start().await;
    let text = cached("max_temperature = 0.5")
        .replace(
            "name = \"b-only\"\ntargets",
            "name = \"b-only\"\ncache = { any_temperature = true }\ntargets",
        )
        .replace("{a}", &b.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let gw = Gateway::from_text(&text).await;
    let hot = unique(0.9);
    assert_eq!(post(&gw, &hot, &[]).await.0, "miss");
    assert_eq!(post(&gw, &hot, &[]).await.0, "hit");
}

#[tokio::test]
async fn streams_replay_and_stream_and_non_stream_answers_serve_each_other() {
    let (_a, b, gw, _c) = start("").await;
    let q = unique(0.0);
    let (_, _, whole) = post(&gw, &q, &[]).await;
    let whole: Value = serde_json::from_str(&whole).unwrap();
    let mut s = q.clone();
    s["stream"] = json!(true);
    s["stream_options"] = json!({"include_usage": true});
    let (c, _, sse) = post(&gw, &s, &[]).await;
    assert_eq!(c, "hit");
    let events = sse_data(&sse);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);

    // Stream first, then the same question without streaming.
    let mut s2 = unique(0.0);
    s2["stream"] = json!(true);
    let (c, _, sse) = post(&gw, &s2, &[]).await;
    assert_eq!(c, "miss");
    let streamed: String = sse_data(&sse)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            serde_json::from_str::<Value>(e).ok()?["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    s2.as_object_mut().unwrap().remove("stream");
    let (c, _, body) = post(&gw, &s2, &[]).await;
    assert_eq!(c, "hit");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], streamed);
    assert_eq!(b.stats().requests, 2);
}

#[tokio::test]
async fn tenants_never_see_each_others_answers_and_purge_removes_entries() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let text = cached("")
        .replace("mode = \"none\"", "mode = \"keys\"")
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let (gw, _c) = Gateway::with_admin(&text, Some(ADMIN)).await;
    let mut keys = Vec::new();
    for name in ["tenant-1", "tenant-2"] {
        let k: Value = client()
            .post(gw.url("/admin/v1/keys"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys.push((
            k["key"].as_str().unwrap().to_owned(),
            k["id"].as_str().unwrap().to_owned(),
        ));
    }
    let q = unique(0.0);
    let ask = |secret: String| {
        let (url, q) = (gw.url("/v1/chat/completions"), q.clone());
        async move {
            let r = client()
                .post(url)
                .bearer_auth(secret)
                .json(&q)
                .send()
                .await
                .unwrap();
            r.headers()["x-pylon-cache"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(ask(keys[0].0.clone()).await, "miss");
    assert_eq!(ask(keys[0].0.clone()).await, "hit");
    assert_eq!(
        ask(keys[1].0.clone()).await,
        "miss",
        "another key has its own namespace"
    );
    assert_eq!(ask(keys[1].0.clone()).await, "hit");

    let purge = |q: String| {
        let url = gw.url(&format!("/admin/v1/cache?{q}"));
        async move {
            client()
                .delete(url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(purge(format!("key={}", keys[0].1)).await["purged"], 1);
    assert_eq!(ask(keys[0].0.clone()).await, "miss");
    assert_eq!(
        ask(keys[1].0.clone()).await,
        "hit",
        "only that key's entries went"
    );
    assert_eq!(purge("model=b-only".into()).await["purged"], 2);
    assert_eq!(ask(keys[1].0.clone()).await, "miss");
    assert_eq!(
        client()
            .delete(gw.url("/admin/v1/cache"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn twenty_identical_concurrent_requests_make_one_upstream_call() {
    let (_a, b, gw, _c) = start("").await;
    b.set(Behaviour {
        latency: Duration::from_millis(300),
        ..Behaviour::default()
    });
    for stream in [false, true] {
        let mut q = unique(0.0);
        if stream {
            q["stream"] = json!(true);
        }
        let before = b.stats().requests;
        let calls = (0..20).map(|_| post(&gw, &q, &[]));
        let answers = futures_util::future::join_all(calls).await;
        assert_eq!(
            b.stats().requests - before,
            1,
            "one upstream call for 20 requests (stream: {stream})"
        );
        let misses = answers.iter().filter(|(c, _, _)| c == "miss").count();
        assert_eq!(misses, 1, "one leader; the rest were served its answer");
        let bodies: std::collections::HashSet<&String> =
            answers.iter().map(|(_, _, body)| body).collect();
        assert!(stream || bodies.len() == 1, "everyone got the same answer");
    }
    let metrics = client()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pylon_cache_coalesced_total 38"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failed_leader_releases_the_waiting_requests() {
    let (_a, b, gw, _c) = start("").await;
    b.set(Behaviour {
        latency: Duration::from_millis(200),
        error_status: Some(400),
        ..Behaviour::default()
    });
    let q = unique(0.0);
    let calls = (0..5).map(|_| {
        let (url, q) = (gw.url("/v1/chat/completions"), q.clone());
        async move {
            client()
                .post(url)
                .json(&q)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert_eq!(
        statuses,
        vec![400; 5],
        "nobody hangs and nobody gets a cached error"
    );
    b.set(Behaviour::default());
    assert_eq!(
        post(&gw, &q, &[]).await.0,
        "miss",
        "errors are never stored"
    );
}

fn redis_url() -> String {
    std::env::var("PYLON_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn two_instances_share_hits_through_redis() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let text = cached("namespace = \"global\"")
        .replace("[data]", "")
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let with_redis = |dir: &str| {
        format!(
            "[data]\ndir = \"{dir}\"\nredis_url = \"{}\"\n{text}",
            redis_url()
        )
    };
    let one = Gateway::from_text(&with_redis(&temp_dir("c1").display().to_string())).await;
    let two = Gateway::from_text(&with_redis(&temp_dir("c2").display().to_string())).await;
    let q = unique(0.0);
    assert_eq!(post(&one, &q, &[]).await.0, "miss");
    // The L2 write is in the background: wait until Redis holds an entry for this question.
    let conn = redis::Client::open(redis_url()).unwrap();
    let mut conn = conn
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required: {e}", redis_url()));
    // The mock echoes the question, so the stored answer names this test's unique question.
    let question = q["messages"][0]["content"].as_str().unwrap().to_owned();
    let mut stored = false;
    'wait: for _ in 0..200 {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("pylon:cache:g:b-only:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        for k in keys {
            let v: Option<String> = redis::cmd("GET")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap();
            if v.is_some_and(|v| v.contains(&question)) {
                stored = true;
                break 'wait;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored);
    let before = b.stats().requests;
    assert_eq!(
        post(&two, &q, &[]).await.0,
        "hit",
        "the other instance's answer, through Redis"
    );
    assert_eq!(b.stats().requests, before);
}

#[tokio::test]
async fn without_redis_the_cache_keeps_serving_from_memory() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    // Nothing listens on port 1: every Redis call fails.
    let text = format!(
        "[data]\ndir = \"{}\"\nredis_url = \"redis://127.0.0.1:1\"\n{}",
        temp_dir("c-noredis").display(),
        cached("")
    )
    .replace("{a}", &a.addr.to_string())
    .replace("{b}", &b.addr.to_string());
    let gw = Gateway::from_text(&text).await;
    let q = unique(0.0);
    assert_eq!(post(&gw, &q, &[]).await.0, "miss");
    assert_eq!(post(&gw, &q, &[]).await.0, "hit");
    assert_eq!(b.stats().requests, 1);
}

#[tokio::test]
async fn semantic_hits_above_the_threshold_misses_below_and_never_across_system_prompts() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let text = cached("[cache.semantic]\nembedding_model = \"embed\"\nthreshold = 0.8\n")
        .replace("name = \"b-only\"\ntargets", "name = \"b-only\"\ncache = { semantic = true }\ntargets")
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string())
        + "\n[[models]]\nname = \"embed\"\ntargets = [ { provider = \"a\", model = \"mock-embed\" } ]\n";
    let gw = Gateway::from_text(&text).await;
    let ask = |system: &str, question: &str| {
        let body = json!({"model": "b-only", "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]});
        let url = gw.url("/v1/chat/completions");
        async move {
            let r = client().post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            let (cache, sim) = (h("x-pylon-cache").unwrap(), h("x-pylon-cache-similarity"));
            (cache, sim, r.json::<Value>().await.unwrap())
        }
    };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let brief = format!("be brief {tag}");
    let (c, _, first) = ask(&brief, "What is the capital city of France").await;
    assert_eq!(c, "miss");
    let (c, sim, same) = ask(&brief, "what is the capital city of france?").await;
    assert_eq!(c, "hit", "the same words, differently written");
    assert!(sim.unwrap().parse::<f64>().unwrap() > 0.99);
    assert_eq!(
        same["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );
    let (c, sim, _) = ask(&brief, "Tell me what is the capital city of France").await;
    assert_eq!(c, "hit", "a similar question");
    let sim: f64 = sim.unwrap().parse().unwrap();
    assert!((0.8..0.99).contains(&sim), "{sim}");
    let (c, sim, _) = ask(&brief, "How do I bake sourdough bread at home").await;
    assert_eq!((c.as_str(), sim), ("miss", None), "an unrelated question");
    let (c, _, _) = ask(
        &format!("be verbose {tag}"),
        "what is the capital city of france?",
    )
    .await;
    assert_eq!(
        c, "miss",
        "the same question under another system prompt is another context"
    );
    assert_eq!(
        b.stats().requests,
        3,
        "three answers came from the provider"
    );
    assert_eq!(
        a.stats().requests,
        4,
        "four distinct texts embedded; the repeated one came from the memo"
    );
}

#[tokio::test]
async fn embeddings_are_cached_too() {
    let (_a, b, gw, _c) = start("").await;
    let body =
        json!({"model": "b-only", "input": ["one", format!("two {}", uuid::Uuid::new_v4())]});
    let send = || client().post(gw.url("/v1/embeddings")).json(&body).send();
    let first = send().await.unwrap();
    assert_eq!(first.headers()["x-pylon-cache"], "miss");
    let first: Value = first.json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.headers()["x-pylon-cache"], "hit");
    assert_eq!(second.json::<Value>().await.unwrap(), first);
    assert_eq!(b.stats().requests, 1);
}

/// A private redis-server the test can stop.
fn start_redis() -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/setup)");
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server on {port} did not start");
}

#[tokio::test]
async fn redis_stopped_mid_run_degrades_to_memory_without_errors() {
    let (mut redis, port) = start_redis();
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let text = format!(
        "[data]\ndir = \"{}\"\nredis_url = \"redis://127.0.0.1:{port}\"\n{}",
        temp_dir("c-stop").display(),
        cached("")
    )
    .replace("{a}", &a.addr.to_string())
    .replace("{b}", &b.addr.to_string());
    let gw = Gateway::from_text(&text).await;
    let before = unique(0.0);
    assert_eq!(post(&gw, &before, &[]).await.0, "miss");
    let _ = redis.kill();
    let _ = redis.wait();
    // Every request still succeeds (post asserts 200); answers come from memory.
    assert_eq!(post(&gw, &before, &[]).await.0, "hit");
    let after = unique(0.0);
    assert_eq!(post(&gw, &after, &[]).await.0, "miss");
    assert_eq!(post(&gw, &after, &[]).await.0, "hit");
    assert_eq!(b.stats().requests, 2);
}

#[tokio::test]
async fn stream_followers_get_the_leaders_stream_live() {
    let (_a, b, gw, _c) = start("").await;
    b.set(Behaviour {
        chunk_delay: Duration::from_millis(150),
        repeat: 4,
        ..Behaviour::default()
    });
    let mut q = unique(0.0);
    q["stream"] = json!(true);
    let open = |q: Value| {
        let url = gw.url("/v1/chat/completions");
        async move { client().post(url).json(&q).send().await.unwrap() }
    };
    let leader = open(q.clone()).await;
    assert_eq!(leader.headers()["x-pylon-cache"], "miss");
    let followers = futures_util::future::join_all((0..5).map(|_| open(q.clone()))).await;
    let mut bodies = Vec::new();
    for f in followers {
        assert_eq!(f.headers()["x-pylon-cache"], "hit");
        let mut s = f.bytes_stream();
        let first = futures_util::StreamExt::next(&mut s)
            .await
            .unwrap()
            .unwrap();
        assert!(first.starts_with(b"data: "));
        // The follower's first bytes arrived while the provider was still streaming.
        assert_eq!(b.stats().streams_completed, 0, "live, not after the fact");
        bodies.push((first, s));
    }
    let leader_text = leader.text().await.unwrap();
    for (first, mut rest) in bodies {
        let mut text = String::from_utf8(first.to_vec()).unwrap();
        while let Some(chunk) = futures_util::StreamExt::next(&mut rest).await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        assert_eq!(
            text, leader_text,
            "every follower got the leader's stream, byte for byte"
        );
    }
    assert_eq!(b.stats().requests, 1);
}
