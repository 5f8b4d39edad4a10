//! Fallback triggers, retries, Retry-After and circuit breakers.

use std::time::{Duration, Instant};

use pylon_providers::mock::Behaviour;

use crate::harness::*;

async fn falls_back(a_behaviour: Behaviour, stream: bool) {
    let (a, b, gw) = two_mocks().await;
    a.set(a_behaviour);
    let body = if stream {
        hello_stream("a-only")
    } else {
        hello("a-only")
    };
    let resp = gw.chat(body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(provider_of(&resp), "b", "served by the fallback");
    let text = resp.text().await.unwrap();
    assert!(text.contains("mock-b"), "{text}");
    assert!(a.stats().requests >= 1, "the primary was tried");
    assert_eq!(b.stats().requests, 1);
}

#[tokio::test]
async fn falls_back_on_500() {
    falls_back(
        Behaviour {
            error_status: Some(500),
            ..Behaviour::default()
        },
        false,
    )
    .await;
}

#[tokio::test]
async fn falls_back_on_429() {
    falls_back(
        Behaviour {
            error_status: Some(429),
            ..Behaviour::default()
        },
        false,
    )
    .await;
}

#[tokio::test]
async fn falls_back_on_timeout() {
    falls_back(
        Behaviour {
            latency: Duration::from_secs(3),
            ..Behaviour::default()
        },
        false,
    )
    .await;
}

#[tokio::test]
async fn falls_back_on_stream_timeout_before_first_chunk() {
    falls_back(
        Behaviour {
            ttft: Duration::from_secs(3),
            ..Behaviour::default()
        },
        true,
    )
    .await;
}

#[tokio::test]
async fn falls_back_on_drop_before_first_byte() {
    falls_back(
        Behaviour {
            drop_after_chunks: Some(0),
            ..Behaviour::default()
        },
        true,
    )
    .await;
    falls_back(
        Behaviour {
            drop_after_chunks: Some(0),
            ..Behaviour::default()
        },
        false,
    )
    .await;
}

#[tokio::test]
async fn falls_back_on_connection_refused() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let b = MockServer::start().await;
    let config = TWO_MOCKS.replace("http://{a}/v1", &format!("http://127.0.0.1:{port}/v1"));
    let gw = Gateway::start(&config, &b, &b).await;
    let resp = gw.chat(hello("a-only")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(provider_of(&resp), "b");
}

#[tokio::test]
async fn client_errors_are_not_retried_and_keep_their_status() {
    let (a, b, gw) = two_mocks().await;
    a.set(Behaviour {
        error_status: Some(422),
        ..Behaviour::default()
    });
    let resp = gw.chat(hello("a-only")).await;
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("injected error 422"),
        "{body}"
    );
    assert_eq!((a.stats().requests, b.stats().requests), (1, 0));
}

#[tokio::test]
async fn exhausted_targets_give_502_and_retries_are_bounded() {
    let (a, _b, gw) = two_mocks().await;
    a.set(Behaviour {
        error_status: Some(500),
        ..Behaviour::default()
    });
    let resp = gw.chat(hello("a-strict")).await;
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_error");
    assert_eq!(a.stats().requests, 2, "one attempt plus retries = 1");
}

#[tokio::test]
async fn timeouts_everywhere_give_504() {
    let (a, _b, gw) = two_mocks().await;
    a.set(Behaviour {
        latency: Duration::from_secs(3),
        ..Behaviour::default()
    });
    let resp = gw.chat(hello("a-strict")).await;
    assert_eq!(resp.status(), 504);
}

#[tokio::test]
async fn retry_after_is_waited_for_then_passed_on() {
    let (a, _b, gw) = two_mocks().await;
    a.set(Behaviour {
        error_status: Some(429),
        retry_after: Some(1),
        ..Behaviour::default()
    });
    let started = Instant::now();
    let resp = gw.chat(hello("a-strict")).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After before the retry"
    );
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(a.stats().requests, 2);
}

#[tokio::test]
async fn breaker_opens_then_recovers_through_half_open() {
    let (a, b, gw) = two_mocks().await;
    a.set(Behaviour {
        error_status: Some(500),
        ..Behaviour::default()
    });
    for _ in 0..3 {
        assert_eq!(provider_of(&gw.chat(hello("a-only")).await), "b");
    }
    assert_eq!(a.stats().requests, 3);
    // Open: the dead target costs nothing, requests go straight to the fallback.
    for _ in 0..5 {
        assert_eq!(provider_of(&gw.chat(hello("a-only")).await), "b");
    }
    assert_eq!(a.stats().requests, 3, "no request reached the open target");
    assert_eq!(b.stats().requests, 8);
    // The provider heals; after the cool-down one probe goes through and closes the breaker.
    a.set(Behaviour::default());
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(provider_of(&gw.chat(hello("a-only")).await), "a");
    assert_eq!(provider_of(&gw.chat(hello("a-only")).await), "a");
}

#[tokio::test]
async fn concurrent_requests_all_succeed() {
    let (_a, _b, gw) = two_mocks().await;
    let c = client();
    let url = gw.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let model = ["a-only", "claude", "gemini", "b-only"][i % 4];
                c.post(url)
                    .json(&hello(model))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}
