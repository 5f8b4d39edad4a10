//! Virtual keys and the admin API: creation, use, revocation, rotation, model allow-lists,
//! error shapes, admin-token checks, OpenAPI and docs.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const ADMIN: &str = "test-admin-token";

/// TWO_MOCKS with keys required.
fn keyed_config() -> String {
    // A catch-all price: keys and teams with budgets may use the mock models.
    TWO_MOCKS.replace(
        "[auth]\nmode = \"none\"",
        "[auth]\nmode = \"keys\"\nrefresh = \"100ms\"",
    ) + "\n[[prices]]\nmodel = \"*\"\ninput_per_million = 0.1\noutput_per_million = 0.1\n"
}

struct Env {
    a: MockServer,
    gw: Gateway,
}

async fn env() -> Env {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let text = keyed_config()
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let (gw, _control) = Gateway::with_admin(&text, Some(ADMIN)).await;
    Env { a, gw }
}

async fn admin(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client().request(method, gw.url(path)).bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn create_key(gw: &Gateway, body: Value) -> (String, String) {
    let (status, created) = admin(gw, reqwest::Method::POST, "/admin/v1/keys", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

async fn chat_with(gw: &Gateway, key: &str, model: &str) -> reqwest::Response {
    chat_as(gw, key, model).await
}

#[tokio::test]
async fn a_created_key_authenticates_and_is_shown_once() {
    let Env { a, gw } = env().await;
    let (key, id) = create_key(&gw, json!({"name": "ci", "metadata": {"owner": "search"}})).await;
    assert!(key.starts_with("pk-") && key.len() >= 46, "{key}");

    let resp = chat_with(&gw, &key, "a-only").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        a.stats().last_credential.as_deref(),
        Some("Bearer sk-provider-a"),
        "the provider gets its own key"
    );

    // The Anthropic SDK sends x-api-key.
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let (status, listed) = admin(&gw, reqwest::Method::GET, "/admin/v1/keys", None).await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(!text.contains(&key), "the key itself is never listed");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["prefix"].as_str().unwrap(), &key[..11]);
    assert_eq!(listed[0]["status"], "active");
    assert_eq!(listed[0]["metadata"]["owner"], "search");
}

#[tokio::test]
async fn missing_wrong_revoked_keys_get_401_in_each_dialect() {
    let Env { a, gw } = env().await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&hello("a-only"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));

    let resp = chat_with(&gw, "pk-not-a-real-key", "a-only").await;
    assert_eq!(resp.status(), 401);

    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "pk-wrong")
        .json(&json!({"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");

    let (key, id) = create_key(&gw, json!({"name": "soon-revoked"})).await;
    assert_eq!(chat_with(&gw, &key, "a-only").await.status(), 200);
    let (status, revoked) = admin(
        &gw,
        reqwest::Method::DELETE,
        &format!("/admin/v1/keys/{id}"),
        None,
    )
    .await;
    assert_eq!((status, revoked["status"].as_str()), (200, Some("revoked")));
    assert_eq!(
        chat_with(&gw, &key, "a-only").await.status(),
        401,
        "revocation applies at once"
    );
    assert_eq!(
        client()
            .get(gw.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        a.stats().requests,
        1,
        "rejected requests never reach a provider"
    );
}

#[tokio::test]
async fn allowed_models_are_enforced_and_listed() {
    let Env { gw, .. } = env().await;
    let (key, _) = create_key(
        &gw,
        json!({"name": "narrow", "allowed_models": ["a-only", "claude"]}),
    )
    .await;
    assert_eq!(chat_with(&gw, &key, "a-only").await.status(), 200);
    let resp = chat_with(&gw, &key, "gemini").await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("a-only, claude"));
    let models: Value = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-only", "claude"]);
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_the_grace_period() {
    let Env { gw, .. } = env().await;
    let (old, id) = create_key(
        &gw,
        json!({"name": "rotating", "allowed_models": ["a-only"]}),
    )
    .await;
    let (status, rotated) = admin(
        &gw,
        reqwest::Method::POST,
        &format!("/admin/v1/keys/{id}/rotate"),
        Some(json!({"grace": "1h"})),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        rotated["allowed_models"],
        json!(["a-only"]),
        "settings carried over"
    );
    assert_eq!(
        chat_with(&gw, &old, "a-only").await.status(),
        200,
        "old key valid during grace"
    );
    assert_eq!(chat_with(&gw, &new, "a-only").await.status(), 200);
    let (_, shown) = admin(
        &gw,
        reqwest::Method::GET,
        &format!("/admin/v1/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(shown["status"], "rotated");
    let (status, _) = admin(
        &gw,
        reqwest::Method::POST,
        &format!("/admin/v1/keys/{id}/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 404, "a key rotates once");

    let new_id = rotated["id"].as_str().unwrap();
    let (status, again) = admin(
        &gw,
        reqwest::Method::POST,
        &format!("/admin/v1/keys/{new_id}/rotate"),
        Some(json!({"grace": "0s"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        chat_with(&gw, &new, "a-only").await.status(),
        401,
        "zero grace: the old key stops at once"
    );
    assert_eq!(
        chat_with(&gw, again["key"].as_str().unwrap(), "a-only")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn admin_api_checks_its_token_and_input() {
    let Env { gw, .. } = env().await;
    let resp = client().get(gw.url("/admin/v1/keys")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client()
        .get(gw.url("/admin/v1/keys"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (key, _) = create_key(&gw, json!({"name": "not-admin"})).await;
    let resp = client()
        .get(gw.url("/admin/v1/keys"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a virtual key is not an admin token");

    for (body, status) in [
        (json!({"name": "x", "bogus": 1}), 400),
        (json!({"name": ""}), 400),
        (json!({"name": "x", "allowed_models": ["nope"]}), 404),
        (json!({"name": "x", "expires_in": "forever"}), 400),
        (json!({"name": "x", "team_id": "no-such-team"}), 404),
    ] {
        let (got, err) = admin(
            &gw,
            reqwest::Method::POST,
            "/admin/v1/keys",
            Some(body.clone()),
        )
        .await;
        assert_eq!(got, status, "{body} → {err}");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }
    let resp = client()
        .post(gw.url("/admin/v1/keys"))
        .bearer_auth(ADMIN)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn teams_users_and_team_keys() {
    let Env { gw, .. } = env().await;
    let (status, team) = admin(&gw, reqwest::Method::POST, "/admin/v1/teams",
        Some(json!({"name": "search", "limits": {"rpm": 100}, "budget": {"amount_usd": 50.0, "period": "monthly"}}))).await;
    assert_eq!(status, 201, "{team}");
    let (status, _) = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/v1/teams",
        Some(json!({"name": "search"})),
    )
    .await;
    assert_eq!(status, 409);
    let team_id = team["id"].as_str().unwrap();
    let (status, user) = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/v1/users",
        Some(json!({"email": "a@example.com", "team_id": team_id})),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    let (key, _) = create_key(
        &gw,
        json!({"name": "team-key", "team_id": team_id, "user_id": user["id"]}),
    )
    .await;
    assert_eq!(chat_with(&gw, &key, "b-only").await.status(), 200);
    let (_, teams) = admin(&gw, reqwest::Method::GET, "/admin/v1/teams", None).await;
    assert_eq!(teams[0]["budget"]["period"], "monthly");
    let (_, users) = admin(&gw, reqwest::Method::GET, "/admin/v1/users", None).await;
    assert_eq!(users[0]["email"], "a@example.com");
    let (status, report) = admin(
        &gw,
        reqwest::Method::GET,
        "/admin/v1/usage?group_by=model",
        None,
    )
    .await;
    assert_eq!((status, report["group_by"].as_str()), (200, Some("model")));
    let (status, _) = admin(
        &gw,
        reqwest::Method::GET,
        "/admin/v1/usage?group_by=planet",
        None,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_key_made_on_one_instance_works_on_another_sharing_the_store() {
    let a = MockServer::start().await;
    let data = temp_dir("shared");
    let text = format!("[data]\ndir = \"{}\"\n{}", data.display(), keyed_config())
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &a.addr.to_string());
    let (one, _) = Gateway::with_admin(&text, Some(ADMIN)).await;
    let (two, _) = Gateway::with_admin(&text, Some(ADMIN)).await;
    let (key, _) = create_key(&one, json!({"name": "shared"})).await;
    let mut status = 0;
    for _ in 0..100 {
        status = chat_with(&two, &key, "a-only").await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status, 200,
        "the other instance picked the key up within its refresh interval"
    );
}

#[tokio::test]
async fn many_concurrent_authenticated_requests() {
    let Env { gw, .. } = env().await;
    let (key, _) = create_key(&gw, json!({"name": "busy"})).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (url, key) = (gw.url("/v1/chat/completions"), key.clone());
            tokio::spawn(async move {
                client()
                    .post(url)
                    .bearer_auth(key)
                    .json(&hello("a-only"))
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

#[tokio::test]
async fn openapi_is_3_1_and_docs_render_offline() {
    let Env { gw, .. } = env().await;
    let spec: Value = client()
        .get(gw.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    assert!(spec["paths"]["/admin/v1/keys"]["post"].is_object());
    assert!(spec["components"]["securitySchemes"]["admin_token"].is_object());
    let resp = client().get(gw.url("/docs/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://"), "no asset is fetched from a CDN");
    let js = client()
        .get(gw.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200, "assets are served from the binary");
}

#[tokio::test]
async fn admin_api_without_a_token_is_disabled() {
    let a = MockServer::start().await;
    let text = keyed_config()
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &a.addr.to_string());
    let (gw, _) = Gateway::with_admin(&text, None).await;
    let resp = client()
        .get(gw.url("/admin/v1/keys"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
}
