//! Per-route policy on app routes, as nginx gave it: allow/deny networks, body and connection
//! caps, response header rules, `Forwarded` and `preserve_host`, the edge cache with
//! conditional requests, and client addresses from the PROXY protocol.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

#[derive(Clone, Default)]
struct App {
    /// Requests that reached the application.
    hits: Arc<AtomicU64>,
    /// Released by the test to let `/hold` answer.
    release: Arc<tokio::sync::Notify>,
    /// Once set, `/hold` answers at once.
    open: Arc<std::sync::atomic::AtomicBool>,
    /// `/hold` requests waiting for the release.
    waiting: Arc<AtomicU64>,
}

async fn start_app() -> (SocketAddr, App) {
    async fn echo(State(app): State<App>, req: Request) -> Json<Value> {
        app.hits.fetch_add(1, Ordering::SeqCst);
        let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        Json(json!({
            "host": h("host"),
            "xfh": h("x-forwarded-host"),
            "xff": h("x-forwarded-for"),
            "forwarded": h("forwarded"),
        }))
    }
    async fn asset(State(app): State<App>, headers: HeaderMap) -> impl IntoResponse {
        app.hits.fetch_add(1, Ordering::SeqCst);
        if headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v == "\"v1\"")
        {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, "\"v1\"")]).into_response();
        }
        (
            [
                (header::CACHE_CONTROL, "public, max-age=60"),
                (header::ETAG, "\"v1\""),
                (header::CONTENT_TYPE, "text/css"),
            ],
            "body { color: teal }".repeat(512),
        )
            .into_response()
    }
    async fn by_language(State(app): State<App>, headers: HeaderMap) -> impl IntoResponse {
        app.hits.fetch_add(1, Ordering::SeqCst);
        let lang = headers
            .get(header::ACCEPT_LANGUAGE)
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
        (
            [
                (header::CACHE_CONTROL, "max-age=60"),
                (header::VARY, "Accept-Language"),
            ],
            lang,
        )
    }
    async fn private(State(app): State<App>) -> impl IntoResponse {
        app.hits.fetch_add(1, Ordering::SeqCst);
        ([(header::CACHE_CONTROL, "private, max-age=60")], "mine")
    }
    async fn bare(State(app): State<App>) -> impl IntoResponse {
        app.hits.fetch_add(1, Ordering::SeqCst);
        (
            [
                ("x-powered-by", "app 1.0"),
                ("x-frame-options", "SAMEORIGIN"),
            ],
            "plain",
        )
    }
    async fn broken() -> impl IntoResponse {
        (StatusCode::INTERNAL_SERVER_ERROR, "failed")
    }
    async fn upload(body: axum::body::Bytes) -> String {
        body.len().to_string()
    }
    async fn hold(State(app): State<App>) -> &'static str {
        let released = app.release.notified();
        tokio::pin!(released);
        // Registered before the flag is read, so a release in between is not missed.
        released.as_mut().enable();
        if !app.open.load(Ordering::SeqCst) {
            app.waiting.fetch_add(1, Ordering::SeqCst);
            released.await;
        }
        "released"
    }
    let app = App::default();
    let router = Router::new()
        .route("/static/a.css", get(asset))
        .route("/static/lang", get(by_language))
        .route("/static/private", get(private))
        .route("/bare", get(bare))
        .route("/broken", get(broken))
        .route("/upload", post(upload))
        .route("/hold", get(hold))
        .fallback(echo)
        .with_state(app.clone())
        .layer(axum::extract::DefaultBodyLimit::disable());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, app)
}

async fn gateway(
    app: SocketAddr,
    routes: &str,
    server: &str,
) -> (Gateway, Arc<pylon_control::Control>) {
    let text = format!(
        "[server]\n{server}\n[auth]\nmode = \"none\"\n{}",
        routes.replace("{app}", &app.to_string())
    );
    Gateway::with_admin(&text, None).await
}

