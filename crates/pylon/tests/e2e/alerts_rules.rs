//! Alert rules beyond the notification path: backtesting a rule from a CSV and from stored
//! history, evaluation over every instance's traffic, a budget rule firing before the budget is
//! spent, rules made through the admin API, and a receiver that stays down.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::alerts::{alert, config, traffic, wait_until, TOKEN};
use crate::harness::*;

#[tokio::test]
async fn a_rule_is_backtested_from_a_csv_and_from_stored_history() {
    // The CLI, on a file: a threshold held 20 s fires once.
    let dir = temp_dir("backtest");
    let (rule, series) = (dir.join("rules.toml"), dir.join("series.csv"));
    std::fs::write(
        &rule,
        "[[alerts]]\nname = \"chat-errors\"\nkind = \"threshold\"\nseries = \"error_rate\"\nabove = 0.05\nfor = \"20s\"\n",
    )
    .unwrap();
    let mut csv = String::from("timestamp,value\n");
    for (i, v) in [0.0, 0.1, 0.1, 0.1, 0.0, 0.2, 0.0].iter().enumerate() {
        csv.push_str(&format!("{},{v}\n", 1_700_000_000 + i * 10));
    }
    std::fs::write(&series, csv).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["alerts", "backtest", "--rule"])
        .arg(&rule)
        .arg("--series")
        .arg(&series)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("7 points, 4 breaking the condition, 1 firing"),
        "{said}"
    );
    assert!(
        said.contains("fired 2023-11-14T22:13:50Z → resolved 2023-11-14T22:14:00Z"),
        "{said}"
    );
    std::fs::write(&series, "1700000000,1\nyesterday,2\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["alerts", "backtest", "--rule"])
        .arg(&rule)
        .arg("--series")
        .arg(&series)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));

    // The API, on points and on the store's history of real traffic.
    let mock = MockServer::start().await;
    let text = config(&mock, "").replace(
        "[alerting]",
        "[request_log]\nflush = \"100ms\"\n\n[alerting]",
    );
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let rule = json!({"name": "t", "kind": "threshold", "series": "error_rate",
                      "labels": {"model": "chat"}, "above": 0.2});
    let (status, v) = admin_post(
        &gw,
        TOKEN,
        "/admin/v1/alerts/backtest",
        &json!({"rule": rule, "points": [[1_700_000_000, 0.0], [1_700_000_010, 0.5], [1_700_000_020, 0.0]]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["firings"].as_array().unwrap().len(), 1, "{v}");
    let (status, v) = admin_post(
        &gw,
        TOKEN,
        "/admin/v1/alerts/backtest",
        &json!({"rule": {"name": "t", "kind": "threshold", "series": "nope", "above": 1}}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    mock.fail_every_request();
    for _ in 0..4 {
        gw.chat(hello("chat")).await;
    }
    let mut last = Value::Null;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let (_, v) = admin_post(
            &gw,
            TOKEN,
            "/admin/v1/alerts/backtest",
            &json!({"rule": rule}),
        )
        .await;
        last = v;
        if last["points"].as_u64() == Some(1)
            && last["firings"].as_array().is_some_and(|f| f.len() == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last["firings"].as_array().map(Vec::len),
        Some(1),
        "{last:#}"
    );
    assert_eq!(last["judged"][0]["value"], 1.0);
}

/// Two instances sharing PostgreSQL and Redis: one evaluates, and it sees the other's traffic
/// (failures sent only to the other instance fire the alert).
#[tokio::test]
async fn the_evaluator_sees_every_instances_traffic() {
    let (admin, base, schema) = pg_schema().await;
    let mock = MockServer::start().await;
    mock.fail_every_request();
    let redis =
        std::env::var("PYLON_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let name = format!("down-{}", uuid::Uuid::new_v4().simple());
    let rules = format!(
        "[[alerts]]\nname = \"{name}\"\nkind = \"threshold\"\nseries = \"errors\"\nlabels = {{ model = \"chat\" }}\nabove = 2\n"
    );
    let text = format!(
        "[data]\nstore_url = \"{base}?options=-c%20search_path%3D{schema}\"\nredis_url = \"{redis}\"\n{}",
        config(&mock, &rules)
    );
    let (one, c1) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let (two, c2) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let holder = || async {
        sqlx::query_scalar::<_, String>(&format!(
            "SELECT holder FROM {schema}.leases WHERE name = 'alert-evaluator'"
        ))
        .fetch_optional(&admin)
        .await
        .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            holder().await.is_some()
        })
        .await
    );
    let evaluator = holder().await.unwrap();
    let other = if evaluator == c1.alerts.instance() {
        &two
    } else {
        assert_eq!(evaluator, c2.alerts.instance());
        &one
    };
    // Each instance alone sees about 2.5 failures a second when the traffic is split; the
    // other instance gets all of it here, at about 5 a second, and the evaluator none.
    let load = traffic(other);
    let fired = wait_until(Duration::from_secs(20), || async {
        alert(&one, &name).await["state"] == "firing"
    })
    .await;
    load.store(true, Ordering::Relaxed);
    assert!(fired, "{:#}", alert(&one, &name).await);
    assert_eq!(
        alert(&two, &name).await["state"],
        "firing",
        "both answer from the store"
    );
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}

/// A budget rule fires once a key has spent its share, and says when the budget runs out at
/// the current rate.
#[tokio::test]
async fn a_budget_rule_fires_before_the_budget_is_spent() {
    let mock = MockServer::start().await;
    let text = format!(
        r#"
[auth]
mode = "keys"
refresh = "100ms"

[request_log]
flush = "100ms"

[[prices]]
model = "mock-a"
input_per_million = 100000
output_per_million = 100000

[[providers]]
name = "a"
kind = "openai"
base_url = "http://{}/v1"

[[models]]
name = "chat"
targets = [ {{ provider = "a", model = "mock-a" }} ]

[alerting]
evaluate_every = "1s"

[[alerts]]
name = "ci-budget"
kind = "budget"
labels = {{ key = "ci" }}
above = 0.5
severity = "warning"
"#,
        mock.addr
    );
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let key = create_key_with(
        &gw,
        TOKEN,
        json!({"name": "ci", "budget": {"amount_usd": 0.01, "period": "monthly"}}),
    )
    .await;
    assert_eq!(alert(&gw, "ci-budget").await["state"], "inactive");
    // A few answers at this price spend over half the budget (the last may be refused).
    assert_eq!(chat_as(&gw, &key, "chat").await.status(), 200);
    for _ in 0..3 {
        chat_as(&gw, &key, "chat").await;
    }
    assert!(
        wait_until(Duration::from_secs(15), || async {
            alert(&gw, "ci-budget").await["state"] == "firing"
        })
        .await,
        "{:#}",
        alert(&gw, "ci-budget").await
    );
    let a = alert(&gw, "ci-budget").await;
    assert!(a["value"].as_f64().unwrap() >= 0.5, "{a:#}");
    let history = admin_get(&gw, TOKEN, "/admin/v1/alerts/history?alert=ci-budget").await;
    let fired = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "firing")
        .unwrap()
        .clone();
    assert_eq!(fired["detail"]["budget_usd"], 0.01);
    assert!(
        fired["detail"]["exhausted_at"].as_u64().is_some(),
        "{fired:#}"
    );
}

/// A rule made through the admin API is checked like pylon.toml's, evaluated, listed with who
/// made it, and forgotten on delete; pylon.toml's rules cannot be deleted there.
#[tokio::test]
async fn a_rule_made_through_the_api_is_checked_evaluated_and_forgotten() {
    let mock = MockServer::start().await;
    let declared = "[[alerts]]\nname = \"declared\"\nkind = \"threshold\"\nseries = \"requests\"\nabove = 1000\n";
    let (gw, _) = Gateway::with_admin(&config(&mock, declared), Some(TOKEN)).await;
    let path = "/admin/v1/alerts/rules";
    let (status, v) = admin_post(
        &gw,
        TOKEN,
        path,
        &json!({"name": "made", "kind": "threshold", "series": "error_ratio", "above": 0.1}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("error_ratio"));
    let rule = json!({"name": "made", "kind": "threshold", "series": "errors",
                      "labels": {"model": "chat"}, "above": 1});
    let (status, v) = admin_post(&gw, TOKEN, path, &rule).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["made_by"], "admin");
    let (status, _) = admin_post(&gw, TOKEN, path, &rule).await;
    assert_eq!(status, 409);
    mock.fail_every_request();
    let load = traffic(&gw);
    let fired = wait_until(Duration::from_secs(20), || async {
        alert(&gw, "made").await["state"] == "firing"
    })
    .await;
    load.store(true, Ordering::Relaxed);
    assert!(fired, "{:#}", alert(&gw, "made").await);
    let delete = |name: &'static str| {
        client()
            .delete(gw.url(&format!("{path}/{name}")))
            .bearer_auth(TOKEN)
            .send()
    };
    assert_eq!(delete("declared").await.unwrap().status(), 409);
    assert_eq!(delete("made").await.unwrap().status(), 204);
    assert_eq!(delete("made").await.unwrap().status(), 404);
    assert_eq!(alert(&gw, "made").await, Value::Null);
}

