//! Alerting over HTTP: an error spike at a provider reaches a real Prometheus Alertmanager (and
//! its resolve too) and a webhook receiver in Alertmanager's version-4 format; a firing alert
//! aborts a canary; acknowledgement stops re-notification until it times out.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use pylon_providers::mock::Behaviour;
use serde_json::{json, Value};

use crate::harness::*;

pub(crate) const TOKEN: &str = "admin-alerts";

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on an ephemeral port.
struct Alertmanager {
    child: Child,
    url: String,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn alertmanager() -> Alertmanager {
    let dir = temp_dir("alertmanager");
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: nobody\n  group_wait: 0s\nreceivers:\n  - name: nobody\n",
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager (Debian package) is installed; run scripts/setup");
    let am = Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let ready = eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(ready, "alertmanager did not start");
    for _ in 0..100 {
        if client()
            .get(format!("{}/-/ready", am.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    am
}

/// The alerts an Alertmanager holds with `alertname`.
async fn held(am: &Alertmanager, alertname: &str) -> Vec<Value> {
    let all: Value = client()
        .get(format!("{}/api/v2/alerts", am.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == alertname)
        .cloned()
        .collect()
}

/// Chat requests every 20 ms, each from a new session, until stopped.
pub(crate) fn traffic(gw: &Gateway) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let (url, s) = (gw.url("/v1/chat/completions"), stop.clone());
    tokio::spawn(async move {
        let http = client();
        let mut i = 0;
        while !s.load(Ordering::Relaxed) {
            i += 1;
            let _ = http
                .post(&url)
                .header("x-session-id", format!("s{i}"))
                .json(&hello("chat"))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    stop
}

pub(crate) fn config(mock: &MockServer, extra: &str) -> String {
    format!(
        r#"
[auth]
mode = "none"

[limits]
ip_rpm = 0

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://{}/v1"
api_key = "sk-mock"

[[models]]
name = "chat"
targets = [ {{ provider = "mock", model = "mock-1" }} ]
retries = 0

[alerting]
evaluate_every = "1s"
{extra}
"#,
        mock.addr
    )
}

pub(crate) async fn wait_until<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub(crate) async fn alert(gw: &Gateway, name: &str) -> Value {
    let all = admin_get(gw, TOKEN, "/admin/v1/alerts").await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn an_error_spike_reaches_a_real_alertmanager_and_so_does_its_resolve() {
    let am = alertmanager().await;
    let (hook, seen) = webhook_receiver(StatusCode::OK).await;
    let mock = MockServer::start().await;
    let rules = format!(
        r#"
[[alerts]]
name = "chat-errors"
kind = "threshold"
series = "error_rate"
labels = {{ model = "chat" }}
above = 0.2
severity = "critical"
annotations = {{ summary = "chat error rate above 20 %", runbook = "docs/runbook.md#chat-errors" }}

[[alert_receivers]]
name = "am"
kind = "alertmanager"
url = "{am}"

[[alert_receivers]]
name = "hook"
kind = "webhook"
url = "http://{hook}/alerts"

[alert_routing]
receiver = "hook"
group_wait = "0s"
group_interval = "1s"
routes = [ {{ matchers = {{ severity = "critical" }}, receiver = "am", continue = true }},
           {{ matchers = {{ severity = "critical" }}, receiver = "hook" }} ]
"#,
        am = am.url
    );
    let (gw, _) = Gateway::with_admin(&config(&mock, &rules), Some(TOKEN)).await;
    let load = traffic(&gw);
    // Healthy traffic: nothing fires.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(alert(&gw, "chat-errors").await["state"], "inactive");
    assert!(held(&am, "chat-errors").await.is_empty());

    // The provider fails half the requests: the alert fires and reaches both receivers.
    mock.set(Behaviour {
        error_status: Some(500),
        error_rate: 0.5,
        ..Behaviour::default()
    });
    let spiked = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            held(&am, "chat-errors")
                .await
                .iter()
                .any(|a| a["status"]["state"] == "active")
        })
        .await,
        "the Alertmanager shows the alert"
    );
    println!(
        "error spike to alert in Alertmanager: {:?}",
        spiked.elapsed()
    );
    let in_am = held(&am, "chat-errors").await;
    assert_eq!(in_am[0]["labels"]["severity"], "critical");
    assert_eq!(in_am[0]["labels"]["model"], "chat");
    assert_eq!(
        in_am[0]["annotations"]["runbook"],
        "docs/runbook.md#chat-errors"
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !seen.lock().unwrap().is_empty()
        })
        .await
    );
    let first = seen.lock().unwrap()[0].clone();
    assert_eq!(first["version"], "4", "{first:#}");
    assert_eq!(first["status"], "firing");
    assert_eq!(first["receiver"], "hook");
    assert_eq!(first["alerts"][0]["labels"]["alertname"], "chat-errors");
    let a = alert(&gw, "chat-errors").await;
    assert_eq!(a["state"], "firing", "{a:#}");
    assert!(a["value"].as_f64().unwrap() > 0.2);
    assert_eq!(a["receivers"], json!(["am", "hook"]));

    // Healed: the resolve reaches both.
    mock.set(Behaviour::default());
    assert!(
        wait_until(Duration::from_secs(20), || async {
            held(&am, "chat-errors")
                .await
                .iter()
                .all(|a| a["status"]["state"] != "active")
        })
        .await,
        "the Alertmanager no longer shows it active"
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            seen.lock()
                .unwrap()
                .iter()
                .any(|e| e["status"] == "resolved")
        })
        .await
    );
    load.store(true, Ordering::Relaxed);
    assert_eq!(alert(&gw, "chat-errors").await["state"], "resolved");
    let history = admin_get(&gw, TOKEN, "/admin/v1/alerts/history?alert=chat-errors").await;
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["firing", "notified", "resolved"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    assert!(
        metric(
            &gw,
            "pylon_alert_deliveries_total{outcome=\"ok\",receiver=\"am\"}"
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_firing_alert_aborts_a_running_canary() {
    let stable = MockServer::start().await;
    let candidate = MockServer::start().await;
    candidate.set(Behaviour {
        error_status: Some(500),
        error_rate: 1.0,
        ..Behaviour::default()
    });
    let rules = format!(
        r#"
[[providers]]
name = "cand"
kind = "openai"
base_url = "http://{}/v1"
api_key = "sk-c"

[[rollouts]]
name = "chat-v2"
model = "chat"
candidate = {{ targets = [ {{ provider = "cand", model = "mock-2" }} ] }}
steps = [ {{ weight = 50, hold = "1h" }} ]
stickiness = "header:x-session-id"
[rollouts.analysis]
interval = "1h"

[[alerts]]
name = "chat-errors"
kind = "threshold"
series = "error_rate"
labels = {{ model = "chat" }}
above = 0.1
severity = "critical"
rollout = {{ name = "chat-v2", action = "abort" }}
"#,
        candidate.addr
    );
    let text = config(&stable, "").replace("[alerting]", &format!("{rules}\n[alerting]"));
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let stop = traffic(&gw);
    let aborted = wait_until(Duration::from_secs(20), || async {
        admin_get(&gw, TOKEN, "/admin/v1/rollouts/chat-v2").await["state"] == "aborted"
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    assert!(
        aborted,
        "{:#} {:#}",
        admin_get(&gw, TOKEN, "/admin/v1/alerts/history").await,
        admin_get(&gw, TOKEN, "/admin/v1/alerts").await
    );
    let history = admin_get(&gw, TOKEN, "/admin/v1/alerts/history?alert=chat-errors").await;
    let acted = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rollout")
        .expect("the action is in the history");
    assert_eq!(acted["detail"]["state"], "aborted");
    // Every caller is on the stable again.
    assert_eq!(
        gw.chat(hello("chat")).await.headers()["x-pylon-arm"],
        "stable"
    );
}

#[tokio::test]
async fn a_silence_and_an_acknowledgement_hold_notifications_until_they_end() {
    let (hook, seen) = webhook_receiver(StatusCode::OK).await;
    let mock = MockServer::start().await;
    mock.set(Behaviour {
        error_status: Some(500),
        error_rate: 1.0,
        ..Behaviour::default()
    });
    let rules = format!(
        r#"
[[alerts]]
name = "chat-down"
kind = "threshold"
series = "errors"
labels = {{ model = "chat" }}
above = 1
for = "1s"

[[alert_receivers]]
name = "hook"
kind = "webhook"
url = "http://{hook}/"

[alert_routing]
receiver = "hook"
group_wait = "0s"
group_interval = "1s"
"#
    );
    let (gw, _) = Gateway::with_admin(&config(&mock, &rules), Some(TOKEN)).await;
    let ack = |body: Value, name: &'static str| {
        let gw = &gw;
        async move { admin_post(gw, TOKEN, &format!("/admin/v1/alerts/{name}/ack"), &body).await }
    };
    let (status, _) = ack(json!({}), "chat-down").await;
    assert_eq!(status, 409, "not firing yet");
    let (status, _) = ack(json!({}), "nothing").await;
    assert_eq!(status, 404);
    // Silenced: it fires, and nobody is told until the silence ends.
    let (status, silence) = admin_post(
        &gw,
        TOKEN,
        "/admin/v1/alerts/silences",
        &json!({"matchers": {"alertname": "chat-down"}, "for": "1h", "comment": "deploying"}),
    )
    .await;
    assert_eq!(status, 201, "{silence}");
    let (status, _) = admin_post(
        &gw,
        TOKEN,
        "/admin/v1/alerts/silences",
        &json!({"matchers": {}, "for": "1h"}),
    )
    .await;
    assert_eq!(status, 400, "a silence needs a matcher");
    let load = traffic(&gw);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            alert(&gw, "chat-down").await["state"] == "firing"
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(seen.lock().unwrap().is_empty(), "silenced");
    let ended = client()
        .delete(gw.url(&format!(
            "/admin/v1/alerts/silences/{}",
            silence["id"].as_str().unwrap()
        )))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 204);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !seen.lock().unwrap().is_empty()
        })
        .await,
        "told once the silence ended"
    );
    let (status, v) = ack(json!({"for": "soon"}), "chat-down").await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = ack(json!({"for": "2s"}), "chat-down").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["acked"], true);
    assert_eq!(v["acked_by"], "admin");
    // Once the acknowledgement runs out with the alert still firing, it pages again.
    assert!(
        wait_until(Duration::from_secs(15), || async {
            let h = admin_get(&gw, TOKEN, "/admin/v1/alerts/history?alert=chat-down").await;
            h.as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "ack_expired")
        })
        .await
    );
    load.store(true, Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|e| e["status"] == "firing")
                .count()
                >= 2
        })
        .await,
        "notified when it fired and again when the acknowledgement ran out"
    );
    assert_eq!(alert(&gw, "chat-down").await["acked"], false);
}

