//! App routes: HTTP, SSE and WebSocket to the application, with forwarding headers.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Request;
use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::harness::*;

async fn start_app() -> SocketAddr {
    async fn echo(req: Request) -> Json<Value> {
        let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        Json(json!({
            "path": req.uri().path(),
            "query": req.uri().query(),
            "xff": h("x-forwarded-for"),
            "proto": h("x-forwarded-proto"),
            "xfh": h("x-forwarded-host"),
            "keep_alive": h("keep-alive"),
            "custom": h("x-custom"),
        }))
    }
    async fn sse() -> impl IntoResponse {
        let events = futures_util::stream::iter(0..3).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::convert::Infallible>(Event::default().data(format!("tick {i}")))
        });
        Sse::new(events)
    }
    async fn ws(upgrade: WebSocketUpgrade) -> impl IntoResponse {
        upgrade.on_upgrade(|mut socket: WebSocket| async move {
            while let Some(Ok(msg)) = socket.recv().await {
                if let Message::Text(t) = msg {
                    let _ = socket
                        .send(Message::Text(format!("echo: {t}").into()))
                        .await;
                }
            }
        })
    }
    let app = Router::new()
        .route("/app/sse", get(sse))
        .route("/app/ws", get(ws))
        .route("/ws", get(ws))
        .fallback(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn gateway_for(app: SocketAddr) -> Gateway {
    Gateway::from_text(&format!(
        r#"
[auth]
mode = "none"

[[routes]]
prefix = "/app/"
upstream = "http://{app}"

[[routes]]
prefix = "/stripped"
upstream = "http://{app}/base"
strip_prefix = true

[[routes]]
prefix = "/sock/"
upstream = "http://{app}"
strip_prefix = true
"#
    ))
    .await
}

#[tokio::test]
async fn http_requests_are_forwarded_with_x_forwarded_headers() {
    let app = start_app().await;
    let gw = gateway_for(app).await;
    let body: Value = client()
        .get(gw.url("/app/some/page?q=1"))
        .header("x-custom", "kept")
        .header("keep-alive", "timeout=5")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["path"], "/app/some/page");
    assert_eq!(body["query"], "q=1");
    assert_eq!(body["xff"], "127.0.0.1");
    assert_eq!(body["proto"], "http");
    assert_eq!(body["xfh"], gw.addr.to_string());
    assert_eq!(body["custom"], "kept");
    assert_eq!(body["keep_alive"], Value::Null, "hop-by-hop header removed");

    let body: Value = client()
        .get(gw.url("/stripped/x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["path"], "/base/x");
    assert_eq!(
        client()
            .get(gw.url("/nowhere"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn sse_streams_through_an_app_route() {
    let app = start_app().await;
    let gw = gateway_for(app).await;
    let resp = client().get(gw.url("/app/sse")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("tick 0"));
    let mut rest = String::new();
    while let Some(c) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&c.unwrap()));
    }
    assert!(rest.contains("tick 2"), "{rest}");
}

#[tokio::test]
async fn websocket_upgrades_through_an_app_route() {
    let app = start_app().await;
    let gw = gateway_for(app).await;
    for path in ["/app/ws", "/sock/ws"] {
        let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}{path}", gw.addr))
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        for word in ["one", "two"] {
            ws.send(tokio_tungstenite::tungstenite::Message::Text(word.into()))
                .await
                .unwrap();
            let reply = ws.next().await.unwrap().unwrap();
            assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: {word}"));
        }
        ws.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn unreachable_app_is_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let gw = gateway_for(addr).await;
    assert_eq!(
        client()
            .get(gw.url("/app/x"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
}

#[tokio::test]
async fn per_route_limit_is_per_client() {
    let app = start_app().await;
    let gw = Gateway::from_text(&format!(
        "[auth]\nmode = \"none\"\n\n[limits]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[[routes]]\nprefix = \"/app/\"\nupstream = \"http://{app}\"\nrpm = 2\n"
    ))
    .await;
    let get = |who: &'static str| {
        client()
            .get(gw.url("/app/page"))
            .header("x-forwarded-for", who)
            .send()
    };
    assert_eq!(get("5.5.5.5").await.unwrap().status(), 200);
    assert_eq!(get("5.5.5.5").await.unwrap().status(), 200);
    let limited = get("5.5.5.5").await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(
        get("6.6.6.6").await.unwrap().status(),
        200,
        "another client has its own allowance"
    );
}