/// A receiver that stays down is itself reported: a health rule on `receiver_failures` tells
/// another receiver; the history exports as CSV and JSON lines.
#[tokio::test]
async fn a_receiver_that_stays_down_is_reported_through_another() {
    let (hook, seen) = webhook_receiver(StatusCode::OK).await;
    let mock = MockServer::start().await;
    mock.fail_every_request();
    let rules = format!(
        r#"
[[alerts]]
name = "chat-down"
kind = "threshold"
series = "errors"
above = 1

[[alerts]]
name = "pager-unreachable"
kind = "health"
series = "receiver_failures"
labels = {{ receiver = "pager" }}
above = 0

[[alert_receivers]]
name = "pager"
kind = "webhook"
url = "http://127.0.0.1:1/"

[[alert_receivers]]
name = "hook"
kind = "webhook"
url = "http://{hook}/"

[alert_routing]
receiver = "hook"
group_wait = "0s"
routes = [ {{ matchers = {{ alertname = "chat-down" }}, receiver = "pager" }} ]
"#
    );
    let (gw, _) = Gateway::with_admin(&config(&mock, &rules), Some(TOKEN)).await;
    let load = traffic(&gw);
    let told = wait_until(Duration::from_secs(30), || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|e| e["groupLabels"]["alertname"] == "pager-unreachable")
    })
    .await;
    load.store(true, Ordering::Relaxed);
    assert!(
        told,
        "{:#}",
        admin_get(&gw, TOKEN, "/admin/v1/alerts/history").await
    );
    let csv = client()
        .get(gw.url("/admin/v1/alerts/history?format=csv"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("at,alert,kind,detail\n"), "{csv}");
    assert!(csv.contains("\"delivery_failed\""), "{csv}");
    let jsonl = client()
        .get(gw.url("/admin/v1/alerts/history?format=jsonl&alert=chat-down"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(jsonl
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).unwrap()["alert"] == "chat-down"));
}
