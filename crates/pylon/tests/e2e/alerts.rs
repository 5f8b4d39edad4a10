//! Alerting over HTTP: an error spike at a provider reaches a real Prometheus Alertmanager (and
//! its resolve too) and a webhook receiver in Alertmanager's version-4 format; a firing alert
//! aborts a canary; acknowledgement stops re-notification until it times out; escalation. The
//! other rule kinds and paths are in `alerts_rules.rs`.

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
    candidate.fail_every_request();
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
    // The evaluator writes the action to the history just after the rollout command returns.
    let history = || admin_get(&gw, TOKEN, "/admin/v1/alerts/history?alert=chat-errors");
    let recorded = wait_until(Duration::from_secs(10), || async {
        history()
            .await
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "rollout")
    })
    .await;
    assert!(
        recorded,
        "the action is in the history: {:#}",
        history().await
    );
    let history = history().await;
    let acted = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rollout")
        .unwrap();
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
    mock.fail_every_request();
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
    mock.fail_every_request();
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
