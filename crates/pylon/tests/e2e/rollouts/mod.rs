//! Rollouts over HTTP: the judge promotes a good candidate through its steps and rolls a bad
//! one back on its own, holds on too little traffic, keeps callers on their arm, shadows
//! without billing, and moves an app route's releases (canary and blue-green) under load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use pylon_providers::mock::Behaviour;
use serde_json::{json, Value};

use crate::harness::*;

mod api;
mod instances;
mod routes;

const TOKEN: &str = "admin-rollouts";

/// Two mocks: `a` serves the stable `chat`, `b` the candidate; the candidate's model costs
/// `candidate_price` times the stable's.
fn config(rollout: &str, candidate_price: u32) -> String {
    format!(
        r#"
[auth]
mode = "none"

[limits]
ip_rpm = 0

[[providers]]
name = "a"
kind = "openai"
base_url = "http://{{a}}/v1"
api_key = "sk-a"

[[providers]]
name = "b"
kind = "openai"
base_url = "http://{{b}}/v1"
api_key = "sk-b"

[[models]]
name = "chat"
targets = [ {{ provider = "a", model = "mock-a" }} ]
retries = 0

[[prices]]
model = "mock-a"
input_per_million = 1000
output_per_million = 1000

[[prices]]
model = "mock-b"
input_per_million = {p}
output_per_million = {p}

[[rollouts]]
name = "chat-v2"
model = "chat"
stickiness = "header:x-session-id"
{rollout}
"#,
        p = 1000 * candidate_price
    )
}

async fn start(rollout: &str, candidate_price: u32) -> (MockServer, MockServer, Gateway) {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let text = config(rollout, candidate_price)
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    (a, b, gw)
}

