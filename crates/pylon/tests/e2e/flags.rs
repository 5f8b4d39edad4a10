//! Feature flags over OFREP: evaluation from a flagd file, bulk with ETag/304, change push,
//! admin changes with an audit trail, key scopes, and a broken file refused.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::harness::*;

const TOKEN: &str = "admin-flags";

fn flags_file() -> std::path::PathBuf {
    let path = temp_dir("flags").join("flags.json");
    let defs = json!({
        "flags": {
            "new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", null]}},
            "banner": {"state": "ENABLED", "variants": {"a": "Hello", "b": "Welcome"}, "defaultVariant": "a",
                "targeting": {"fractional": [["a", 50], ["b", 50]]}},
            "max-items": {"state": "ENABLED", "variants": {"low": 3, "high": 10}, "defaultVariant": "low"},
            "theme": {"state": "ENABLED", "variants": {"dark": {"bg": "#000"}}, "defaultVariant": "dark"},
            "retired": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
        }
    });
    std::fs::write(&path, defs.to_string()).unwrap();
    path
}

async fn start(auth: &str) -> (Gateway, std::path::PathBuf) {
    let file = flags_file();
    let text = format!(
        "[auth]\nmode = \"{auth}\"\n[limits]\nip_rpm = 0\n[flags]\nfile = \"{}\"\npoll = \"200ms\"\n",
        file.display()
    );
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    (gw, file)
}

