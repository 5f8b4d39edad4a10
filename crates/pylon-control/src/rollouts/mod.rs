//! Rollouts in the control plane. Every instance reads each rollout's progress from the store
//! twice a second and applies its weights, so a new weight is in force everywhere within a
//! second. One instance at a time — the holder of the `rollout-judge` lease, taken over when
//! its holder stops renewing it — runs the judge: the others hand it their per-arm counts
//! through Redis when configured (else, or while Redis is down, through the store), and every `interval` it compares the arms, moves the state machine and
//! stores the verdict with its figures. Webhooks get one event per state change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::keys::unix_now_ms as now_ms;
use pylon_config::{Rollout, RolloutStrategy};
use pylon_policy::rollout::{
    advance, judge, ArmWindow, Criteria, Event, Outcome, Plan, Progress, State, Step, Strategy,
    Verdict,
};
use pylon_proxy::Gateway;
use pylon_store::{RolloutDefinition, RolloutRow, Store, StoreError, VerdictRow};
use serde_json::{json, Value};

use admin::parse_definition;
use handover::Wire;

mod admin;
mod handover;

/// How often each instance reads progress and hands over its counts.
const TICK: Duration = Duration::from_millis(500);
/// How long the judge's lease lasts without renewal: a dead judge is replaced this fast.
const LEASE_MS: i64 = 5_000;
const LEASE: &str = "rollout-judge";
/// Verdicts shown by the API.
const HISTORY: i64 = 50;

/// A configured rollout, resolved for the judge.
struct Def {
    name: String,
    subject: Value,
    strategy: RolloutStrategy,
    plan: Plan,
    criteria: Criteria,
    interval_ms: u64,
    start: bool,
    webhook: Option<String>,
    confirm_url: Option<String>,
    /// Who made it through the admin API; `None`: declared in pylon.toml.
    made_by: Option<String>,
}

impl Def {
    fn new(r: &Rollout, made_by: Option<String>) -> Def {
        let a = &r.analysis;
        let strategy = match r.strategy {
            RolloutStrategy::Canary => Strategy::Canary,
            RolloutStrategy::BlueGreen => Strategy::BlueGreen,
            RolloutStrategy::Shadow => Strategy::Shadow,
        };
        let subject = match (&r.model, &r.route) {
            _ if r.flag.is_some() => {
                json!({"flag": r.flag.as_ref().map(|f| f.get_ref()), "model": r.model.as_ref().map(|m| m.get_ref())})
            }
            (Some(m), _) => json!({"model": m.get_ref()}),
            (_, Some(p)) => json!({"route": p.get_ref()}),
            _ => Value::Null,
        };
        Def {
            name: r.name.get_ref().clone(),
            subject,
            strategy: r.strategy,
            plan: Plan {
                strategy,
                steps: r
                    .steps
                    .iter()
                    .map(|s| Step {
                        weight: s.get_ref().weight,
                        hold_ms: s.get_ref().hold.map(|d| d.as_millis() as u64),
                    })
                    .collect(),
                failure_limit: a.failure_limit,
                max_inconclusive: a.max_inconclusive,
                rollback_window_ms: r.rollback_window.as_millis() as u64,
            },
            criteria: Criteria {
                min_requests: a.min_requests,
                max_error_rate_increase: a.max_error_rate_increase,
                max_latency_ratio: a.max_latency_ratio,
                max_ttft_ratio: a.max_ttft_ratio,
                max_cost_ratio: a.max_cost_ratio,
                max_error_rate: a.max_error_rate,
                max_p95_ms: a.max_p95_latency.map(|d| d.as_secs_f64() * 1000.0),
            },
            interval_ms: a.interval.as_millis().max(1) as u64,
            start: r.start,
            webhook: r.webhook.as_ref().map(|u| u.get_ref().clone()),
            confirm_url: r.confirm_url.as_ref().map(|u| u.get_ref().clone()),
            made_by,
        }
    }
}

/// The rollouts in force: the file's and those made through the admin API.
#[derive(Default)]
struct Set {
    rollouts: Vec<Rollout>,
    defs: Vec<Arc<Def>>,
}

/// What a command or the judge could not do.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no rollout named `{0}` is configured")]
    Unknown(String),
    #[error("rollout `{name}` is {state}: `{command}` does not apply")]
    Refused {
        name: String,
        state: &'static str,
        command: &'static str,
    },
    #[error("the rollout is not valid: {0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Live per-arm figures of the window the judge has not evaluated yet.
#[derive(Default, Clone)]
struct Pending {
    stable: ArmWindow,
    candidate: ArmWindow,
}

