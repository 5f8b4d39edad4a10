//! Bad input: clear 4xx in the client's dialect, never reaching a provider.

use serde_json::{json, Value};

use crate::harness::*;

async fn post_raw(gw: &Gateway, path: &str, body: &'static str) -> (u16, Value) {
    let resp = client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn malformed_and_incomplete_bodies_are_400_and_never_reach_a_provider() {
    let (a, b, gw) = two_mocks().await;
    for body in [
        "{",
        "[]",
        "null",
        r#"{"model": "a-only"}"#,
        r#"{"model": "a-only", "messages": []}"#,
        r#"{"model": "a-only", "messages": [{"role": "wizard", "content": "x"}]}"#,
        r#"{"model": 42, "messages": [{"role": "user", "content": "x"}]}"#,
        r#"{"messages": [{"role": "user", "content": "x"}]}"#,
        "\u{0}\u{1}binary",
    ] {
        let (status, err) = post_raw(&gw, "/v1/chat/completions", body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(err["error"]["type"], "invalid_request_error", "{body}");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }
    // Schema errors that only a translation can see are caught before the provider too.
    let (status, _) = post_raw(
        &gw,
        "/v1/chat/completions",
        r#"{"model": "claude", "messages": [{"role": "user", "content": 5}]}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!((a.stats().requests, b.stats().requests), (0, 0));
}

#[tokio::test]
async fn messages_errors_are_anthropic_shaped() {
    let (a, _b, gw) = two_mocks().await;
    let (status, err) = post_raw(
        &gw,
        "/v1/messages",
        r#"{"model": "claude", "messages": []}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    let (status, err) = post_raw(
        &gw,
        "/v1/messages",
        r#"{"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}"#,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["type"], "not_found_error");
    assert_eq!(a.stats().requests, 0);
}

#[tokio::test]
async fn unknown_model_is_404() {
    let (_a, _b, gw) = two_mocks().await;
    let resp = gw.chat(hello("gpt-99")).await;
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "model_not_found");
    assert!(err["error"]["message"].as_str().unwrap().contains("gpt-99"));
    assert_eq!(gw.chat(hello("nosuchprovider/x")).await.status(), 404);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let (a, _b, gw) = two_mocks().await;
    let big = "x".repeat(5000);
    let resp = gw
        .chat(json!({"model": "a-only", "messages": [{"role": "user", "content": big}]}))
        .await;
    assert_eq!(resp.status(), 413);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("4096"));
    // Without Content-Length (chunked), the limit holds too.
    let stream =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(a.stats().requests, 0);
}

#[tokio::test]
async fn unknown_v1_path_is_an_openai_404() {
    let (_a, _b, gw) = two_mocks().await;
    let resp = client().get(gw.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "not_found");
}

async fn strict_gateway() -> (MockServer, Gateway) {
    let a = MockServer::start().await;
    let text = TWO_MOCKS
        .replace(
            "max_body_bytes = 4096",
            "max_body_bytes = 4096\nmax_messages = 3\nmax_message_bytes = 200\ncors_origins = [\"https://app.example.com\"]",
        )
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &a.addr.to_string());
    let gw = Gateway::from_text(&text).await;
    (a, gw)
}

#[tokio::test]
async fn message_count_and_size_limits_are_400s() {
    let (a, gw) = strict_gateway().await;
    let msg = json!({"role": "user", "content": "hi"});
    let resp = gw
        .chat(json!({"model": "a-only", "messages": [msg, msg, msg, msg]}))
        .await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("server.max_messages"));
    let resp = gw
        .chat(
            json!({"model": "a-only", "messages": [{"role": "user", "content": "x".repeat(300)}]}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("server.max_message_bytes"));
    let resp = client()
        .post(gw.url("/v1/messages"))
        .json(&json!({"model": "claude", "max_tokens": 5, "messages": [msg, msg, msg, msg]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(a.stats().requests, 0);
    assert_eq!(
        gw.chat(json!({"model": "a-only", "messages": [msg, msg, msg]}))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn security_headers_everywhere_and_csp_on_html() {
    let (_a, _b, gw) = two_mocks().await;
    for path in ["/v1/models", "/nowhere", "/livez"] {
        let resp = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(
            resp.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
        assert_eq!(resp.headers()["x-frame-options"], "DENY", "{path}");
        assert_eq!(resp.headers()["referrer-policy"], "no-referrer", "{path}");
    }
    // The AI endpoints are served without the router: its layers' headers must still be there,
    // on answers and on errors alike.
    let answered = gw.chat(hello("a-only")).await;
    let refused = client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(refused.status(), 400);
    for resp in [&answered, &refused] {
        let h = resp.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-request-id"].len(), 36, "a generated id: {h:?}");
    }
    let docs = client().get(gw.url("/docs/")).send().await.unwrap();
    let csp = docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let json = client().get(gw.url("/v1/models")).send().await.unwrap();
    assert!(
        !json.headers().contains_key("content-security-policy"),
        "CSP is for HTML pages"
    );
}

#[tokio::test]
async fn cors_only_for_allowed_origins() {
    let (_a, gw) = strict_gateway().await;
    let preflight = |origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let denied = preflight("https://evil.example.net").await.unwrap();
    assert!(!denied.headers().contains_key("access-control-allow-origin"));
    // With CORS on, an AI request's answer carries it too (errors included).
    let posted = client()
        .post(gw.url("/v1/chat/completions"))
        .header("origin", "https://app.example.com")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        posted.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let (_a2, _b2, plain) = two_mocks().await;
    let resp = client()
        .get(plain.url("/v1/models"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        !resp.headers().contains_key("access-control-allow-origin"),
        "no CORS unless configured"
    );
}
