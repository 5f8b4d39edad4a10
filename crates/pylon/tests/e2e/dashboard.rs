//! The dashboard over HTTP: its session, CSRF protection, page policy and stream (the page
//! itself is driven in Chromium by scripts/dashboard-check.sh).

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const TOKEN: &str = "admin-dashboard";

/// The dashboard's session: the admin token buys an HttpOnly, SameSite=Strict cookie; reads
/// go through the admin API with it, changes only with the CSRF token; the page forbids
/// inline code and other origins.
#[tokio::test]
async fn the_dashboard_session_reads_and_changes_only_with_its_csrf_token() {
    let mock = MockServer::start().await;
    let text = format!(
        "[auth]\nmode = \"none\"\n[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\n[[models]]\nname = \"chat\"\ntargets = [ {{ provider = \"mock\", model = \"m\" }} ]\n",
        mock.addr
    );
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let page = client().get(gw.url("/dashboard")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self';") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("/dashboard/app.js"));
    let login = |token: &str| {
        client()
            .post(gw.url("/dashboard/login"))
            .json(&json!({"token": token}))
            .send()
    };
    assert_eq!(login("wrong").await.unwrap().status(), 401);
    let ok = login(TOKEN).await.unwrap();
    assert_eq!(ok.status(), 200);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let csrf = ok.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = cookie.split(';').next().unwrap().to_owned();
    let with = |req: reqwest::RequestBuilder| req.header("cookie", &session);
    assert_eq!(
        with(client().get(gw.url("/admin/v1/alerts")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let silence = json!({"matchers": {"alertname": "x"}, "for": "1m"});
    let without = with(client().post(gw.url("/admin/v1/alerts/silences")))
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 403);
    let wrong = with(client().post(gw.url("/admin/v1/alerts/silences")))
        .header("x-pylon-csrf", "guess")
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let right = with(client().post(gw.url("/admin/v1/alerts/silences")))
        .header("x-pylon-csrf", &csrf)
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 201);
    // The stream needs the session; with it, the first snapshot comes at once.
    assert_eq!(
        client()
            .get(gw.url("/dashboard/stream"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let mut stream = with(client().get(gw.url("/dashboard/stream")))
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(
        first.contains("event: snapshot") && first.contains("\"overview\""),
        "{first}"
    );
    // Logged out: the cookie is worth nothing.
    let out = with(client().post(gw.url("/dashboard/logout")))
        .header("x-pylon-csrf", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(
        with(client().get(gw.url("/admin/v1/alerts")))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}
