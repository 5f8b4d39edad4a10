//! Compression by `Accept-Encoding`: Pylon's own JSON and pages, app routes that ask for it;
//! never the AI endpoints, event streams or small bodies.

use std::net::SocketAddr;
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;

use crate::harness::*;

async fn start_app() -> SocketAddr {
    async fn big() -> String {
        "All work and no play makes a gateway dull. ".repeat(100)
    }
    async fn small() -> &'static str {
        "tiny"
    }
    async fn sse() -> impl IntoResponse {
        let events = futures_util::stream::iter(0..3).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, std::convert::Infallible>(
                Event::default().data("x".repeat(600) + &i.to_string()),
            )
        });
        Sse::new(events)
    }
    let app = Router::new()
        .route("/z/big", get(big))
        .route("/z/small", get(small))
        .route("/z/sse", get(sse))
        .route("/plain/big", get(big));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn encoding(gw: &Gateway, path: &str, accept: &str) -> (u16, Option<String>, usize) {
    let resp = client()
        .get(gw.url(path))
        .header("accept-encoding", accept)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let enc = resp
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, enc, resp.bytes().await.unwrap().len())
}

#[tokio::test]
async fn what_is_worth_compressing_is_compressed_as_the_client_accepts() {
    let (mock, _b, _) = two_mocks().await;
    let app = start_app().await;
    let text = TWO_MOCKS
        .replace("{a}", &mock.addr.to_string())
        .replace("{b}", &mock.addr.to_string())
        + &format!(
            r#"
[[routes]]
prefix = "/z/"
upstream = "http://{app}"
compress = true

[[routes]]
prefix = "/plain/"
upstream = "http://{app}"
"#
        );
    let (gw, _) = Gateway::with_admin(&text, Some("tok")).await;

    // Pylon's own JSON: the OpenAPI document, in each encoding the client names.
    for (accept, want) in [("gzip", "gzip"), ("br", "br"), ("zstd", "zstd")] {
        let (status, enc, _) = encoding(&gw, "/openapi.json", accept).await;
        assert_eq!((status, enc.as_deref()), (200, Some(want)), "{accept}");
    }
    let (_, enc, _) = encoding(&gw, "/openapi.json", "identity").await;
    assert_eq!(enc, None);

    // An app route that asks: large bodies compressed, small ones and event streams not.
    let (status, enc, compressed) = encoding(&gw, "/z/big", "gzip").await;
    assert_eq!((status, enc.as_deref()), (200, Some("gzip")));
    assert!(compressed < 4400 / 4, "{compressed} bytes");
    assert_eq!(encoding(&gw, "/z/small", "gzip").await.1, None);
    assert_eq!(
        encoding(&gw, "/z/sse", "gzip").await.1,
        None,
        "SSE stays live"
    );
    // One that does not ask is passed as it is.
    assert_eq!(encoding(&gw, "/plain/big", "gzip").await.1, None);

    // The AI endpoints never: their answers are the hot path.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(&serde_json::json!({"model": "a-only", "messages": [{"role": "user", "content": "x".repeat(2000)}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-encoding").is_none());
}
