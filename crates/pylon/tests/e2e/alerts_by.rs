//! A rule with `by`: one alert per label value seen in its series, each with its own lifecycle,
//! notifications and acknowledgement, grouped under the rule's alertname.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use pylon_providers::mock::Behaviour;
use serde_json::Value;

use crate::alerts::{alert, config, traffic, wait_until, TOKEN};
use crate::harness::*;

/// A second model, `other`, on its own mock.
fn other_model(other: &MockServer) -> String {
    format!(
        r#"
[[providers]]
name = "other-mock"
kind = "openai"
base_url = "http://{}/v1"
api_key = "sk-other"

[[models]]
name = "other"
targets = [ {{ provider = "other-mock", model = "mock-2" }} ]
retries = 0
"#,
        other.addr
    )
}

#[tokio::test]
async fn a_rule_split_by_model_fires_for_the_failing_model_only() {
    let (hook, seen) = webhook_receiver(StatusCode::OK).await;
    let mock = MockServer::start().await;
    let other = MockServer::start().await;
    let rules = format!(
        r#"
{other_model}
[[alerts]]
name = "model-errors"
kind = "threshold"
series = "error_rate"
by = ["model"]
above = 0.2
severity = "critical"
annotations = {{ summary = "error rate above 20 %" }}

[[alert_receivers]]
name = "hook"
kind = "webhook"
url = "http://{hook}/alerts"

[alert_routing]
receiver = "hook"
group_wait = "0s"
group_interval = "1s"
"#,
        other_model = other_model(&other)
    );
    let (gw, _) = Gateway::with_admin(&config(&mock, &rules), Some(TOKEN)).await;
    let load = traffic(&gw);
    let other_url = gw.url("/v1/chat/completions");
    let other_load = tokio::spawn(async move {
        let http = client();
        for _ in 0..2000 {
            let _ = http.post(&other_url).json(&hello("other")).send().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Both models seen: one alert each, both quiet.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            alert(&gw, "model-errors:model=chat").await["state"] == "inactive"
                && alert(&gw, "model-errors:model=other").await["state"] == "inactive"
        })
        .await,
        "an alert per model"
    );
    other.set(Behaviour {
        error_status: Some(500),
        error_rate: 0.5,
        ..Behaviour::default()
    });
    assert!(
        wait_until(Duration::from_secs(20), || async {
            alert(&gw, "model-errors:model=other").await["state"] == "firing"
        })
        .await,
        "the failing model's alert fires"
    );
    assert_eq!(
        alert(&gw, "model-errors:model=chat").await["state"],
        "inactive"
    );
    let fired = alert(&gw, "model-errors:model=other").await;
    assert_eq!(fired["labels"]["alertname"], "model-errors");
    assert_eq!(fired["labels"]["model"], "other");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !seen.lock().unwrap().is_empty()
        })
        .await
    );
    let sent: Value = seen.lock().unwrap()[0].clone();
    let alerts = sent["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "only the failing model: {sent:#}");
    assert_eq!(alerts[0]["labels"]["model"], "other");
    assert_eq!(alerts[0]["labels"]["alertname"], "model-errors");

    // Acknowledged on its own name; healed, it resolves.
    let (status, _) = admin_post(
        &gw,
        TOKEN,
        "/admin/v1/alerts/model-errors:model=other/ack",
        &serde_json::json!({"by": "oncall", "for": "10m"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(alert(&gw, "model-errors:model=other").await["acked"], true);
    other.set(Behaviour::default());
    assert!(
        wait_until(Duration::from_secs(20), || async {
            alert(&gw, "model-errors:model=other").await["state"] == "resolved"
        })
        .await
    );
    load.store(true, Ordering::Relaxed);
    other_load.abort();
}

#[tokio::test]
async fn a_rule_split_by_team_watches_each_teams_traffic() {
    let mock = MockServer::start().await;
    let other = MockServer::start().await;
    let rules = format!(
        r#"
{other_model}
[[alerts]]
name = "team-errors"
kind = "threshold"
series = "error_rate"
by = ["team"]
above = 0.2
"#,
        other_model = other_model(&other)
    );
    let text = config(&mock, &rules).replace(
        "[auth]\nmode = \"none\"",
        "[auth]\nmode = \"keys\"\nrefresh = \"100ms\"",
    );
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let mut keys = Vec::new();
    for (team, model) in [("search", "chat"), ("ads", "other")] {
        let (status, t) = admin_post(
            &gw,
            TOKEN,
            "/admin/v1/teams",
            &serde_json::json!({"name": team}),
        )
        .await;
        assert_eq!(status, 201, "{t}");
        let id = t["id"].as_str().unwrap().to_owned();
        let key =
            create_key_with(&gw, TOKEN, serde_json::json!({"name": team, "team_id": id})).await;
        keys.push((id, key, model));
    }
    let senders: Vec<_> = keys
        .iter()
        .map(|(_, key, model)| {
            let (url, key, model) = (gw.url("/v1/chat/completions"), key.clone(), *model);
            tokio::spawn(async move {
                let http = client();
                for _ in 0..2000 {
                    let _ = http
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&hello(model))
                        .send()
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let (search, ads) = (&keys[0].0, &keys[1].0);
    other.set(Behaviour {
        error_status: Some(500),
        error_rate: 0.5,
        ..Behaviour::default()
    });
    let ads_alert = format!("team-errors:team={ads}");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            alert(&gw, &ads_alert).await["state"] == "firing"
        })
        .await,
        "the failing team's alert fires"
    );
    let quiet = alert(&gw, &format!("team-errors:team={search}")).await;
    assert_eq!(quiet["state"], "inactive", "{quiet}");
    assert_eq!(alert(&gw, &ads_alert).await["labels"]["team"], ads.as_str());
    for s in senders {
        s.abort();
    }
}