/// Sends requests from many sessions until stopped; counts requests and failures.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Load {
    fn start(url: String, body: Value) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
        };
        for worker in 0..8u64 {
            let (stop, sent, failed) = (load.stop.clone(), load.sent.clone(), load.failed.clone());
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                let http = client();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let req = if body.is_null() {
                        http.get(&url)
                    } else {
                        http.post(&url).json(&body)
                    };
                    let ok = req
                        .header("x-session-id", format!("s-{worker}-{i}"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        load
    }

    fn stop(&self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

async fn status(gw: &Gateway) -> Value {
    admin_get(gw, TOKEN, "/admin/v1/rollouts/chat-v2").await
}

/// Polls the rollout until its state is `want` (or `within` passes); the last status.
async fn wait_for(gw: &Gateway, want: &str, within: Duration) -> Value {
    let end = std::time::Instant::now() + within;
    loop {
        let s = status(gw).await;
        if s["state"] == want || std::time::Instant::now() > end {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const FAST: &str = r#"
[rollouts.analysis]
interval = "1s"
min_requests = 15
"#;

async fn rolled_back(bad: Behaviour, price: u32) {
    let rollout = format!(
        "candidate = {{ targets = [ {{ provider = \"b\", model = \"mock-b\" }} ] }}\nsteps = [ {{ weight = 50, hold = \"1h\" }} ]\n{FAST}"
    );
    let (_a, b, gw) = start(&rollout, price).await;
    b.set(bad);
    let load = Load::start(gw.url("/v1/chat/completions"), hello("chat"));
    let s = wait_for(&gw, "rolled_back", Duration::from_secs(20)).await;
    load.stop();
    assert_eq!(s["state"], "rolled_back", "{s:#}");
    assert_eq!(s["weight"], 0.0);
    let fail = s["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["outcome"] == "fail")
        .expect("a failing verdict is stored");
    assert!(
        !fail["detail"]["checks"].as_array().unwrap().is_empty(),
        "{fail:#}"
    );
    // Rolled back: every caller is on the stable now.
    let resp = gw.chat(hello("chat")).await;
    assert_eq!(resp.headers()["x-pylon-arm"], "stable");
}

#[tokio::test]
async fn a_candidate_with_a_fifth_of_requests_failing_is_rolled_back() {
    rolled_back(
        Behaviour {
            error_status: Some(500),
            error_rate: 0.2,
            ..Behaviour::default()
        },
        1,
    )
    .await;
}

#[tokio::test]
async fn a_candidate_twice_as_slow_is_rolled_back() {
    rolled_back(
        Behaviour {
            latency: Duration::from_millis(60),
            ..Behaviour::default()
        },
        1,
    )
    .await;
}

#[tokio::test]
async fn a_candidate_three_times_the_cost_is_rolled_back() {
    rolled_back(Behaviour::default(), 3).await;
}

#[tokio::test]
async fn a_good_candidate_is_promoted_through_every_step() {
    let rollout = format!(
        "candidate = {{ targets = [ {{ provider = \"b\", model = \"mock-b\" }} ] }}\nsteps = [ {{ weight = 20, hold = \"1s\" }}, {{ weight = 50, hold = \"1s\" }} ]\n{FAST}"
    );
    let (a, b, gw) = start(&rollout, 1).await;
    // Both arms equally quick, so latency noise cannot fail the good candidate.
    let same = Behaviour {
        latency: Duration::from_millis(20),
        ..Behaviour::default()
    };
    a.set(same.clone());
    b.set(same);
    let load = Load::start(gw.url("/v1/chat/completions"), hello("chat"));
    let s = wait_for(&gw, "promoted", Duration::from_secs(30)).await;
    let (_, failed) = load.stop();
    assert_eq!(s["state"], "promoted", "{s:#}");
    assert_eq!(s["weight"], 100.0);
    assert_eq!(failed, 0);
    let weights: Vec<f64> = s["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["outcome"] == "pass")
        .map(|v| v["weight"].as_f64().unwrap())
        .collect();
    assert!(
        weights.contains(&20.0) && weights.contains(&50.0),
        "passed at every step: {weights:?}"
    );
    assert!(b.stats().requests > 0);
    let resp = gw.chat(hello("chat")).await;
    assert_eq!(resp.headers()["x-pylon-arm"], "candidate");
    assert!(metric(&gw, "pylon_rollout_weight_percent{rollout=\"chat-v2\"}").await >= 100.0);
}

#[tokio::test]
async fn too_little_traffic_holds_instead_of_failing() {
    let rollout = "candidate = { targets = [ { provider = \"b\", model = \"mock-b\" } ] }\nsteps = [ { weight = 50, hold = \"1s\" } ]\n[rollouts.analysis]\ninterval = \"1s\"\nmin_requests = 1000\n";
    let (_a, b, gw) = start(rollout, 1).await;
    // Every candidate request fails, but there are too few of them to judge.
    b.set(Behaviour {
        error_status: Some(500),
        ..Behaviour::default()
    });
    for i in 0..20 {
        let _ = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-session-id", format!("few-{i}"))
            .json(&hello("chat"))
            .send()
            .await
            .unwrap();
    }
    let mut s = status(&gw).await;
    for _ in 0..40 {
        if s["verdicts"].as_array().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = status(&gw).await;
    }
    assert_eq!(s["state"], "progressing", "{s:#}");
    assert_eq!(s["step"], 0);
    let verdicts = s["verdicts"].as_array().unwrap();
    assert!(verdicts.len() >= 2, "{s:#}");
    assert!(
        verdicts.iter().all(|v| v["outcome"] == "inconclusive"),
        "{s:#}"
    );
}

#[tokio::test]
async fn a_prompt_version_is_canaried_like_a_model() {
    let rollout = "candidate = { system_prompt = { prepend = \"Answer briefly.\" }, temperature = 0.1 }\nsteps = [ { weight = 50 } ]\n";
    let (a, _b, gw) = start(rollout, 1).await;
    // A preview request gets the candidate: the same target, with the new prompt.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-pylon-preview", "1")
        .json(&json!({"model": "chat", "messages": [
            {"role": "system", "content": "You help."}, {"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-pylon-arm"], "candidate");
    let body = a.stats().last_body.unwrap();
    assert_eq!(
        body["messages"][0]["content"],
        "Answer briefly.\n\nYou help."
    );
    assert_eq!(body["temperature"], 0.1);
    // The stable arm's request is untouched.
    let mut stable = None;
    for i in 0..50 {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-session-id", format!("p-{i}"))
            .json(&json!({"model": "chat", "messages": [
                {"role": "system", "content": "You help."}, {"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        if resp.headers()["x-pylon-arm"] == "stable" {
            stable = a.stats().last_body;
            break;
        }
    }
    let stable = stable.expect("some session is on the stable arm at 50 %");
    assert_eq!(stable["messages"][0]["content"], "You help.");
}

#[tokio::test]
async fn a_caller_stays_on_one_arm_across_requests_and_instances() {
    let rollout = "candidate = { targets = [ { provider = \"b\", model = \"mock-b\" } ] }\nsteps = [ { weight = 30 } ]\n";
    let (_a, _b, gw) = start(rollout, 1).await;
    let (_a2, _b2, other) = start(rollout, 1).await;
    // Wait until both instances apply the first step's weight.
    for g in [&gw, &other] {
        let mut s = status(g).await;
        for _ in 0..50 {
            if s["weight"] == 30.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            s = status(g).await;
        }
        assert_eq!(s["weight"], 30.0, "{s:#}");
    }
    let arm = |resp: &reqwest::Response| resp.headers()["x-pylon-arm"].to_str().unwrap().to_owned();
    let send = |g: &Gateway, session: String| {
        client()
            .post(g.url("/v1/chat/completions"))
            .header("x-session-id", session)
            .json(&hello("chat"))
            .send()
    };
    let first = arm(&send(&gw, "sticky".into()).await.unwrap());
    for _ in 0..1000 {
        assert_eq!(arm(&send(&gw, "sticky".into()).await.unwrap()), first);
    }
    let mut candidates = 0;
    for i in 0..200 {
        let here = arm(&send(&gw, format!("u{i}")).await.unwrap());
        let there = arm(&send(&other, format!("u{i}")).await.unwrap());
        assert_eq!(here, there, "session u{i} differs between instances");
        candidates += u32::from(here == "candidate");
    }
    assert!(
        (30..=90).contains(&candidates),
        "about 30 % of 200: {candidates}"
    );
}

#[tokio::test]
async fn shadow_traffic_never_reaches_the_client_or_its_bill() {
    let rollout = format!(
        "strategy = \"shadow\"\ncandidate = {{ targets = [ {{ provider = \"b\", model = \"mock-b\" }} ] }}\nsteps = [ {{ weight = 100, hold = \"1h\" }} ]\n{FAST}"
    );
    let (a, b, gw) = start(&rollout, 1).await;
    b.set(Behaviour {
        reply: Some("SHADOW".into()),
        ..Behaviour::default()
    });
    wait_for(&gw, "progressing", Duration::from_secs(5)).await;
    for i in 0..20 {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-session-id", format!("sh-{i}"))
            .json(&hello("chat"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-pylon-arm"], "stable");
        let text = resp.text().await.unwrap();
        assert!(!text.contains("SHADOW"), "{text}");
    }
    assert!(eventually(Duration::from_secs(5), || b.stats().requests >= 20).await);
    assert_eq!(a.stats().requests, 20);
    // Billed and counted: only the client's own requests.
    let cost = metric(&gw, "pylon_cost_usd_total{model=\"chat\",provider=\"a\"}").await;
    assert!(cost > 0.0);
    assert_eq!(
        metric(&gw, "pylon_cost_usd_total{model=\"chat\",provider=\"b\"}").await,
        0.0
    );
    let text = get_text(&gw, "/metrics").await;
    let ok: f64 = text
        .lines()
        .filter(|l| l.starts_with("pylon_requests_total{") && l.contains("model=\"chat\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(ok, 20.0, "shadow copies are not client requests");
    let series =
        "pylon_rollout_requests_total{arm=\"candidate\",outcome=\"ok\",rollout=\"chat-v2\"}";
    let mut shadowed = 0.0;
    for _ in 0..50 {
        shadowed = metric(&gw, series).await;
        if shadowed >= 20.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shadowed, 20.0, "the copies are counted for the judge");
}

#[tokio::test]
async fn commands_move_the_state_and_refuse_what_does_not_apply() {
    let rollout = "candidate = { targets = [ { provider = \"b\", model = \"mock-b\" } ] }\nsteps = [ { weight = 10, hold = \"1h\" } ]\nstart = false\n";
    let (_a, _b, gw) = start(rollout, 1).await;
    assert_eq!(status(&gw).await["state"], "pending");
    let post = |cmd: &'static str| {
        let (gw, path) = (&gw, format!("/admin/v1/rollouts/chat-v2/{cmd}"));
        async move { admin_post(gw, TOKEN, &path, &json!({})).await }
    };
    let (code, s) = post("start").await;
    assert_eq!((code, s["state"].as_str()), (200, Some("progressing")));
    assert_eq!(s["weight"], 10.0);
    assert_eq!(post("resume").await.0, 409, "not paused");
    assert_eq!(post("pause").await.1["state"], "paused");
    assert_eq!(post("resume").await.1["state"], "progressing");
    assert_eq!(post("abort").await.1["state"], "aborted");
    assert_eq!(post("start").await.0, 409);
    let (code, _) = admin_post(&gw, TOKEN, "/admin/v1/rollouts/nope/start", &json!({})).await;
    assert_eq!(code, 404);
    let list = admin_get(&gw, TOKEN, "/admin/v1/rollouts").await;
    assert_eq!(list[0]["name"], "chat-v2");
}

#[tokio::test]
async fn webhooks_get_one_event_per_state_change() {
    let (hook, events) = webhook_receiver(StatusCode::OK).await;
    let rollout = format!(
        "webhook = \"http://{hook}/events\"\ncandidate = {{ targets = [ {{ provider = \"b\", model = \"mock-b\" }} ] }}\nsteps = [ {{ weight = 20, hold = \"1s\" }}, {{ weight = 50, hold = \"1s\" }} ]\n[rollouts.analysis]\ninterval = \"1s\"\nmin_requests = 5\nmax_latency_ratio = 100.0\nmax_ttft_ratio = 100.0\n"
    );
    let (_a, _b, gw) = start(&rollout, 1).await;
    let load = Load::start(gw.url("/v1/chat/completions"), hello("chat"));
    let s = wait_for(&gw, "promoted", Duration::from_secs(30)).await;
    load.stop();
    assert_eq!(s["state"], "promoted", "{s:#}");
    assert!(eventually(Duration::from_secs(3), || events.lock().unwrap().len() >= 2).await);
    // More verdicts came in than state changes: still exactly one event per change.
    let got: Vec<(String, String)> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("pending".into(), "progressing".into()),
            ("progressing".into(), "promoted".into())
        ]
    );
}

#[tokio::test]
async fn a_refusing_confirm_gate_stops_short_of_100_percent() {
    let (gate, asked) = webhook_receiver(StatusCode::SERVICE_UNAVAILABLE).await;
    let rollout = format!(
        "confirm_url = \"http://{gate}/confirm\"\ncandidate = {{ targets = [ {{ provider = \"b\", model = \"mock-b\" }} ] }}\nsteps = [ {{ weight = 20, hold = \"1s\" }} ]\n[rollouts.analysis]\ninterval = \"1s\"\nmin_requests = 5\nmax_latency_ratio = 100.0\nmax_ttft_ratio = 100.0\n"
    );
    let (_a, _b, gw) = start(&rollout, 1).await;
    let load = Load::start(gw.url("/v1/chat/completions"), hello("chat"));
    let s = wait_for(&gw, "paused", Duration::from_secs(30)).await;
    load.stop();
    assert_eq!(
        (s["state"].as_str(), s["weight"].as_f64()),
        (Some("paused"), Some(20.0)),
        "{s:#}"
    );
    assert_eq!(asked.lock().unwrap()[0]["type"], "rollout.confirm");
}

/// A guarded flag: its variant's share follows the rollout, the judge compares the AI requests
/// of the users in each group (the same bucketing), and a failing variant rolls back to the
/// default for everyone.
#[tokio::test]
async fn a_guarded_flag_rolls_back_when_its_users_requests_fail() {
    let flags = temp_dir("guarded").join("flags.json");
    std::fs::write(
        &flags,
        json!({"flags": {"new-agent": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}})
            .to_string(),
    )
    .unwrap();
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    // Users in the candidate group call the model with a header the app sets from the flag.
    let text = format!(
        r#"
[auth]
mode = "none"
[limits]
ip_rpm = 0
[flags]
file = "{flags}"

[[providers]]
name = "a"
kind = "openai"
base_url = "http://{a}/v1"

[[providers]]
name = "b"
kind = "openai"
base_url = "http://{b}/v1"

[[models]]
name = "chat"
targets = [ {{ provider = "a", model = "mock-a" }} ]
retries = 0

[[models]]
name = "agent"
targets = [ {{ provider = "b", model = "mock-b" }} ]
retries = 0

[[rollouts]]
name = "new-agent-rollout"
flag = "new-agent"
candidate = {{ variant = "on" }}
steps = [ {{ weight = 50, hold = "1h" }} ]
stickiness = "header:x-user"
[rollouts.analysis]
interval = "1s"
min_requests = 10
"#,
        flags = flags.display(),
        a = a.addr,
        b = b.addr,
    );
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let status = || admin_get(&gw, TOKEN, "/admin/v1/rollouts/new-agent-rollout");
    let mut s = status().await;
    for _ in 0..50 {
        if s["state"] == "progressing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = status().await;
    }
    let flag_for = |user: String| {
        let gw = &gw;
        async move {
            let v: Value = client()
                .post(gw.url("/ofrep/v1/evaluate/flags/new-agent"))
                .json(&json!({"context": {"targetingKey": user}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    // The new agent (model `agent`, provider b) fails for a third of its calls.
    b.set(Behaviour {
        error_status: Some(500),
        error_rate: 0.34,
        ..Behaviour::default()
    });
    let mut on = 0;
    for round in 0..40 {
        for i in 0..20 {
            let user = format!("user-{i}");
            let f = flag_for(user.clone()).await;
            assert_eq!(f["reason"], "SPLIT", "{f}");
            let model = if f["value"] == true { "agent" } else { "chat" };
            on += u32::from(f["value"] == true);
            let _ = client()
                .post(gw.url("/v1/chat/completions"))
                .header("x-user", &user)
                .json(&hello(model))
                .send()
                .await
                .unwrap();
        }
        // Paced by the judge, not by how fast this machine sends: each round is judged
        // before the next (the rollback needs two failing verdicts in a row).
        let judged = s["verdicts"].as_array().map_or(0, Vec::len);
        for _ in 0..30 {
            s = status().await;
            if s["state"] == "rolled_back" || s["verdicts"].as_array().map_or(0, Vec::len) > judged
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if s["state"] == "rolled_back" {
            break;
        }
        assert!(round < 39, "never rolled back: {s:#}");
    }
    assert!(on > 0, "some users got the new variant");
    assert_eq!(s["state"], "rolled_back", "{s:#}");
    // Rolled back: everyone gets the default variant.
    for i in 0..20 {
        assert_eq!(flag_for(format!("user-{i}")).await["value"], false);
    }
}

/// `stickiness = "user"` follows the end user the body names (chat `user`), whatever else
/// changes between their requests.
#[tokio::test]
async fn user_stickiness_follows_the_requests_user_field() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let text = config(
        "candidate = { targets = [ { provider = \"b\", model = \"mock-b\" } ] }\nsteps = [ { weight = 40 } ]\n",
        1,
    )
    .replace("stickiness = \"header:x-session-id\"", "stickiness = \"user\"")
    .replace("{a}", &a.addr.to_string())
    .replace("{b}", &b.addr.to_string());
    let (gw, _) = Gateway::with_admin(&text, Some(TOKEN)).await;
    wait_for(&gw, "progressing", Duration::from_secs(5)).await;
    let arm = |user: String, session: &'static str| {
        let gw = &gw;
        async move {
            let resp = client()
                .post(gw.url("/v1/chat/completions"))
                .header("x-session-id", session)
                .json(&json!({"model": "chat", "user": user, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            resp.headers()["x-pylon-arm"].to_str().unwrap().to_owned()
        }
    };
    let mut candidates = 0;
    for i in 0..100 {
        let first = arm(format!("end-user-{i}"), "s1").await;
        assert_eq!(arm(format!("end-user-{i}"), "s2").await, first, "user {i}");
        candidates += u32::from(first == "candidate");
    }
    assert!(
        (20..=60).contains(&candidates),
        "about 40 of 100: {candidates}"
    );
}
