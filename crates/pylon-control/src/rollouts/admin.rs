//! What the admin API asks of the rollouts: make, delete, command, list and show them.

use pylon_config::Rollout;
use pylon_policy::rollout::{advance, ArmWindow, Event, State};
use pylon_store::RolloutDefinition;
use serde_json::{json, Value};

use super::{now_ms, take, Def, Progress, RolloutError, Rollouts, HISTORY};

impl Rollouts {
    /// Makes a rollout from its `[[rollouts]]` entry as JSON, checked like pylon.toml's, shared
    /// with every instance through the store; it starts at once unless `"start": false`.
    pub async fn create(&self, body: &Value, actor: &str) -> Result<Value, RolloutError> {
        let text = toml::to_string(body).map_err(|e| {
            RolloutError::Invalid(format!(
                "expected a JSON object like a [[rollouts]] entry ({e})"
            ))
        })?;
        let r = parse_definition(&text).map_err(RolloutError::Invalid)?;
        let name = r.name.get_ref().clone();
        if self.def(&name).is_ok() {
            return Err(RolloutError::Conflict(format!(
                "a rollout named `{name}` exists: choose another name, or delete it first"
            )));
        }
        let mut config = (*self.base()).clone();
        config.rollouts.clone_from(&self.set().rollouts);
        config.rollouts.push(r);
        let problems = pylon_config::check(&config);
        if !problems.is_empty() {
            return Err(RolloutError::Invalid(problems.join("; ")));
        }
        let made = self
            .store
            .add_rollout_definition(&RolloutDefinition {
                name: name.clone(),
                definition: body.to_string(),
                created_at: now_ms() as i64,
                created_by: actor.to_owned(),
            })
            .await?;
        if !made {
            return Err(RolloutError::Conflict(format!(
                "a rollout named `{name}` was just made elsewhere"
            )));
        }
        self.refresh().await?;
        self.status(&name).await
    }

    /// Forgets a rollout made through the admin API that no longer moves traffic (pending,
    /// rolled back or aborted), with its progress and verdicts.
    pub async fn delete(&self, name: &str) -> Result<(), RolloutError> {
        let def = self.def(name)?;
        if def.made_by.is_none() {
            return Err(RolloutError::Conflict(format!(
                "rollout `{name}` is declared in pylon.toml: remove it there"
            )));
        }
        let p = self.progress(name).await?;
        if !matches!(p.state, State::Pending | State::RolledBack | State::Aborted) {
            return Err(RolloutError::Conflict(format!(
                "rollout `{name}` is {}: abort it first (a promoted candidate serves all traffic until its targets become the model's own in pylon.toml)",
                p.state.as_str()
            )));
        }
        if !self.store.delete_rollout(name).await? {
            return Err(RolloutError::Unknown(name.to_owned()));
        }
        take(&self.pending, &name.to_owned());
        self.refresh().await
    }

    /// Applies an operator's (or an alert's) command: `start`, `pause`, `resume`, `promote`,
    /// `abort` or `rollback`.
    pub async fn command(&self, name: &str, command: &str) -> Result<Value, RolloutError> {
        let def = self.def(name)?;
        let (event, command) = match command {
            "start" => (Event::Start, "start"),
            "pause" => (Event::Pause, "pause"),
            "resume" => (Event::Resume, "resume"),
            "promote" => (Event::Promote, "promote"),
            "abort" => (Event::Abort, "abort"),
            "rollback" => (Event::Rollback, "rollback"),
            _ => return Err(RolloutError::Unknown(format!("{name}/{command}"))),
        };
        let _one = self.changing.lock().await;
        let now = now_ms();
        let before = self.progress(name).await?;
        let (after, changed) = advance(&def.plan, &before, event, now);
        if !changed {
            return Err(RolloutError::Refused {
                name: name.to_owned(),
                state: before.state.as_str(),
                command,
            });
        }
        let reason = format!("{command} by an operator");
        self.save(&def, &before, &after, now, Some(&reason)).await?;
        drop(_one);
        self.status(name).await
    }

    /// Every rollout's state, for the list.
    pub async fn list(&self) -> Result<Vec<Value>, RolloutError> {
        let mut out = Vec::new();
        for def in &self.set().defs {
            let p = self.progress(&def.name).await?;
            out.push(self.summary(def, &p));
        }
        Ok(out)
    }

    fn summary(&self, def: &Def, p: &Progress) -> Value {
        json!({
            "name": def.name,
            "subject": def.subject,
            "strategy": def.plan.strategy,
            "state": p.state.as_str(),
            "weight": p.serving_weight(&def.plan),
            "shadow_weight": p.shadow_weight(&def.plan),
            "step": p.step,
            "steps": def.plan.steps.iter().map(|s| json!({"weight": s.weight, "hold_ms": s.hold_ms})).collect::<Vec<_>>(),
            "rollback_window_until": p.window_until_ms,
            "made_by": def.made_by,
        })
    }

    /// One rollout with its live per-arm figures and its verdict history.
    pub async fn status(&self, name: &str) -> Result<Value, RolloutError> {
        let def = self.def(name)?;
        let p = self.progress(name).await?;
        self.collect(&def);
        let live = self
            .pending
            .lock()
            .ok()
            .and_then(|g| g.get(name).cloned())
            .unwrap_or_default();
        let verdicts: Vec<Value> = self
            .store
            .verdicts(name, HISTORY)
            .await?
            .into_iter()
            .map(|v| {
                json!({
                    "at": v.at, "outcome": v.outcome, "state": v.state, "weight": v.weight,
                    "detail": serde_json::from_str::<Value>(&v.detail).unwrap_or(Value::Null),
                })
            })
            .collect();
        let mut out = self.summary(&def, &p);
        out["arms"] =
            json!({"stable": figures(&live.stable), "candidate": figures(&live.candidate)});
        out["analysis"] = json!({"interval_ms": def.interval_ms, "criteria": def.criteria});
        out["verdicts"] = json!(verdicts);
        Ok(out)
    }
}

/// An arm's figures for the API (this instance's view of the window being collected).
fn figures(w: &ArmWindow) -> Value {
    let n = w.requests.max(1) as f64;
    json!({
        "requests": w.requests,
        "errors": w.errors,
        "error_rate": w.errors as f64 / n,
        "latency_p95_ms": w.latency.quantile(0.95),
        "ttft_p95_ms": w.ttft.quantile(0.95),
        "cost_per_request_usd": w.cost / n,
    })
}

/// One stored or posted `[[rollouts]]` entry (JSON or TOML text).
pub(super) fn parse_definition(text: &str) -> Result<Rollout, String> {
    let text = match serde_json::from_str::<Value>(text) {
        Ok(v) => toml::to_string(&v).map_err(|e| e.to_string())?,
        Err(_) => text.to_owned(),
    };
    pylon_config::parse_rollout(&text)
}
