//! Alerting in the control plane. Every `evaluate_every` each instance reads its metrics; the
//! holder of the `alert-evaluator` lease (one instance at a time, taken over when its holder
//! stops renewing it) evaluates every rule on them, moves each alert through pending → firing →
//! resolved, stores every transition, routes notifications to receivers (retried with backoff,
//! each attempt stored), re-sends while firing, and may pause or abort a rollout.

pub mod backtest;
mod deliver;
mod handover;
mod manage;
mod notify;
mod rules;
pub mod series;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pylon_config::{Alert, AlertKind, AlertReceiver, AlertRoute, ReceiverKind};
use pylon_policy::alert::anomaly::Detector;
use pylon_policy::alert::burn::{self, Counts};
use pylon_policy::alert::{breaks, dispatch, Lifecycle, Phase, Transition};
use pylon_proxy::Gateway;
use pylon_store::{AlertEvent, AlertRow, SilenceRow, Store, StoreError};
use serde_json::{json, Value};

use crate::keys::unix_now_ms as now_ms;
use notify::Notice;
use series::Sample;

const LEASE: &str = "alert-evaluator";
/// How often firing alerts are re-sent to an Alertmanager (it forgets alerts not re-sent).
const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);
/// An acknowledgement without a duration lasts this long.
const ACK: Duration = Duration::from_secs(3600);
/// The most points one backtest replays.
const MAX_BACKTEST_POINTS: usize = 200_000;
/// Delivery attempts per notification (backoff 0.5, 1, 2, 4 s).
const ATTEMPTS: u32 = 5;

/// What an alert command could not do.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("no alert rule or silence named `{0}`")]
    Unknown(String),
    #[error("alert `{0}` is not firing: there is nothing to acknowledge")]
    NotFiring(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
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
    /// When it was last sent to each Alertmanager receiver.
    sent: HashMap<String, u64>,
    /// When it resolved: it is offered to its groups a while longer, so the resolve is told.
    resolved_at: Option<u64>,
    /// The escalation step reached (round, step), and when the escalation (re)started.
    escalated: Option<(u32, usize)>,
    escalate_from: u64,
}

/// The rules of this instance, evaluated here while it holds the lease.
pub struct Alerts {
    /// The alerting sections of the config in force (a reload replaces them whole).
    conf: std::sync::RwLock<Arc<Conf>>,
    rules: rules::RuleSet,
    store: Store,
    gateway: Arc<Gateway>,
    rollouts: Arc<crate::rollouts::Rollouts>,
    instance: String,
    http: reqwest::Client,
    live: Mutex<HashMap<String, Live>>,
    prev: Mutex<Option<Sample>>,
    dispatcher: Mutex<dispatch::Dispatcher>,
    /// Every instance's traffic (on the evaluator), and its last combined sample.
    combined: Mutex<(series::Combined, Option<Sample>)>,
    /// With `[data] redis_url`, instances hand their series over through Redis.
    redis: Option<pylon_state::RedisState>,
    /// Whether this instance evaluated last time (taking over loads the stored alerts).
    holding: std::sync::atomic::AtomicBool,
    /// Rules with `by`: the label combinations seen in their series (each is an alert).
    split: Mutex<HashMap<String, Vec<BTreeMap<String, String>>>>,
    /// Saved detector histories not yet given to a detector (loaded on taking over).
    saved: Mutex<HashMap<String, Vec<(u64, f64)>>>,
    /// When the detectors' histories were last saved (ms).
    saved_at: std::sync::atomic::AtomicU64,
}

/// How often anomaly detectors' seasonal histories are saved to the store.
const SAVE_EVERY_MS: u64 = 15 * 60 * 1000;

/// Alerts one rule's `by` may make; more combinations are not watched (and are logged).
const MAX_SPLIT: usize = 200;

/// The alerting sections of a config, as the evaluator uses them.
struct Conf {
    /// The config file's (backtests and API rules are checked against it).
    base: pylon_config::Config,
    receivers: HashMap<String, AlertReceiver>,
    routing: AlertRoute,
    every: Duration,
    history: i64,
    /// Escalation policies by name: steps and repeats.
    escalations: HashMap<String, (Vec<dispatch::EscalationStep>, u32)>,
}