#[tokio::test]
async fn allow_and_deny_lists_by_client_network() {
    let (app, _) = start_app().await;
    let (gw, _) = gateway(
        app,
        r#"
[[routes]]
prefix = "/open/"
upstream = "http://{app}"
deny = ["127.0.0.0/8"]

[[routes]]
prefix = "/office/"
upstream = "http://{app}"
allow = ["10.0.0.0/8", "127.0.0.1"]

[[routes]]
prefix = "/elsewhere/"
upstream = "http://{app}"
allow = ["192.168.0.0/16"]
"#,
        "",
    )
    .await;
    let status = |p: &'static str| {
        let url = gw.url(p);
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/open/x").await, 403, "denied network");
    assert_eq!(status("/office/x").await, 200, "allowed address");
    assert_eq!(status("/elsewhere/x").await, 403, "not in the allow list");
    let body = client()
        .get(gw.url("/open/x"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("may not use this route"), "{body}");
}

#[tokio::test]
async fn a_route_body_limit_refuses_declared_and_streamed_bodies() {
    let (app, _) = start_app().await;
    let (gw, _) = gateway(
        app,
        r#"
[[routes]]
prefix = "/upload"
upstream = "http://{app}"
max_body_bytes = 1000
"#,
        "",
    )
    .await;
    let ok = client()
        .post(gw.url("/upload"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(
        (ok.status().as_u16(), ok.text().await.unwrap()),
        (200, "1000".into())
    );
    let declared = client()
        .post(gw.url("/upload"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    // Chunked: no length up front, cut off when it passes the limit.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 300]))),
    );
    let streamed = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
}

#[tokio::test]
async fn a_route_connection_cap_sheds_with_retry_after_and_frees_its_slot() {
    let (app, state) = start_app().await;
    let (gw, _) = gateway(
        app,
        r#"
[[routes]]
prefix = "/hold"
upstream = "http://{app}"
max_connections = 2

[[routes]]
prefix = "/other"
upstream = "http://{app}"
"#,
        "",
    )
    .await;
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client().get(gw.url("/hold")).send()))
        .collect();
    // Both held requests are in progress once the app has them both.
    for _ in 0..1000 {
        if state.waiting.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        state.waiting.load(Ordering::SeqCst),
        2,
        "both held requests reached the app"
    );
    let shed = client().get(gw.url("/hold")).send().await.unwrap();
    assert_eq!(shed.status(), 503, "a third request is shed");
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(
        client()
            .get(gw.url("/other/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "other routes are not capped"
    );
    state.open.store(true, Ordering::SeqCst);
    state.release.notify_waiters();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), 200);
    }
    // Their slots come free once their answers have ended: wait for that, then both are usable.
    let mut freed = false;
    for _ in 0..500 {
        if client().get(gw.url("/hold")).send().await.unwrap().status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed, "a slot came free");
    let both = futures_util::future::join(
        client().get(gw.url("/hold")).send(),
        client().get(gw.url("/hold")).send(),
    )
    .await;
    assert_eq!(
        (
            both.0.unwrap().status().as_u16(),
            both.1.unwrap().status().as_u16()
        ),
        (200, 200)
    );
}

#[tokio::test]
async fn response_header_rules_add_what_the_app_left_out_and_hide_what_it_leaks() {
    let (app, _) = start_app().await;
    let (gw, _) = gateway(
        app,
        r#"
[[routes]]
prefix = "/"
upstream = "http://{app}"
hide_headers = ["x-powered-by", "x-frame-options"]
response_headers = { "x-frame-options" = "DENY", "x-content-type-options" = "nosniff", "cache-control" = "public, max-age=31536000, immutable" }
"#,
        "",
    )
    .await;
    let r = client().get(gw.url("/bare")).send().await.unwrap();
    let h = r.headers();
    assert!(h.get("x-powered-by").is_none(), "hidden");
    assert_eq!(
        h["x-frame-options"], "DENY",
        "hidden, then Pylon's value: forced"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    // The app's own Cache-Control wins.
    let r = client()
        .get(gw.url("/static/private"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "private, max-age=60");
    // An error is never made cacheable.
    let r = client().get(gw.url("/broken")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.headers().get("cache-control").is_none());
}

/// One route that keeps the client's Host and sends `Forwarded`, one that does neither.
const FORWARDING: &str = r#"
[[routes]]
prefix = "/kept/"
upstream = "http://{app}"
preserve_host = true
forwarded = true

[[routes]]
prefix = "/plain/"
upstream = "http://{app}"
"#;

/// The echo app's view of a GET with these headers.
async fn echoed(url: String, headers: &[(&str, &str)]) -> Value {
    let mut r = client().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn forwarded_and_preserve_host() {
    let (app, _) = start_app().await;
    let (gw, _) = gateway(app, FORWARDING, "").await;
    let kept = echoed(
        gw.url("/kept/x"),
        &[
            ("host", "shop.example:8443"),
            ("forwarded", "for=198.51.100.17"),
        ],
    )
    .await;
    assert_eq!(kept["host"], "shop.example:8443", "the client's Host");
    assert_eq!(kept["xfh"], "shop.example:8443");
    assert_eq!(
        kept["forwarded"],
        "for=198.51.100.17, for=127.0.0.1;host=\"shop.example:8443\";proto=http"
    );
    let plain = echoed(gw.url("/plain/x"), &[("host", "shop.example")]).await;
    assert_eq!(plain["host"], app.to_string(), "the upstream's own address");
    assert_eq!(plain["xfh"], "shop.example");
    assert_eq!(plain["forwarded"], Value::Null);
}

#[tokio::test]
async fn forwarded_headers_from_an_http2_client() {
    let (app, _) = start_app().await;
    let (gw, _) = gateway(app, FORWARDING, "").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(gw.url("/kept/x")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["xfh"], gw.addr.to_string(), "from :authority");
    assert_eq!(v["host"], gw.addr.to_string());
    assert_eq!(
        v["forwarded"],
        format!("for=127.0.0.1;host=\"{}\";proto=http", gw.addr)
    );
}

#[tokio::test]
async fn the_edge_cache_serves_304s_honours_vary_and_expires() {
    let (app, state) = start_app().await;
    let (gw, control) = gateway(
        app,
        r#"
[[routes]]
prefix = "/static/"
upstream = "http://{app}"
cache = { max_bytes = 1048576 }
"#,
        "",
    )
    .await;
    let get = |path: &'static str, h: &'static [(&'static str, &'static str)]| {
        let mut r = client().get(gw.url(path));
        for (k, v) in h {
            r = r.header(*k, *v);
        }
        r.send()
    };
    let first = get("/static/a.css", &[]).await.unwrap();
    assert_eq!(first.headers()["x-pylon-cache"], "miss");
    let body = first.text().await.unwrap();
    let second = get("/static/a.css", &[]).await.unwrap();
    assert_eq!(second.headers()["x-pylon-cache"], "hit");
    assert_eq!(second.headers()["etag"], "\"v1\"");
    assert_eq!(second.text().await.unwrap(), body);
    assert_eq!(
        state.hits.load(Ordering::SeqCst),
        1,
        "the hit never reached the app"
    );

    // The client's copy is current: 304 from the cache, no body.
    let nm = get("/static/a.css", &[("if-none-match", "\"v1\"")])
        .await
        .unwrap();
    assert_eq!(nm.status(), 304);
    assert_eq!(nm.headers()["etag"], "\"v1\"");
    assert!(nm.text().await.unwrap().is_empty());
    assert_eq!(state.hits.load(Ordering::SeqCst), 1);

    // HEAD is answered from the stored GET, without a body.
    let head = client().head(gw.url("/static/a.css")).send().await.unwrap();
    assert_eq!(head.headers()["x-pylon-cache"], "hit");
    assert_eq!(head.headers()["content-length"], body.len().to_string());
    assert!(head.bytes().await.unwrap().is_empty());
    assert_eq!(state.hits.load(Ordering::SeqCst), 1);

    // Vary: one entry per language.
    for (lang, want) in [("en", "miss"), ("de", "miss"), ("en", "hit")] {
        let r = client()
            .get(gw.url("/static/lang"))
            .header("accept-language", lang)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-pylon-cache"], want, "{lang}");
        assert_eq!(r.text().await.unwrap(), lang);
    }
    // Private answers, credentials and no-cache are never served from the cache.
    for _ in 0..2 {
        assert_eq!(
            get("/static/private", &[]).await.unwrap().headers()["x-pylon-cache"],
            "miss"
        );
    }
    let with_auth = get("/static/a.css", &[("authorization", "Bearer x")])
        .await
        .unwrap();
    assert!(with_auth.headers().get("x-pylon-cache").is_none());
    let before = state.hits.load(Ordering::SeqCst);
    let refreshed = get("/static/a.css", &[("cache-control", "no-cache")])
        .await
        .unwrap();
    assert_eq!(refreshed.headers()["x-pylon-cache"], "miss");
    assert_eq!(state.hits.load(Ordering::SeqCst), before + 1);

    // Expiry on the injected clock, with Age counting.
    control.gateway.advance_cache_clock(Duration::from_secs(30));
    let aged = get("/static/a.css", &[]).await.unwrap();
    assert_eq!(aged.headers()["age"], "30");
    control.gateway.advance_cache_clock(Duration::from_secs(31));
    let expired = get("/static/a.css", &[]).await.unwrap();
    assert_eq!(expired.headers()["x-pylon-cache"], "miss");

    let metrics = client()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pylon_edge_cache_total{result=\"revalidated\",route=\"/static/\"} 1"),
        "{metrics}"
    );
}

/// Sends a raw HTTP/1.1 request after `preamble` and returns the whole answer.
async fn raw(addr: SocketAddr, preamble: &[u8], path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(preamble).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut out)).await;
    out
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client() {
    let (app, _) = start_app().await;
    let (gw, _) = gateway(
        app,
        r#"
[[routes]]
prefix = "/app/"
upstream = "http://{app}"

[[routes]]
prefix = "/office/"
upstream = "http://{app}"
allow = ["203.0.113.0/24"]
"#,
        "proxy_protocol = true",
    )
    .await;
    let v1 = raw(
        gw.addr,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n",
        "/app/x",
    )
    .await;
    assert!(v1.contains("\"xff\":\"203.0.113.7\""), "{v1}");
    let office = raw(
        gw.addr,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n",
        "/office/x",
    )
    .await;
    assert!(
        office.starts_with("HTTP/1.1 200"),
        "allow-listed by the real address: {office}"
    );

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend([0x21, 0x21, 0, 36]);
    v2.extend([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
    v2.extend([0; 16]);
    v2.extend(51000u16.to_be_bytes());
    v2.extend(80u16.to_be_bytes());
    let answer = raw(gw.addr, &v2, "/app/x").await;
    assert!(answer.contains("\"xff\":\"2001:db8::9\""), "{answer}");
    // A LOCAL header (the balancer's health check) keeps the peer's address.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend([0x20, 0x00, 0, 0]);
    let answer = raw(gw.addr, &local, "/app/x").await;
    assert!(answer.contains("\"xff\":\"127.0.0.1\""), "{answer}");

    // Without the header, or with a broken one, the connection is closed unanswered.
    assert_eq!(raw(gw.addr, b"", "/app/x").await, "");
    assert_eq!(raw(gw.addr, b"PROXY TCP4 nonsense\r\n", "/app/x").await, "");
    let metrics = raw(gw.addr, b"PROXY UNKNOWN\r\n", "/metrics").await;
    assert!(
        metrics.contains("pylon_proxy_protocol_errors_total 2"),
        "{metrics}"
    );
}