#[tokio::test]
async fn an_unacknowledged_alert_escalates_step_by_step() {
    let (chat, chat_seen) = webhook_receiver(StatusCode::OK).await;
    let (pager, pager_seen) = webhook_receiver(StatusCode::OK).await;
    let mock = MockServer::start().await;
    mock.set(Behaviour {
        error_status: Some(500),
        error_rate: 1.0,
        ..Behaviour::default()
    });
    let rules = format!(
        r#"
[[alerts]]
name = "chat-down"
kind = "threshold"
series = "errors"
labels = {{ model = "chat" }}
above = 1
severity = "critical"
escalation = "chat-oncall"

[[alert_receivers]]
name = "chat-team"
kind = "slack"
url = "http://{chat}/"

[[alert_receivers]]
name = "pager"
kind = "pagerduty"
url = "http://{pager}/"
routing_key = "rk"

[[alert_escalations]]
name = "chat-oncall"
steps = [ {{ after = "0s", receivers = ["chat-team"] }}, {{ after = "2s", receivers = ["pager"] }} ]
"#
    );
    let (gw, _) = Gateway::with_admin(&config(&mock, &rules), Some(TOKEN)).await;
    let load = traffic(&gw);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            !chat_seen.lock().unwrap().is_empty()
        })
        .await,
        "the first step"
    );
    let first = Instant::now();
    assert!(chat_seen.lock().unwrap()[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("[FIRING] chat-down"));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !pager_seen.lock().unwrap().is_empty()
        })
        .await,
        "the second step"
    );
    assert!(
        first.elapsed() >= Duration::from_millis(900),
        "{:?}",
        first.elapsed()
    );
    let page = pager_seen.lock().unwrap()[0].clone();
    assert_eq!(
        (page["event_action"].as_str(), page["routing_key"].as_str()),
        (Some("trigger"), Some("rk"))
    );
    load.store(true, Ordering::Relaxed);
    // No more steps: the policy ran once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pages = pager_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p["event_action"] == "trigger")
        .count();
    assert_eq!(pages, 1);
}

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
    mock.set(Behaviour {
        error_status: Some(500),
        error_rate: 1.0,
        ..Behaviour::default()
    });
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
    mock.set(Behaviour {
        error_status: Some(500),
        error_rate: 1.0,
        ..Behaviour::default()
    });
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
    mock.set(Behaviour {
        error_status: Some(500),
        error_rate: 1.0,
        ..Behaviour::default()
    });
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
    mock.set(Behaviour {
        error_status: Some(500),
        error_rate: 1.0,
        ..Behaviour::default()
    });
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
