//! Rollouts of an app route: a new release canaried under load, and blue-green.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use serde_json::{json, Value};

use super::{wait_for, Load, FAST, TOKEN};
use crate::harness::*;

/// An application release: answers its version, or 500 while `failing`.
async fn release(version: &'static str, failing: Arc<AtomicBool>) -> SocketAddr {
    async fn serve(State((v, f)): State<(&'static str, Arc<AtomicBool>)>) -> (StatusCode, String) {
        if f.load(Ordering::Relaxed) {
            (StatusCode::INTERNAL_SERVER_ERROR, "broken".into())
        } else {
            (StatusCode::OK, v.to_owned())
        }
    }
    let app = Router::new().fallback(serve).with_state((version, failing));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn app_gateway(rollout: &str) -> (Gateway, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let v1 = release("v1", Arc::new(AtomicBool::new(false))).await;
    let v2 = release("v2", failing.clone()).await;
    let text = format!(
        r#"
[auth]
mode = "none"

[[routes]]
prefix = "/app/"
upstream = "http://{v1}"

[[rollouts]]
name = "chat-v2"
route = "/app/"
stickiness = "header:x-session-id"
candidate = {{ upstream = "http://{v2}" }}
{rollout}
"#
    );
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    (gw, failing)
}

#[tokio::test]
async fn an_app_release_is_canaried_under_load_with_no_failed_request() {
    let (gw, _) = app_gateway(&format!(
        "steps = [ {{ weight = 25, hold = \"1s\" }}, {{ weight = 50, hold = \"1s\" }} ]\n{FAST}"
    ))
    .await;
    let load = Load::start(gw.url("/app/x"), Value::Null);
    let s = wait_for(&gw, "promoted", Duration::from_secs(30)).await;
    let (sent, failed) = load.stop();
    assert_eq!(s["state"], "promoted", "{s:#}");
    assert!(sent > 100, "{sent}");
    assert_eq!(failed, 0, "{failed} of {sent} failed");
    let body = client().get(gw.url("/app/x")).send().await.unwrap();
    assert_eq!(body.headers()["x-pylon-arm"], "candidate");
    assert_eq!(body.text().await.unwrap(), "v2");
}

#[tokio::test]
async fn blue_green_switches_at_once_and_back_when_the_new_release_fails() {
    let (gw, failing) = app_gateway(&format!(
        "strategy = \"blue-green\"\nrollback_window = \"1m\"\n{FAST}"
    ))
    .await;
    let s = wait_for(&gw, "progressing", Duration::from_secs(5)).await;
    assert_eq!(s["weight"], 0.0);
    let get = |preview: bool| {
        let mut req = client().get(gw.url("/app/x"));
        if preview {
            req = req.header("x-pylon-preview", "yes");
        }
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    // Before the switch only previews reach the new release.
    assert_eq!(get(false).await, "v1");
    assert_eq!(get(true).await, "v2");
    let load = Load::start(gw.url("/app/x"), Value::Null);
    // Let the stable's baseline fill one interval, then switch.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, s) = admin_post(&gw, TOKEN, "/admin/v1/rollouts/chat-v2/promote", &json!({})).await;
    assert_eq!(code, 200, "{s:#}");
    assert_eq!(s["weight"], 100.0);
    assert_eq!(get(false).await, "v2", "switched for everyone at once");
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
    // The new release breaks inside the rollback window: the judge switches back.
    failing.store(true, Ordering::Relaxed);
    let load = Load::start(gw.url("/app/x"), Value::Null);
    let s = wait_for(&gw, "rolled_back", Duration::from_secs(20)).await;
    load.stop();
    assert_eq!(s["state"], "rolled_back", "{s:#}");
    assert_eq!(get(false).await, "v1");
}