impl Conf {
    fn new(config: &pylon_config::Config) -> Conf {
        Conf {
            base: config.clone(),
            receivers: config
                .alert_receivers
                .iter()
                .map(|r| (r.name.get_ref().clone(), r.clone()))
                .collect(),
            routing: config.alert_routing.clone(),
            every: config.alerting.evaluate_every,
            history: config.alerting.history as i64,
            escalations: config
                .alert_escalations
                .iter()
                .map(|e| {
                    let steps = e
                        .steps
                        .iter()
                        .map(|s| dispatch::EscalationStep {
                            after_ms: s.after.as_millis() as u64,
                            receivers: s.receivers.iter().map(|r| r.get_ref().clone()).collect(),
                        })
                        .collect();
                    (e.name.get_ref().clone(), (steps, e.repeat))
                })
                .collect(),
        }
    }
}

fn labels_of(rule: &Alert) -> BTreeMap<String, String> {
    let mut l = rule.labels.clone();
    // An alert a rule's `by` made is named `<rule>:<label>=<value>`; its alertname is the rule's.
    let name = rule.name.get_ref();
    let base = name.split_once(':').map_or(name.as_str(), |(b, _)| b);
    l.insert("alertname".into(), base.to_owned());
    l.insert("severity".into(), rule.severity.as_str().into());
    l
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
            conf: std::sync::RwLock::new(Arc::new(Conf::new(config))),
            rules: rules::RuleSet::new(config),
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
            dispatcher: Mutex::new(dispatch::Dispatcher::default()),
            combined: Mutex::new((series::Combined::default(), None)),
            redis: config
                .data
                .redis_url
                .as_ref()
                .and_then(|u| pylon_state::RedisState::new(u.expose(), "pylon:").ok()),
            holding: std::sync::atomic::AtomicBool::new(false),
            split: Mutex::new(HashMap::new()),
            saved: Mutex::new(HashMap::new()),
            saved_at: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The alerting sections in force.
    fn conf(&self) -> Arc<Conf> {
        self.conf
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Takes a reloaded config's rules, receivers, routing and escalations; rules keep their
    /// state (pending, firing) when their name is kept.
    pub async fn reconfigure(&self, config: &pylon_config::Config) {
        *self
            .conf
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Conf::new(config));
        self.rules.reconfigure(config).await;
    }

    /// This instance's name in the evaluator's lease.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Runs until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut every = self.conf().every;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.conf().every != every {
                // A reload changed the period.
                every = self.conf().every;
                tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            if let Err(e) = self.step(now_ms()).await {
                tracing::warn!(target: "pylon::alert", error = %e, "alert evaluation failed; retrying");
            }
        }
    }

    /// Gives the evaluator's lease up (at shutdown).
    pub async fn release(&self) {
        if self.holding.load(std::sync::atomic::Ordering::Relaxed) {
            self.save_detectors(now_ms()).await;
        }
        if let Err(e) = self.store.release_lease(LEASE, &self.instance).await {
            tracing::warn!(target: "pylon::alert", error = %e, "could not release the evaluator's lease; it expires on its own");
        }
    }

    /// One round: sample, and evaluate when holding the lease.
    async fn step(&self, now: u64) -> Result<(), AlertError> {
        self.rules.refresh(&self.store).await?;
        let rules = self.rules.current();
        if rules.is_empty() {
            return Ok(());
        }
        let own = Sample::of(&self.gateway.gather_metrics(), now);
        let own_prev = self
            .prev
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(own.clone());
        // The first gather is a baseline: what grew before it is not this round's traffic.
        let delta = own_prev.map(|p| own.delta(&p));
        let lease_ms = (self.conf().every.as_millis() as i64 * 3).max(5_000);
        let holder = self
            .store
            .take_lease(LEASE, &self.instance, now as i64, lease_ms)
            .await?;
        let was = self
            .holding
            .swap(holder, std::sync::atomic::Ordering::Relaxed);
        if !holder {
            if let Some(d) = delta {
                self.hand_over(&d, now).await?;
            }
            return Ok(());
        }
        if !was {
            self.take_over().await?;
            self.seed(now).await;
        }
        let others = self.handed_over().await?;
        let (prev, cur) = {
            let mut c = self
                .combined
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !was {
                // A new evaluator starts its combined view afresh.
                *c = (series::Combined::default(), None);
            }
            if let Some(d) = &delta {
                c.0.add(&self.instance, d, now);
            }
            for (instance, d) in &others {
                c.0.add(instance, d, now);
            }
            let cur = c.0.sample(now, lease_ms as u64);
            (c.1.replace(cur.clone()), cur)
        };
        let Some(prev) = prev else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        self.observe_split(&rules, &cur);
        for (_, rule) in self.expanded() {
            let rule = &rule;
            if let Err(e) = self.evaluate(rule, &prev, &cur, now).await {
                tracing::warn!(target: "pylon::alert", alert = %rule.name.get_ref(), error = %e, "could not record the alert");
            }
        }
        self.dispatch(now).await?;
        let saved = self.saved_at.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(saved) >= SAVE_EVERY_MS {
            self.save_detectors(now).await;
        }
        self.gateway
            .metrics()
            .alert_evaluation
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Notes the label combinations each `by` rule's series has data for; one seen once stays
    /// watched, so an alert whose traffic stopped still resolves.
    fn observe_split(&self, rules: &[rules::Rule], cur: &Sample) {
        let mut split = self
            .split
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        split.retain(|name, _| rules.iter().any(|r| r.alert.name.get_ref() == name));
        for rule in rules.iter().map(|r| &r.alert).filter(|r| !r.by.is_empty()) {
            let series = rule
                .series
                .as_ref()
                .map_or("requests", |s| s.get_ref().as_str());
            let seen = split.entry(rule.name.get_ref().clone()).or_default();
            for combo in cur.combinations(series, &rule.by) {
                let narrowed = combo
                    .iter()
                    .all(|(k, v)| rule.labels.get(k).is_none_or(|w| w == v));
                if !narrowed || seen.contains(&combo) {
                    continue;
                }
                if seen.len() >= MAX_SPLIT {
                    tracing::warn!(target: "pylon::alert", alert = %rule.name.get_ref(), "more than {MAX_SPLIT} label combinations: the rest are not watched");
                    break;
                }
                seen.push(combo);
            }
        }
    }

    /// The alerts the rules stand for now, with the rule each comes from: a rule itself, or
    /// for a rule with `by` one per label combination seen (`<rule>:model=chat`), narrowed to it.
    fn expanded(&self) -> Vec<(rules::Rule, Alert)> {
        let rules = self.rules.current();
        let split = self
            .split
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for r in rules.iter() {
            if r.alert.by.is_empty() {
                out.push((r.clone(), r.alert.clone()));
                continue;
            }
            for combo in split.get(r.alert.name.get_ref()).into_iter().flatten() {
                let mut a = r.alert.clone();
                let suffix: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
                a.name = toml::Spanned::new(
                    r.alert.name.span(),
                    format!("{}:{}", r.alert.name.get_ref(), suffix.join(",")),
                );
                a.labels.extend(combo.clone());
                out.push((r.clone(), a));
            }
        }
        out
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
                if live.detector.is_none() {
                    if let Ok(pylon_policy::alert::backtest::Condition::Anomaly(p)) =
                        backtest::condition(rule)
                    {
                        live.detector = Some(Detector::new(p));
                    }
                }
                let Some(d) = live.detector.as_mut() else {
                    return (false, None, json!({}));
                };
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
        // A budget is read from the store, before the lock below is taken.
        let budget = match rule.kind {
            AlertKind::Budget => Some(self.budget(rule, now).await?),
            _ => None,
        };
        let (transition, life, detail, value) = {
            let mut all = self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let live = all.entry(name.clone()).or_default();
            if live.detector.is_none() && rule.kind == AlertKind::Anomaly {
                if let Some(points) = self.saved_history(&name) {
                    if let Ok(pylon_policy::alert::backtest::Condition::Anomaly(p)) =
                        backtest::condition(rule)
                    {
                        let mut d = Detector::new(p);
                        for (t, v) in points {
                            d.observe(t, v, f64::INFINITY);
                        }
                        live.detector = Some(d);
                    }
                }
            }
            let (holds, value, detail) = match budget {
                Some(b) => b,
                None => Self::condition(rule, live, prev, cur, now),
            };
            live.value = value;
            let t = live.life.step(holds, now, for_ms);
            match t {
                Some(Transition::Resolved) => live.resolved_at = Some(now),
                Some(Transition::Firing) => {
                    live.resolved_at = None;
                    live.escalated = None;
                    live.escalate_from = now;
                }
                _ => {}
            }
            (t, live.life, detail, value)
        };
        let m = &self.gateway.metrics().alerts_firing;
        m.with_label_values(&[&name, rule.severity.as_str()])
            .set(i64::from(life.phase == Phase::Firing));
        if transition == Some(Transition::Firing) {
            if let Some(action) = &rule.rollout {
                self.act(&name, action.name.get_ref(), action.action.get_ref(), now)
                    .await?;
            }
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
            row.labels = json!(labels_of(rule)).to_string();
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

    /// A budget rule: the share of its key's or team's budget spent this period (firing at
    /// `above`), with the spend rate of the last six hours and when, at that rate, the budget
    /// runs out.
    async fn budget(
        &self,
        rule: &Alert,
        now: u64,
    ) -> Result<(bool, Option<f64>, Value), AlertError> {
        let now_s = (now / 1000) as i64;
        let (team, wanted) = match (rule.labels.get("key"), rule.labels.get("team")) {
            (Some(k), _) => (false, k),
            (_, Some(t)) => (true, t),
            _ => return Ok((false, None, json!({}))),
        };
        let owner = if team {
            self.store
                .list_teams()
                .await?
                .into_iter()
                .find(|t| &t.id == wanted || &t.name == wanted)
                .and_then(|t| Some((t.id, t.budget?)))
        } else {
            self.store
                .list_keys()
                .await?
                .into_iter()
                .find(|k| &k.name == wanted && k.is_active(now_s))
                .and_then(|k| Some((k.id, k.budget?)))
        };
        let Some((id, budget)) = owner else {
            return Ok((
                false,
                None,
                json!({"error": format!("no budget found for `{wanted}`")}),
            ));
        };
        let since = match budget.period {
            pylon_store::Period::Daily => pylon_types::day::civil_day(now_s),
            pylon_store::Period::Monthly => format!("{}-01", pylon_types::day::civil_month(now_s)),
            pylon_store::Period::Total => "0000-00-00".to_owned(),
        };
        let spent = self
            .store
            .spend_since_all(team, &since)
            .await?
            .get(&id)
            .copied()
            .unwrap_or(0.0);
        let dim = if team {
            pylon_store::Dim::Team
        } else {
            pylon_store::Dim::Key
        };
        let recent: f64 = self
            .store
            .usage_report(
                &[dim],
                pylon_store::Bucket::All,
                now_s - 6 * 3600,
                now_s + 3600,
            )
            .await?
            .iter()
            .filter(|r| r.keys.first() == Some(&id))
            .map(|r| r.cost_usd)
            .sum();
        let per_hour = recent / 6.0;
        let share = if budget.amount_usd > 0.0 {
            spent / budget.amount_usd
        } else {
            0.0
        };
        let left = (budget.amount_usd - spent).max(0.0);
        let exhausted_at = (per_hour > 0.0).then(|| now + (left / per_hour * 3_600_000.0) as u64);
        let holds = rule.above.is_some_and(|a| share >= a);
        Ok((
            holds,
            Some(share),
            json!({"spent_usd": spent, "budget_usd": budget.amount_usd, "period": budget.period.as_str(),
                   "share": share, "spend_per_hour_usd": per_hour, "exhausted_at": exhausted_at}),
        ))
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
                self.conf().history,
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
}
