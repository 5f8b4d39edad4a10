//! Alerting in the control plane. Every `evaluate_every` each instance reads its metrics; the
//! holder of the `alert-evaluator` lease (one instance at a time, taken over when its holder
//! stops renewing it) evaluates every rule on them, moves each alert through pending → firing →
//! resolved, stores every transition, routes notifications to receivers (retried with backoff,
//! each attempt stored), re-sends while firing, and may pause or abort a rollout.

mod notify;
mod series;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pylon_config::{Alert, AlertKind, AlertReceiver, AlertRoute, Direction, ReceiverKind};
use pylon_policy::alert::anomaly::{self, Detector};
use pylon_policy::alert::burn::{self, Counts};
use pylon_policy::alert::{breaks, Lifecycle, Phase, Transition};
use pylon_proxy::Gateway;
use pylon_store::{AlertEvent, AlertRow, Store, StoreError};
use serde_json::{json, Value};

use notify::Notice;
use series::Sample;

const LEASE: &str = "alert-evaluator";
/// How often firing alerts are re-sent to an Alertmanager (it forgets alerts not re-sent).
const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);
/// Default re-notification of a firing, unacknowledged alert.
const REPEAT: Duration = Duration::from_secs(4 * 3600);
/// An acknowledgement without a duration lasts this long.
const ACK: Duration = Duration::from_secs(3600);
/// Delivery attempts per notification (backoff 0.5, 1, 2, 4 s).
const ATTEMPTS: u32 = 5;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What an alert command could not do.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("no alert rule named `{0}`")]
    Unknown(String),
    #[error("alert `{0}` is not firing: there is nothing to acknowledge")]
    NotFiring(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One rule's live state on the evaluating instance.
#[derive(Default)]
struct Live {
    life: Lifecycle,
    detector: Option<Detector>,
    counts: Option<Counts>,
    value: Option<f64>,
    /// When it was last notified, per receiver.
    sent: HashMap<String, u64>,
}

/// The rules of this instance, evaluated here while it holds the lease.
pub struct Alerts {
    rules: Vec<Alert>,
    receivers: HashMap<String, AlertReceiver>,
    routing: AlertRoute,
    every: Duration,
    history: i64,
    store: Store,
    gateway: Arc<Gateway>,
    rollouts: Arc<crate::rollouts::Rollouts>,
    instance: String,
    http: reqwest::Client,
    live: Mutex<HashMap<String, Live>>,
    prev: Mutex<Option<Sample>>,
    /// Whether this instance evaluated last time (taking over loads the stored alerts).
    holding: std::sync::atomic::AtomicBool,
}

fn labels_of(rule: &Alert) -> BTreeMap<String, String> {
    let mut l = rule.labels.clone();
    l.insert("alertname".into(), rule.name.get_ref().clone());
    l.insert("severity".into(), rule.severity.as_str().into());
    l
}

/// The receivers an alert's labels route to: the deepest matching routes (siblings after one
/// with `continue`), else the node's own receiver, inherited from above when it names none.
fn route(
    node: &AlertRoute,
    labels: &BTreeMap<String, String>,
    inherited: Option<&str>,
) -> Vec<String> {
    let receiver = node
        .receiver
        .as_ref()
        .map(|r| r.get_ref().as_str())
        .or(inherited);
    let mut out = Vec::new();
    for child in &node.routes {
        if child.matchers.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            out.extend(route(child, labels, receiver));
            if !child.continue_ {
                break;
            }
        }
    }
    if out.is_empty() {
        out.extend(receiver.map(str::to_owned));
    }
    out
}