/// The rollouts of this instance: progress applied to the data plane, and the judge when this
/// instance holds the lease.
pub struct Rollouts {
    set: std::sync::RwLock<Arc<Set>>,
    /// The config file's, against which rollouts made through the API are checked.
    base: std::sync::RwLock<Arc<pylon_config::Config>>,
    /// The definitions read from the store last; a change rebuilds the set.
    stored: tokio::sync::Mutex<Vec<RolloutDefinition>>,
    store: Store,
    gateway: Arc<Gateway>,
    instance: String,
    http: reqwest::Client,
    /// Counts taken from the data plane (and, when judging, from other instances) since the
    /// last verdict, by rollout.
    pending: Mutex<HashMap<String, Pending>>,
    /// When each rollout is judged next (judge only).
    next: Mutex<HashMap<String, u64>>,
    /// Blue-green: the stable's last window before the switch, the baseline afterwards.
    baseline: Mutex<HashMap<String, ArmWindow>>,
    /// Serializes state changes made in this process (the judge and admin commands).
    changing: tokio::sync::Mutex<()>,
    /// With `[data] redis_url`, instances hand their counts to the judge through Redis.
    redis: Option<pylon_state::RedisState>,
}

fn take<K: Clone + Eq + std::hash::Hash, V: Default>(m: &Mutex<HashMap<K, V>>, k: &K) -> V {
    m.lock()
        .ok()
        .and_then(|mut g| g.remove(k))
        .unwrap_or_default()
}

/// `base` with the stored rollouts that fit it added, and every rollout's definition.
fn merge(
    base: &pylon_config::Config,
    stored: &[RolloutDefinition],
) -> (pylon_config::Config, Vec<Arc<Def>>) {
    let mut config = base.clone();
    let mut defs: Vec<Arc<Def>> = config
        .rollouts
        .iter()
        .map(|r| Arc::new(Def::new(r, None)))
        .collect();
    for d in stored {
        let checked = parse_definition(&d.definition).and_then(|r| {
            config.rollouts.push(r);
            let problems = pylon_config::check(&config);
            if problems.is_empty() {
                Ok(())
            } else {
                config.rollouts.pop();
                Err(problems.join("; "))
            }
        });
        match checked {
            Ok(()) => {
                if let Some(r) = config.rollouts.last() {
                    defs.push(Arc::new(Def::new(r, Some(d.created_by.clone()))));
                }
            }
            // Another instance's config may lack its subject: it is not applied here.
            Err(e) => {
                tracing::warn!(target: "pylon::rollout", rollout = %d.name, error = %e, "stored rollout does not fit this instance's config; ignored here");
            }
        }
    }
    (config, defs)
}