async fn eval(gw: &Gateway, key: &str, context: Value) -> (u16, Value) {
    let resp = client()
        .post(gw.url(&format!("/ofrep/v1/evaluate/flags/{key}")))
        .json(&json!({ "context": context }))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn flags_evaluate_over_ofrep() {
    let (gw, _) = start("none").await;
    let (code, v) = eval(
        &gw,
        "new-checkout",
        json!({"targetingKey": "u1", "email": "a@example.com"}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!(true), json!("TARGETING_MATCH"))
    );
    let (_, v) = eval(
        &gw,
        "new-checkout",
        json!({"targetingKey": "u1", "email": "a@other.org"}),
    )
    .await;
    assert_eq!(
        (
            v["value"].clone(),
            v["reason"].clone(),
            v["variant"].clone()
        ),
        (json!(false), json!("DEFAULT"), json!("off"))
    );
    let (_, v) = eval(&gw, "max-items", json!({})).await;
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!(3), json!("STATIC"))
    );
    let (_, v) = eval(&gw, "theme", json!({})).await;
    assert_eq!(v["value"], json!({"bg": "#000"}));
    let (_, a) = eval(&gw, "banner", json!({"targetingKey": "sticky-user"})).await;
    for _ in 0..20 {
        let (_, again) = eval(&gw, "banner", json!({"targetingKey": "sticky-user"})).await;
        assert_eq!(again["variant"], a["variant"]);
    }
    let (code, v) = eval(&gw, "nope", json!({})).await;
    assert_eq!(
        (code, v["errorCode"].clone()),
        (404, json!("FLAG_NOT_FOUND"))
    );
    let resp = client()
        .post(gw.url("/ofrep/v1/evaluate/flags/banner"))
        .json(&json!({"context": [1, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["errorCode"],
        "INVALID_CONTEXT"
    );
    let conf: Value = client()
        .get(gw.url("/ofrep/v1/configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        conf["capabilities"]["cacheInvalidation"]["polling"]["enabled"],
        true
    );
    let series = "pylon_flag_evaluations_total{flag=\"new-checkout\",reason=\"TARGETING_MATCH\",variant=\"on\"}";
    assert_eq!(metric(&gw, series).await, 1.0);
}

#[tokio::test]
async fn bulk_evaluation_answers_304_until_a_change_is_pushed() {
    let (gw, _) = start("none").await;
    let bulk = |etag: Option<String>| {
        let mut req = client()
            .post(gw.url("/ofrep/v1/evaluate/flags"))
            .json(&json!({"context": {"targetingKey": "u9"}}));
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        req.send()
    };
    let first = bulk(None).await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = first.json().await.unwrap();
    let keys: Vec<&str> = body["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["banner", "max-items", "new-checkout", "retired", "theme"],
        "a disabled flag answers its default variant"
    );
    let sse_url = body["refreshConnections"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bulk(Some(etag.clone())).await.unwrap().status(), 304);
    // Subscribe, change a flag through the admin API, and hear about it.
    let stream = client().get(&sse_url).send().await.unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut events = stream.bytes_stream();
    let (code, _) = admin_put(
        &gw,
        "/admin/v1/flags/max-items",
        &json!({
        "state": "ENABLED", "variants": {"low": 3, "high": 10}, "defaultVariant": "high"}),
    )
    .await;
    assert_eq!(code, 200);
    let event = tokio::time::timeout(Duration::from_secs(1), async {
        let mut text = String::new();
        while let Some(Ok(chunk)) = events.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("refetchEvaluation") {
                return text;
            }
        }
        text
    })
    .await
    .expect("a change event within a second");
    assert!(event.contains("\"type\":\"refetchEvaluation\""), "{event}");
    let after = bulk(Some(etag)).await.unwrap();
    assert_eq!(after.status(), 200, "the ETag changed with the flag");
    let body: Value = after.json().await.unwrap();
    let max = body["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "max-items")
        .unwrap()
        .clone();
    assert_eq!(max["value"], 10);
}

async fn admin_put(gw: &Gateway, path: &str, body: &Value) -> (u16, Value) {
    let resp = client()
        .put(gw.url(path))
        .bearer_auth(TOKEN)
        .header("x-pylon-actor", "ana@ops")
        .json(body)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admin_changes_are_audited_and_validated() {
    let (gw, _) = start("none").await;
    let (code, v) = admin_put(
        &gw,
        "/admin/v1/flags/beta",
        &json!({
        "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "nope"}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    let (code, _) = admin_put(
        &gw,
        "/admin/v1/flags/beta",
        &json!({
        "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(eval(&gw, "beta", json!({})).await.1["value"], true);
    let (code, _) = admin_post(&gw, TOKEN, "/admin/v1/flags/beta/disable", &json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(eval(&gw, "beta", json!({})).await.1["reason"], "DISABLED");
    // A file flag can be disabled but not deleted through the API.
    let del = client()
        .delete(gw.url("/admin/v1/flags/banner"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 409);
    let del = client()
        .delete(gw.url("/admin/v1/flags/beta"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    assert_eq!(eval(&gw, "beta", json!({})).await.0, 404);
    let h = admin_get(&gw, TOKEN, "/admin/v1/flags/beta/history").await;
    let actions: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["delete", "disable", "create"]);
    assert_eq!(
        (h[0]["actor"].as_str(), h[2]["actor"].as_str()),
        (Some("admin"), Some("ana@ops"))
    );
    let list = admin_get(&gw, TOKEN, "/admin/v1/flags").await;
    assert_eq!(list.as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn the_file_is_reread_and_a_broken_one_is_refused() {
    let (gw, file) = start("none").await;
    let mut defs: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    defs["flags"]["max-items"]["defaultVariant"] = json!("high");
    // Rewrite with a later modification time so the change is seen.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, defs.to_string()).unwrap();
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = eval(&gw, "max-items", json!({})).await.1["value"].clone();
        if seen == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 10);
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        eval(&gw, "max-items", json!({})).await.1["value"],
        10,
        "the flags in force are kept"
    );
}

#[tokio::test]
async fn keys_are_scoped_to_flags_or_models() {
    let (gw, _) = start("keys").await;
    let browser = create_key_with(&gw, TOKEN, json!({"name": "web", "scopes": ["flags"]})).await;
    let backend = create_key_with(&gw, TOKEN, json!({"name": "api", "scopes": ["ai"]})).await;
    let ofrep = |key: Option<&str>| {
        let mut req = client()
            .post(gw.url("/ofrep/v1/evaluate/flags/max-items"))
            .json(&json!({"context": {}}));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send()
    };
    assert_eq!(ofrep(Some(&browser)).await.unwrap().status(), 200);
    assert_eq!(ofrep(Some(&backend)).await.unwrap().status(), 403);
    assert_eq!(ofrep(None).await.unwrap().status(), 401);
    let chat = chat_as(&gw, &browser, "anything").await;
    assert_eq!(chat.status(), 403, "a flags key may not call models");
}