impl Alerts {
    /// The alerting sections of `config`, over `store`, reading `gateway`'s metrics.
    pub fn new(
        config: &pylon_config::Config,
        store: Store,
        gateway: Arc<Gateway>,
        rollouts: Arc<crate::rollouts::Rollouts>,
    ) -> Alerts {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Alerts {
            rules: config.alerts.clone(),
            receivers: config
                .alert_receivers
                .iter()
                .map(|r| (r.name.get_ref().clone(), r.clone()))
                .collect(),
            routing: config.alert_routing.clone(),
            every: config.alerting.evaluate_every,
            history: config.alerting.history as i64,
            store,
            gateway,
            rollouts,
            instance: uuid::Uuid::new_v4().to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            live: Mutex::new(HashMap::new()),
            prev: Mutex::new(None),
            holding: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether any rule is configured (no loop runs otherwise).
    pub fn any(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Runs until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.step(now_ms()).await {
                tracing::warn!(target: "pylon::alert", error = %e, "alert evaluation failed; retrying");
            }
        }
    }

    /// Gives the evaluator's lease up (at shutdown).
    pub async fn release(&self) {
        if let Err(e) = self.store.release_lease(LEASE, &self.instance).await {
            tracing::warn!(target: "pylon::alert", error = %e, "could not release the evaluator's lease; it expires on its own");
        }
    }

    /// One round: sample, and evaluate when holding the lease.
    async fn step(&self, now: u64) -> Result<(), AlertError> {
        let sample = Sample::of(&self.gateway.gather_metrics(), now);
        let prev = self
            .prev
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(sample.clone());
        let lease_ms = (self.every.as_millis() as i64 * 3).max(5_000);
        let holder = self
            .store
            .take_lease(LEASE, &self.instance, now as i64, lease_ms)
            .await?;
        let was = self
            .holding
            .swap(holder, std::sync::atomic::Ordering::Relaxed);
        if !holder {
            return Ok(());
        }
        if !was {
            self.take_over().await?;
        }
        let Some(prev) = prev else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        for rule in &self.rules {
            if let Err(e) = self.evaluate(rule, &prev, &sample, now).await {
                tracing::warn!(target: "pylon::alert", alert = %rule.name.get_ref(), error = %e, "could not record the alert");
            }
        }
        self.gateway
            .metrics()
            .alert_evaluation
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Starts from the stored alerts, so a firing alert is not announced again by a new holder.
    async fn take_over(&self) -> Result<(), AlertError> {
        let stored = self.store.alerts().await?;
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for row in stored {
            let l = live.entry(row.name.clone()).or_default();
            l.life = match row.state.as_str() {
                "firing" => Lifecycle {
                    phase: Phase::Firing,
                    active_since: row.active_since.unwrap_or(0) as u64,
                    firing_since: row.firing_since.unwrap_or(0) as u64,
                },
                "pending" => Lifecycle {
                    phase: Phase::Pending,
                    active_since: row.active_since.unwrap_or(0) as u64,
                    firing_since: 0,
                },
                _ => Lifecycle::default(),
            };
        }
        Ok(())
    }

    /// Whether the rule's condition holds now, and the value it looked at.
    fn condition(
        rule: &Alert,
        live: &mut Live,
        prev: &Sample,
        cur: &Sample,
        now: u64,
    ) -> (bool, Option<f64>, Value) {
        let series = rule
            .series
            .as_ref()
            .map_or("requests", |s| s.get_ref().as_str());
        match rule.kind {
            AlertKind::Threshold | AlertKind::Health | AlertKind::Budget => {
                let r = series::read(series, &rule.labels, prev, cur);
                let v = r.map(|r| r.value);
                let holds = v.is_some_and(|v| breaks(v, rule.above, rule.below));
                (holds, v, json!({"value": v}))
            }
            AlertKind::Anomaly => {
                let Some(r) = series::read(series, &rule.labels, prev, cur) else {
                    return (false, None, json!({}));
                };
                let d = live.detector.get_or_insert_with(|| {
                    Detector::new(anomaly::Params {
                        score: rule.score,
                        direction: match rule.direction {
                            Direction::Up => anomaly::Direction::Up,
                            Direction::Down => anomaly::Direction::Down,
                            Direction::Both => anomaly::Direction::Both,
                        },
                        n: rule.n_of_m[0],
                        m: rule.n_of_m[1],
                        min_rate: rule.min_rate,
                    })
                });
                let p = d.observe(now, r.value, r.traffic);
                (
                    p.holds,
                    Some(r.value),
                    json!({"value": r.value, "expected": p.expected, "score": p.score}),
                )
            }
            AlertKind::BurnRate => {
                let objective = rule.objective.unwrap_or(0.999);
                let (bad, total) = match rule.latency {
                    Some(l) => series::slow_and_total(prev, cur, &rule.labels, l.as_secs_f64()),
                    None => series::failed_and_total(prev, cur, &rule.labels),
                };
                let counts = live.counts.get_or_insert_with(|| Counts::new(60_000));
                counts.add(now, bad, total);
                let left = burn::budget_left(counts, objective, now);
                match burn::evaluate(counts, objective, now) {
                    Some(b) => (
                        true,
                        Some(b.long_rate),
                        json!({"window": b.window.name, "long_burn": b.long_rate, "short_burn": b.short_rate, "budget_left": left}),
                    ),
                    None => (false, None, json!({"budget_left": left})),
                }
            }
        }
    }

    async fn evaluate(
        &self,
        rule: &Alert,
        prev: &Sample,
        cur: &Sample,
        now: u64,
    ) -> Result<(), AlertError> {
        let name = rule.name.get_ref().clone();
        let for_ms = rule.for_.map_or(0, |d| d.as_millis() as u64);
        let (transition, life, detail, value) = {
            let mut all = self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let live = all.entry(name.clone()).or_default();
            let (holds, value, detail) = Self::condition(rule, live, prev, cur, now);
            live.value = value;
            (live.life.step(holds, now, for_ms), live.life, detail, value)
        };
        let labels = labels_of(rule);
        let m = &self.gateway.metrics().alerts_firing;
        m.with_label_values(&[&name, rule.severity.as_str()])
            .set(i64::from(life.phase == Phase::Firing));
        match transition {
            Some(Transition::Firing) => {
                self.notify(rule, &labels, true, life.firing_since, now, true)
                    .await?;
                if let Some(action) = &rule.rollout {
                    self.act(&name, action.name.get_ref(), action.action.get_ref(), now)
                        .await?;
                }
            }
            Some(Transition::Resolved) => {
                self.notify(rule, &labels, false, life.firing_since, now, true)
                    .await?;
            }
            _ if life.phase == Phase::Firing => {
                self.notify(rule, &labels, true, life.firing_since, now, false)
                    .await?;
            }
            _ => {}
        }
        if let Some(t) = transition {
            let state = match t {
                Transition::Pending => "pending",
                Transition::Firing => "firing",
                Transition::Resolved => "resolved",
                Transition::Cleared => "inactive",
            };
            tracing::info!(target: "pylon::alert", alert = %name, state, ?value, "alert");
            let mut row = self.store.alert(&name).await?.unwrap_or(AlertRow {
                name: name.clone(),
                state: String::new(),
                severity: String::new(),
                labels: String::new(),
                annotations: String::new(),
                value: None,
                active_since: None,
                firing_since: None,
                resolved_at: None,
                acked_by: None,
                acked_until: None,
                updated_at: 0,
            });
            row.state = state.into();
            row.severity = rule.severity.as_str().into();
            row.labels = json!(labels).to_string();
            row.annotations = json!(rule.annotations).to_string();
            row.value = value;
            row.active_since = (life.phase != Phase::Inactive).then_some(life.active_since as i64);
            row.firing_since = (life.phase == Phase::Firing).then_some(life.firing_since as i64);
            row.resolved_at = (t == Transition::Resolved).then_some(now as i64);
            if t != Transition::Pending {
                // A new firing starts unacknowledged.
                row.acked_by = None;
                row.acked_until = None;
            }
            row.updated_at = now as i64;
            self.store.put_alert(&row).await?;
            self.event(&name, state, detail.clone(), now).await?;
        }
        Ok(())
    }

    async fn event(
        &self,
        alert: &str,
        kind: &str,
        detail: Value,
        now: u64,
    ) -> Result<(), AlertError> {
        self.store
            .add_alert_event(
                &AlertEvent {
                    at: now as i64,
                    alert: alert.to_owned(),
                    kind: kind.to_owned(),
                    detail: detail.to_string(),
                },
                self.history,
            )
            .await?;
        Ok(())
    }

    /// Pauses or aborts a rollout for a firing alert; the outcome goes into the history.
    async fn act(
        &self,
        alert: &str,
        rollout: &str,
        action: &str,
        now: u64,
    ) -> Result<(), AlertError> {
        let outcome = match self.rollouts.command(rollout, action).await {
            Ok(s) => json!({"rollout": rollout, "action": action, "state": s["state"]}),
            Err(e) => json!({"rollout": rollout, "action": action, "error": e.to_string()}),
        };
        tracing::warn!(target: "pylon::alert", alert, rollout, action, outcome = %outcome, "alert acted on a rollout");
        self.event(alert, "rollout", outcome, now).await
    }

    /// Sends an alert to its receivers: at once on a transition; while firing, again after
    /// the repeat interval unless acknowledged (an Alertmanager every minute: it forgets alerts
    /// that are not re-sent), and at once when an acknowledgement timed out.
    async fn notify(
        &self,
        rule: &Alert,
        labels: &BTreeMap<String, String>,
        firing: bool,
        since: u64,
        now: u64,
        transition: bool,
    ) -> Result<(), AlertError> {
        let name = rule.name.get_ref();
        let mut ack_expired = false;
        if !transition {
            let row = self.store.alert(name).await?;
            let acked_until = row.as_ref().and_then(|r| r.acked_until);
            match acked_until {
                Some(until) if (now as i64) < until => return Ok(()),
                Some(_) => {
                    // The acknowledgement ran out while the alert still fires: page again.
                    if let Some(mut r) = row {
                        r.acked_by = None;
                        r.acked_until = None;
                        r.updated_at = now as i64;
                        self.store.put_alert(&r).await?;
                    }
                    self.event(name, "ack_expired", json!({}), now).await?;
                    ack_expired = true;
                }
                None => {}
            }
        }
        let every_ms = self.every.as_millis() as u64;
        let notice = Notice {
            name: name.clone(),
            firing,
            labels: labels.clone(),
            annotations: rule.annotations.clone(),
            starts_ms: since,
            ends_ms: if firing {
                now + 4 * every_ms.max(ALERTMANAGER_RESEND.as_millis() as u64)
            } else {
                now
            },
        };
        for receiver in route(&self.routing, labels, None) {
            let Some(r) = self.receivers.get(&receiver) else {
                continue;
            };
            let due = {
                let mut all = self
                    .live
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let sent = &mut all.entry(name.clone()).or_default().sent;
                let last = sent.get(&receiver).copied();
                let gap = if r.kind == ReceiverKind::Alertmanager {
                    ALERTMANAGER_RESEND
                } else {
                    REPEAT
                };
                let due = transition
                    || ack_expired
                    || last.is_none_or(|l| now.saturating_sub(l) >= gap.as_millis() as u64);
                if due {
                    sent.insert(receiver.clone(), now);
                }
                due
            };
            if !due {
                continue;
            }
            let (url, body) = notify::request(
                r.kind,
                &receiver,
                r.url.get_ref(),
                r.routing_key.as_ref().map(|k| k.expose()),
                &notice,
            );
            let (http, store, metrics, history) = (
                self.http.clone(),
                self.store.clone(),
                self.gateway.metrics().clone(),
                self.history,
            );
            let (alert, status) = (name.clone(), if firing { "firing" } else { "resolved" });
            self.gateway.spawn(async move {
                let outcome = deliver(&http, &url, &body).await;
                let ok = outcome.is_ok();
                metrics
                    .alert_deliveries
                    .with_label_values(&[receiver.as_str(), if ok { "ok" } else { "failed" }])
                    .inc();
                let detail = match &outcome {
                    Ok(attempts) => json!({"receiver": receiver, "status": status, "attempts": attempts}),
                    Err(e) => {
                        tracing::warn!(target: "pylon::alert", receiver = %receiver, error = %e, "alert receiver is down: notification not delivered");
                        json!({"receiver": receiver, "status": status, "error": e})
                    }
                };
                let _ = store
                    .add_alert_event(
                        &AlertEvent {
                            at: now_ms() as i64,
                            alert,
                            kind: if ok { "notified" } else { "delivery_failed" }.into(),
                            detail: detail.to_string(),
                        },
                        history,
                    )
                    .await;
            });
        }
        Ok(())
    }

    /// Every rule's alert: state, labels, annotations, acknowledgement, timestamps.
    pub async fn list(&self) -> Result<Vec<Value>, AlertError> {
        let stored: HashMap<String, AlertRow> = self
            .store
            .alerts()
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        Ok(self
            .rules
            .iter()
            .map(|rule| {
                let name = rule.name.get_ref();
                let row = stored.get(name);
                let state = row.map_or("inactive", |r| r.state.as_str());
                json!({
                    "name": name,
                    "kind": rule.kind.as_str(),
                    "state": state,
                    "severity": rule.severity.as_str(),
                    "labels": labels_of(rule),
                    "annotations": rule.annotations,
                    "value": row.and_then(|r| r.value),
                    "active_since": row.and_then(|r| r.active_since),
                    "firing_since": row.and_then(|r| r.firing_since),
                    "resolved_at": row.and_then(|r| r.resolved_at),
                    "acked": row.is_some_and(|r| r.acked_until.is_some()),
                    "acked_by": row.and_then(|r| r.acked_by.clone()),
                    "acked_until": row.and_then(|r| r.acked_until),
                    "receivers": route(&self.routing, &labels_of(rule), None),
                })
            })
            .collect())
    }

    /// What happened, newest first (all alerts, or one).
    pub async fn history(&self, alert: Option<&str>, limit: i64) -> Result<Vec<Value>, AlertError> {
        Ok(self
            .store
            .alert_events(alert, limit)
            .await?
            .into_iter()
            .map(|e| {
                json!({
                    "at": e.at, "alert": e.alert, "kind": e.kind,
                    "detail": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::Null),
                })
            })
            .collect())
    }

    /// Acknowledges a firing alert: no re-notification until `for` passes (then, if it still
    /// fires, it pages again).
    pub async fn ack(
        &self,
        name: &str,
        by: &str,
        lasting: Option<Duration>,
    ) -> Result<Value, AlertError> {
        if !self.rules.iter().any(|r| r.name.get_ref() == name) {
            return Err(AlertError::Unknown(name.to_owned()));
        }
        let mut row = match self.store.alert(name).await? {
            Some(r) if r.state == "firing" => r,
            _ => return Err(AlertError::NotFiring(name.to_owned())),
        };
        let now = now_ms();
        let until = now + lasting.unwrap_or(ACK).as_millis() as u64;
        row.acked_by = Some(by.to_owned());
        row.acked_until = Some(until as i64);
        row.updated_at = now as i64;
        self.store.put_alert(&row).await?;
        self.event(name, "acked", json!({"by": by, "until": until}), now)
            .await?;
        let all = self.list().await?;
        Ok(all
            .into_iter()
            .find(|a| a["name"] == name)
            .unwrap_or(Value::Null))
    }
}

/// Posts one notification, retrying with backoff; the attempts it took, or why it failed.
async fn deliver(http: &reqwest::Client, url: &str, body: &Value) -> Result<u32, String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        match http.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => return Ok(attempt + 1),
            Ok(r) => last = format!("{url} answered {}", r.status()),
            Err(e) => last = format!("{url} unreachable: {e}"),
        }
        if attempt + 1 < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(text: &str) -> AlertRoute {
        #[derive(serde::Deserialize)]
        struct W {
            alert_routing: AlertRoute,
        }
        toml::from_str::<W>(text).unwrap().alert_routing
    }

    #[test]
    fn routes_match_deepest_first_and_inherit_receivers() {
        let r = routing(
            r#"
[alert_routing]
receiver = "default"
routes = [
  { matchers = { severity = "critical" }, receiver = "pager", continue = true,
    routes = [ { matchers = { model = "chat" }, receiver = "chat-team" } ] },
  { matchers = { severity = "critical" }, receiver = "slack" },
  { matchers = { model = "embed" } },
]
"#,
        );
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        assert_eq!(route(&r, &l(&[("severity", "warning")]), None), ["default"]);
        assert_eq!(
            route(&r, &l(&[("severity", "critical"), ("model", "chat")]), None),
            ["chat-team", "slack"]
        );
        assert_eq!(
            route(&r, &l(&[("severity", "critical")]), None),
            ["pager", "slack"]
        );
        assert_eq!(
            route(&r, &l(&[("severity", "info"), ("model", "embed")]), None),
            ["default"],
            "a route without a receiver inherits its parent's"
        );
    }
}
