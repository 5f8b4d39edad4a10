//! Fault injection over real HTTP: a primary that misbehaves as providers do (500s, 429 with
//! Retry-After, resets before the first byte, stalled first bytes, mid-stream drops) and a
//! healthy fallback, under concurrent mixed traffic.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pylon_providers::mock::Behaviour;
use tokio::sync::Mutex;

use crate::harness::*;

#[derive(Debug, Default)]
struct Tally {
    complete: usize,
    /// Streams cut mid-way that ended with a well-formed error event.
    interrupted: usize,
    /// Anything else: a failed status, a torn stream, a malformed body.
    failed: Vec<String>,
}

async fn one(gw_url: String, stream: bool, i: usize) -> Result<bool, String> {
    let model = "a-only";
    let body = if stream {
        serde_json::json!({"model": model, "stream": true,
                           "messages": [{"role": "user", "content": format!("q{i}")}]})
    } else {
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": format!("q{i}")}]})
    };
    let resp = client()
        .post(gw_url)
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| format!("#{i}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("#{i}: {e}"))?;
    if status != 200 {
        return Err(format!("#{i}: {status} {text}"));
    }
    if !stream {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("#{i}: {e}: {text}"))?;
        return if v["choices"][0]["message"]["content"].is_string() {
            Ok(true)
        } else {
            Err(format!("#{i}: {text}"))
        };
    }
    // Every stream is whole SSE events, ending in [DONE] or an error event.
    if !text.ends_with("\n\n") {
        return Err(format!("#{i}: torn stream: {text}"));
    }
    let data = sse_data(&text);
    for d in &data {
        if d != "[DONE]" && serde_json::from_str::<serde_json::Value>(d).is_err() {
            return Err(format!("#{i}: malformed event {d}"));
        }
    }
    match data.last().map(String::as_str) {
        Some("[DONE]") => Ok(true),
        Some(last) if last.contains("\"error\"") => Ok(false),
        _ => Err(format!("#{i}: no end: {text}")),
    }
}

#[tokio::test]
async fn a_misbehaving_primary_with_a_fallback_keeps_clients_whole() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    // The primary stays in rotation (a breaker that opened would hide the faults from the
    // traffic), and one address may send all of it.
    let text = TWO_MOCKS
        .replace("breaker_failures = 3", "breaker_failures = 1000")
        .replace("[auth]", "[limits]\nip_rpm = 0\n\n[auth]");
    let gw = Gateway::start(&text, &a, &b).await;
    a.set(Behaviour {
        chaos: 0.3,
        ..Behaviour::default()
    });
    let total = 1_500;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let url = gw.url("/v1/chat/completions");
    futures_util::stream::iter(0..total)
        .for_each_concurrent(20, |i| {
            let (url, tally) = (url.clone(), tally.clone());
            async move {
                let r = one(url, i % 2 == 0, i).await;
                let mut t = tally.lock().await;
                match r {
                    Ok(true) => t.complete += 1,
                    Ok(false) => t.interrupted += 1,
                    Err(e) => t.failed.push(e),
                }
            }
        })
        .await;
    let t = tally.lock().await;
    let faults = a.stats().faults;
    eprintln!(
        "fault injection: {} complete, {} interrupted, {} failed; faults (500, 429, reset, stall, drop): {faults:?}; fallback served {}",
        t.complete,
        t.interrupted,
        t.failed.len(),
        b.stats().requests
    );
    assert!(
        faults.iter().all(|n| *n > 10),
        "every kind of fault was injected: {faults:?}"
    );
    assert!(
        t.failed.is_empty(),
        "{:?}",
        &t.failed[..t.failed.len().min(5)]
    );
    // Only a stream already committed to its client can be cut, and it ends well-formed.
    assert!(t.interrupted as u64 <= faults[4], "{t:?} {faults:?}");
    let served = t.complete as f64 / (total - t.interrupted) as f64;
    assert!(served >= 0.999, "{served} of clients succeeded: {t:?}");
    assert!(b.stats().requests > 0, "the fallback served");
}