impl Rollouts {
    /// The rollouts of `config`, over `store`, applied to `gateway`.
    pub fn new(config: &pylon_config::Config, store: Store, gateway: Arc<Gateway>) -> Rollouts {
        // The webhook client needs a TLS provider; the process may not have installed one yet.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Rollouts {
            set: std::sync::RwLock::new(Arc::new(Set {
                rollouts: config.rollouts.clone(),
                defs: config
                    .rollouts
                    .iter()
                    .map(|r| Arc::new(Def::new(r, None)))
                    .collect(),
            })),
            base: std::sync::RwLock::new(Arc::new(config.clone())),
            stored: tokio::sync::Mutex::new(Vec::new()),
            store,
            gateway,
            instance: uuid::Uuid::new_v4().to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            pending: Mutex::new(HashMap::new()),
            next: Mutex::new(HashMap::new()),
            baseline: Mutex::new(HashMap::new()),
            changing: tokio::sync::Mutex::new(()),
            redis: config
                .data
                .redis_url
                .as_ref()
                .and_then(|u| pylon_state::RedisState::new(u.expose(), "pylon:").ok()),
        }
    }

    /// This instance's name in the judge's lease.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Gives the judge's lease up (at shutdown), so another instance takes over at once.
    pub async fn release(&self) {
        if let Err(e) = self.store.release_lease(LEASE, &self.instance).await {
            tracing::warn!(target: "pylon::rollout", error = %e, "could not release the judge's lease; it expires on its own");
        }
    }

    fn set(&self) -> Arc<Set> {
        self.set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn def(&self, name: &str) -> Result<Arc<Def>, RolloutError> {
        self.set()
            .defs
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or_else(|| RolloutError::Unknown(name.to_owned()))
    }

    /// Reads the rollouts made through the admin API and, when they changed, puts the new set
    /// in force in this process (data plane and judge).
    async fn refresh(&self) -> Result<(), RolloutError> {
        let mut last = self.stored.lock().await;
        let stored = self.store.rollout_definitions().await?;
        if *last == stored {
            return Ok(());
        }
        let (config, defs) = merge(&self.base(), &stored);
        self.gateway.install_rollouts(&config.rollouts);
        self.put(config.rollouts, defs);
        *last = stored;
        Ok(())
    }

    /// Takes a reloaded config's rollouts: `apply` gets the config with the ones made through
    /// the admin API added (those that still fit it) and puts it in force; when it fails,
    /// nothing changes here.
    pub async fn reconfigure<E>(
        &self,
        base: &pylon_config::Config,
        apply: impl FnOnce(&pylon_config::Config) -> Result<(), E>,
    ) -> Result<(), E> {
        let last = self.stored.lock().await;
        let (config, defs) = merge(base, &last);
        apply(&config)?;
        *self
            .base
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(base.clone());
        self.put(config.rollouts, defs);
        Ok(())
    }

    fn base(&self) -> Arc<pylon_config::Config> {
        self.base
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn put(&self, rollouts: Vec<Rollout>, defs: Vec<Arc<Def>>) {
        *self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Set { rollouts, defs });
    }

    async fn progress(&self, name: &str) -> Result<Progress, RolloutError> {
        Ok(self
            .store
            .rollout(name)
            .await?
            .and_then(|r| serde_json::from_str(&r.progress).ok())
            .unwrap_or_default())
    }

    /// Runs until the task is aborted: apply, hand over, and judge when holding the lease.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.step().await {
                tracing::warn!(target: "pylon::rollout", error = %e, "rollout step failed; retrying");
            }
        }
    }

    /// One pass over every rollout.
    async fn step(&self) -> Result<(), RolloutError> {
        self.refresh().await?;
        let set = self.set();
        if set.defs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let judge = self
            .store
            .take_lease(LEASE, &self.instance, now as i64, LEASE_MS)
            .await?;
        for def in &set.defs {
            self.collect(def);
            if judge {
                self.judge_one(def, now).await?;
            } else if judged(&self.progress(&def.name).await?) {
                self.hand_over(def, now).await?;
            } else {
                // Nobody judges a finished or paused rollout: its counts are not kept or sent.
                take(&self.pending, &def.name);
            }
            let p = self.progress(&def.name).await?;
            self.apply(def, &p);
        }
        Ok(())
    }

    /// Moves this process's counts into the pending window.
    fn collect(&self, def: &Def) {
        let Some(state) = self.gateway.rollout(&def.name) else {
            return;
        };
        let (s, c) = state.take();
        if let Ok(mut g) = self.pending.lock() {
            let p = g.entry(def.name.clone()).or_default();
            p.stable.merge(&s);
            p.candidate.merge(&c);
        }
    }

    /// The judge's pass over one rollout: start it, let time move it, and judge an interval.
    async fn judge_one(&self, def: &Def, now: u64) -> Result<(), RolloutError> {
        let _one = self.changing.lock().await;
        let p = self.progress(&def.name).await?;
        let mut next = p.clone();
        if p.state == State::Pending && def.start {
            next = advance(&def.plan, &next, Event::Start, now).0;
        }
        next = advance(&def.plan, &next, Event::Tick, now).0;
        let due = {
            let mut g = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = g.entry(def.name.clone()).or_insert(now + def.interval_ms);
            if now >= *at {
                *at = now + def.interval_ms;
                true
            } else {
                false
            }
        };
        let judged = judged(&next);
        let mut verdict = None;
        if due && judged {
            for data in self.handed_over(&def.name).await? {
                if let Ok(w) = serde_json::from_str::<Wire>(&data) {
                    if let Ok(mut g) = self.pending.lock() {
                        let e = g.entry(def.name.clone()).or_default();
                        e.stable.merge(&w.arms[0].window());
                        e.candidate.merge(&w.arms[1].window());
                    }
                }
            }
            let window = take(&self.pending, &def.name);
            let after_switch = next.state == State::Promoted;
            let stable = if after_switch {
                self.baseline
                    .lock()
                    .ok()
                    .and_then(|g| g.get(&def.name).cloned())
                    .unwrap_or_default()
            } else {
                window.stable.clone()
            };
            if def.strategy == RolloutStrategy::BlueGreen
                && !after_switch
                && window.stable.requests >= def.criteria.min_requests
            {
                if let Ok(mut g) = self.baseline.lock() {
                    g.insert(def.name.clone(), window.stable.clone());
                }
            }
            let v = judge(&stable, &window.candidate, &def.criteria);
            next = advance(&def.plan, &next, Event::Verdict(v.outcome), now).0;
            verdict = Some(v);
        } else if !judged {
            // Nothing to judge: counts of a finished or paused rollout are not kept, here or
            // in the store.
            take(&self.pending, &def.name);
            if due {
                self.handed_over(&def.name).await?;
            }
        }
        if next.state == State::Promoted && p.state != State::Promoted {
            if let Some(url) = &def.confirm_url {
                if !self.confirmed(url, def).await {
                    next = Progress {
                        state: State::Paused,
                        ..p.clone()
                    };
                }
            }
        }
        if let Some(v) = &verdict {
            self.record_verdict(def, v, &p, &next, now).await?;
        }
        if next != p {
            self.save(
                def,
                &p,
                &next,
                now,
                verdict.as_ref().map(|v| v.reason.as_str()),
            )
            .await?;
        }
        Ok(())
    }

    /// Asks the confirm-promotion gate; only a 2xx lets the rollout reach 100 %.
    async fn confirmed(&self, url: &str, def: &Def) -> bool {
        let event = json!({"type": "rollout.confirm", "rollout": def.name, "subject": def.subject, "weight": 100});
        match self.http.post(url).json(&event).send().await {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::warn!(target: "pylon::rollout", rollout = %def.name, status = %r.status(), "promotion not confirmed: paused");
                false
            }
            Err(e) => {
                tracing::warn!(target: "pylon::rollout", rollout = %def.name, error = %e, "promotion gate unreachable: paused");
                false
            }
        }
    }

    async fn record_verdict(
        &self,
        def: &Def,
        v: &Verdict,
        during: &Progress,
        after: &Progress,
        now: u64,
    ) -> Result<(), RolloutError> {
        let outcome = match v.outcome {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
        };
        self.gateway
            .metrics()
            .rollout
            .verdicts
            .with_label_values(&[&def.name, outcome])
            .inc();
        tracing::info!(target: "pylon::rollout", rollout = %def.name, outcome, reason = %v.reason, state = after.state.as_str(), weight = after.weight, "rollout verdict");
        self.store
            .add_verdict(&VerdictRow {
                rollout: def.name.clone(),
                at: now as i64,
                outcome: outcome.to_owned(),
                detail: serde_json::to_string(v).unwrap_or_default(),
                state: after.state.as_str().to_owned(),
                // The share the judged window was served at (shadow: copied at).
                weight: during
                    .serving_weight(&def.plan)
                    .max(during.shadow_weight(&def.plan)),
            })
            .await?;
        Ok(())
    }

    /// Stores new progress, applies it here, and sends the webhook when the state changed.
    async fn save(
        &self,
        def: &Def,
        before: &Progress,
        after: &Progress,
        now: u64,
        reason: Option<&str>,
    ) -> Result<(), RolloutError> {
        self.store
            .put_rollout(&RolloutRow {
                name: def.name.clone(),
                progress: serde_json::to_string(after).unwrap_or_default(),
                state: after.state.as_str().to_owned(),
                updated_at: now as i64,
            })
            .await?;
        self.apply(def, after);
        if before.state != after.state || before.step != after.step {
            tracing::info!(target: "pylon::rollout", rollout = %def.name, from = before.state.as_str(), to = after.state.as_str(), step = after.step, weight = after.weight, "rollout moved");
        }
        if before.state != after.state {
            if let Some(url) = &def.webhook {
                let event = json!({
                    "type": "rollout.state", "rollout": def.name, "subject": def.subject,
                    "from": before.state.as_str(), "to": after.state.as_str(),
                    "step": after.step, "weight": after.serving_weight(&def.plan),
                    "reason": reason, "at": now,
                });
                let (http, url) = (self.http.clone(), url.clone());
                self.gateway
                    .spawn(async move { crate::notify::deliver(&http, &url, &event).await });
            }
        }
        Ok(())
    }

    /// Puts a rollout's weights and state in force in this process.
    fn apply(&self, def: &Def, p: &Progress) {
        let Some(state) = self.gateway.rollout(&def.name) else {
            return;
        };
        let (serving, shadow) = (p.serving_weight(&def.plan), p.shadow_weight(&def.plan));
        state.set_weights(serving, shadow);
        let m = &self.gateway.metrics().rollout;
        m.weight.with_label_values(&[&def.name]).set(
            if def.plan.strategy == Strategy::Shadow && p.state != State::Promoted {
                shadow
            } else {
                serving
            },
        );
        for s in State::ALL {
            m.state
                .with_label_values(&[&def.name, s.as_str()])
                .set(i64::from(s == p.state));
        }
    }
}

/// Whether the judge compares the arms in this state (progressing, or in a blue-green
/// rollback window).
fn judged(p: &Progress) -> bool {
    p.state == State::Progressing || (p.state == State::Promoted && p.window_until_ms.is_some())
}
