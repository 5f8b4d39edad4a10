//! Rollouts made at run time, through the admin API and `pylon rollout create`, not declared in
//! pylon.toml: checked like the file's, applied at once, judged, forgotten when done.

use std::time::Duration;

use pylon_providers::mock::Behaviour;
use serde_json::{json, Value};

use super::{config, Load, TOKEN};
use crate::harness::*;

/// The rollouts tests' config without its `[[rollouts]]` entry.
fn without_rollouts(a: &MockServer, b: &MockServer) -> String {
    config("", 1)
        .split("[[rollouts]]")
        .next()
        .unwrap()
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string())
}

async fn delete(gw: &Gateway, name: &str) -> u16 {
    client()
        .delete(gw.url(&format!("/admin/v1/rollouts/{name}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_state(gw: &Gateway, name: &str, want: &str) -> Value {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = admin_get(gw, TOKEN, &format!("/admin/v1/rollouts/{name}")).await;
        if s["state"] == want || std::time::Instant::now() > end {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pylon rollout <args>` against `gw`; success and what it printed.
async fn cli(gw: &Gateway, args: &[&str]) -> (bool, String) {
    let url = gw.url("");
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pylon"))
            .args(["rollout", "--url", &url, "--token", TOKEN])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[tokio::test]
async fn a_rollout_made_at_run_time_is_checked_judged_and_forgotten() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let (gw, _) = Gateway::with_admin(&without_rollouts(&a, &b), Some(TOKEN)).await;
    let resp = gw.chat(hello("chat")).await;
    assert!(resp.headers().get("x-pylon-arm").is_none());

    // Checked as pylon.toml's entries are: clear 400s, nothing stored.
    for (bad, says) in [
        (json!(["x"]), "object"),
        (
            json!({"name": "v2", "model": "nope", "candidate": {"targets": [{"provider": "b", "model": "mock-b"}]}, "steps": [{"weight": 50}]}),
            "nope",
        ),
        (
            json!({"name": "v2", "model": "chat", "candidate": {}, "steps": [{"weight": 50}], "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": "v2", "model": "chat", "candidate": {"targets": [{"provider": "zz", "model": "m"}]}, "steps": [{"weight": 50}]}),
            "zz",
        ),
    ] {
        let (status, v) = admin_post(&gw, TOKEN, "/admin/v1/rollouts", &bad).await;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(msg.contains(says), "{bad}: {msg}");
    }
    assert_eq!(admin_get(&gw, TOKEN, "/admin/v1/rollouts").await, json!([]));

    // A bad candidate made through the API is rolled back by the judge, then forgotten.
    b.set(Behaviour {
        error_status: Some(500),
        error_rate: 0.3,
        ..Behaviour::default()
    });
    let bad = json!({
        "name": "chat-bad", "model": "chat", "stickiness": "header:x-session-id",
        "candidate": {"targets": [{"provider": "b", "model": "mock-b"}]},
        "steps": [{"weight": 50, "hold": "1h"}],
        "analysis": {"interval": "1s", "min_requests": 15}
    });
    let (status, v) = admin_post(&gw, TOKEN, "/admin/v1/rollouts", &bad).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["made_by"], "admin");
    let (status, _) = admin_post(&gw, TOKEN, "/admin/v1/rollouts", &bad).await;
    assert_eq!(status, 409, "the name is taken");
    let load = Load::start(gw.url("/v1/chat/completions"), hello("chat"));
    let s = wait_state(&gw, "chat-bad", "rolled_back").await;
    load.stop();
    assert_eq!(s["state"], "rolled_back", "{s:#}");
    assert_eq!(delete(&gw, "chat-bad").await, 204);
    assert_eq!(delete(&gw, "chat-bad").await, 404);
    assert_eq!(admin_get(&gw, TOKEN, "/admin/v1/rollouts").await, json!([]));
    let resp = gw.chat(hello("chat")).await;
    assert!(resp.headers().get("x-pylon-arm").is_none(), "forgotten");

    // A good one, from a file through the CLI, goes through its steps to 100 %.
    b.set(Behaviour::default());
    let dir = temp_dir("rollout-create");
    let file = dir.join("v2.toml");
    std::fs::write(
        &file,
        r#"
[[rollouts]]
name = "chat-v2"
model = "chat"
candidate = { targets = [ { provider = "b", model = "mock-b" } ] }
steps = [ { weight = 30, hold = "1s" } ]
stickiness = "header:x-session-id"
[rollouts.analysis]
interval = "1s"
min_requests = 10
max_latency_ratio = 3.0
max_ttft_ratio = 3.0
"#,
    )
    .unwrap();
    let (ok, said) = cli(&gw, &["create", file.to_str().unwrap()]).await;
    assert!(ok && said.contains("chat-v2"), "{said}");
    let (ok, said) = cli(&gw, &["create", file.to_str().unwrap()]).await;
    assert!(!ok && said.contains("409"), "{said}");
    let load = Load::start(gw.url("/v1/chat/completions"), hello("chat"));
    let s = wait_state(&gw, "chat-v2", "promoted").await;
    let (_, failed) = load.stop();
    assert_eq!(s["state"], "promoted", "{s:#}");
    assert_eq!(failed, 0);
    let resp = gw.chat(hello("chat")).await;
    assert_eq!(resp.headers()["x-pylon-arm"], "candidate");
    // A promoted candidate serves all traffic: forgetting it would silently switch back.
    let (ok, said) = cli(&gw, &["delete", "chat-v2"]).await;
    assert!(
        !ok && said.contains("409") && said.contains("promoted"),
        "{said}"
    );
}

/// A rollout made on one instance is in force on the other within a second.
#[tokio::test]
async fn a_rollout_made_on_one_instance_is_applied_by_the_other() {
    let (admin, base, schema) = pg_schema().await;
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let text = format!(
        "[data]\nstore_url = \"{base}?options=-c%20search_path%3D{schema}\"\n{}",
        without_rollouts(&a, &b)
    );
    let (one, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let (two, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let (status, v) = admin_post(
        &one,
        TOKEN,
        "/admin/v1/rollouts",
        &json!({
            "name": "preview-only", "model": "chat", "strategy": "blue-green",
            "candidate": {"targets": [{"provider": "b", "model": "mock-b"}]},
            "steps": [{"weight": 100}]
        }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let made = std::time::Instant::now();
    let arm = || async {
        client()
            .post(two.url("/v1/chat/completions"))
            .header("x-pylon-preview", "1")
            .json(&hello("chat"))
            .send()
            .await
            .unwrap()
            .headers()
            .get("x-pylon-arm")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let mut seen = None;
    while made.elapsed() < Duration::from_secs(3) {
        seen = arm().await;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.as_deref(), Some("candidate"));
    println!(
        "the other instance applied the rollout after {:?}",
        made.elapsed()
    );
    assert!(
        made.elapsed() < Duration::from_millis(1500),
        "applied after {:?}",
        made.elapsed()
    );
    assert!(b.stats().requests > 0);
    let listed = admin_get(&two, TOKEN, "/admin/v1/rollouts").await;
    assert_eq!(listed[0]["name"], "preview-only", "{listed}");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
