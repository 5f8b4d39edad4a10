//! Streaming: no buffering, mid-stream failure, client disconnect.

use std::time::Duration;

use futures_util::StreamExt;
use pylon_providers::mock::Behaviour;
use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn first_chunk_arrives_before_the_upstream_finishes() {
    for model in ["a-only", "claude", "gemini"] {
        let (a, _b, gw) = two_mocks().await;
        a.set(Behaviour {
            chunk_delay: Duration::from_millis(150),
            ..Behaviour::default()
        });
        let resp = gw.chat(hello_stream(model)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: "), "{model}");
        assert_eq!(
            a.stats().streams_completed,
            0,
            "{model}: the upstream is still streaming"
        );
        let mut rest = Vec::new();
        while let Some(chunk) = body.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8(rest).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{model}: {text}");
        let usage: Vec<Value> = sse_data(&text)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["usage"].is_object())
            .collect();
        assert_eq!(
            usage.len(),
            1,
            "{model}: one usage chunk with include_usage"
        );
        assert!(usage[0]["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn usage_chunk_only_when_asked() {
    let (_a, _b, gw) = two_mocks().await;
    for model in ["claude", "gemini"] {
        let mut req = hello_stream(model);
        req.as_object_mut().unwrap().remove("stream_options");
        let text = gw.chat(req).await.text().await.unwrap();
        assert!(!text.contains("\"usage\""), "{model}: {text}");
    }
}

#[tokio::test]
async fn mid_stream_failure_ends_with_an_error_event() {
    for model in ["a-only", "claude", "gemini"] {
        let (a, b, gw) = two_mocks().await;
        a.set(Behaviour {
            drop_after_chunks: Some(3),
            ..Behaviour::default()
        });
        let resp = gw.chat(hello_stream(model)).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let data = sse_data(&text);
        let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
        assert_eq!(
            last["error"]["code"], "stream_interrupted",
            "{model}: {text}"
        );
        assert!(!text.contains("[DONE]"));
        assert!(
            data[..data.len() - 1]
                .iter()
                .all(|d| serde_json::from_str::<Value>(d).is_ok()),
            "every event whole"
        );
        assert_eq!(b.stats().requests, 0, "no failover after the first byte");
    }
}

#[tokio::test]
async fn mid_stream_failure_on_messages_is_an_anthropic_error_event() {
    let (a, _b, gw) = two_mocks().await;
    a.set(Behaviour {
        drop_after_chunks: Some(4),
        ..Behaviour::default()
    });
    let text = client()
        .post(gw.url("/v1/messages"))
        .json(&serde_json::json!({"model": "claude", "max_tokens": 9, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("event: error\ndata: {\"error\":{\"message\""),
        "{text}"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream() {
    let (a, _b, gw) = two_mocks().await;
    a.set(Behaviour {
        chunk_delay: Duration::from_millis(50),
        repeat: 50,
        ..Behaviour::default()
    });
    let resp = gw.chat(hello_stream("a-only")).await;
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    assert!(
        eventually(Duration::from_secs(5), || a.stats().streams_cancelled == 1).await,
        "the upstream stream was cancelled: {:?}",
        a.stats()
    );
    assert_eq!(a.stats().streams_completed, 0);
}
