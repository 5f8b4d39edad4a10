//! What the admin API asks of alerting: each rule's alert, the history, backtests, rules made
//! at run time, silences and acknowledgements.

use super::*;

impl Alerts {
    /// Every rule's alert: state, labels, annotations, acknowledgement, timestamps.
    pub async fn list(&self) -> Result<Vec<Value>, AlertError> {
        let stored: HashMap<String, AlertRow> = self
            .store
            .alerts()
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let now = now_ms();
        let budget_left: HashMap<String, f64> = self
            .rules
            .current()
            .iter()
            .filter_map(|r| {
                let objective = r.alert.objective?;
                let live = self.live.lock().ok()?;
                let counts = live.get(r.alert.name.get_ref())?.counts.as_ref()?;
                Some((
                    r.alert.name.get_ref().clone(),
                    burn::budget_left(counts, objective, now),
                ))
            })
            .collect();
        Ok(self
            .expanded()
            .iter()
            .map(|(r, rule)| {
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
                    "made_by": r.made_by,
                    // A burn-rate rule's error budget left (on the evaluating instance).
                    "budget_left": budget_left.get(name),
                    "receivers": super::deliver::route(&self.conf().routing, &labels_of(rule), None, &Default::default())
                        .into_iter()
                        .map(|(r, _)| r)
                        .collect::<Vec<_>>(),
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

    /// Replays a rule (a `[[alerts]]` entry as JSON) over `points` (`[[t, value, traffic?], …]`,
    /// t in unix seconds or ms) or over the store's hourly history between `from` and `to`
    /// (unix seconds; default the last four weeks): which points would have fired.
    pub async fn backtest(&self, body: &Value) -> Result<Value, AlertError> {
        let invalid = |m: String| AlertError::Invalid(m);
        let rule = body
            .get("rule")
            .ok_or_else(|| invalid("give the rule: {\"rule\": {…[[alerts]] entry…}}".into()))?;
        let text = toml::to_string(rule)
            .map_err(|e| invalid(format!("the rule is not a [[alerts]] entry: {e}")))?;
        let rule = pylon_config::parse_alert(&text).map_err(invalid)?;
        let mut config = self.conf().base.clone();
        config.alerts = vec![rule.clone()];
        let problems = pylon_config::check(&config);
        if !problems.is_empty() {
            return Err(invalid(problems.join("; ")));
        }
        let points = match body.get("points") {
            Some(Value::Array(rows)) => {
                if rows.len() > MAX_BACKTEST_POINTS {
                    return Err(invalid(format!(
                        "at most {MAX_BACKTEST_POINTS} points per backtest"
                    )));
                }
                let mut out = Vec::with_capacity(rows.len());
                for (i, r) in rows.iter().enumerate() {
                    let n = |j: usize| r.get(j).and_then(Value::as_f64);
                    let (Some(t), Some(v)) = (n(0), n(1)) else {
                        return Err(invalid(format!(
                            "point {i}: expected [time, value] or [time, value, traffic]"
                        )));
                    };
                    out.push(pylon_policy::alert::backtest::Point {
                        t_ms: if t < 1e11 { t * 1000.0 } else { t } as u64,
                        value: v,
                        traffic: n(2).unwrap_or(f64::INFINITY),
                    });
                }
                out
            }
            Some(_) => return Err(invalid("`points` is a list of [time, value] pairs".into())),
            None => {
                let now = (now_ms() / 1000) as i64;
                let to = body.get("to").and_then(Value::as_i64).unwrap_or(now);
                let from = body
                    .get("from")
                    .and_then(Value::as_i64)
                    .unwrap_or(to - 28 * 86_400);
                backtest::stored(&self.store, &rule, from, to)
                    .await
                    .map_err(|e| match e {
                        backtest::BacktestError::Store(s) => AlertError::Store(s),
                        other => invalid(other.to_string()),
                    })?
            }
        };
        let replay = backtest::run(&rule, &points).map_err(|e| invalid(e.to_string()))?;
        let fired = replay.points.iter().filter(|p| p.holds).count();
        Ok(json!({
            "rule": rule.name.get_ref(),
            "points": replay.points.len(),
            "points_breaking": fired,
            "firings": replay.firings,
            "judged": replay.points,
        }))
    }

    /// Makes a rule from its `[[alerts]]` entry as JSON, checked like pylon.toml's and shared
    /// with every instance through the store.
    pub async fn create(&self, body: &Value, actor: &str) -> Result<Value, AlertError> {
        let name = self
            .rules
            .create(&self.store, body, actor, now_ms() as i64)
            .await?;
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|a| a["name"] == name.as_str())
            .unwrap_or(Value::Null))
    }

    /// Forgets a rule made through the admin API.
    pub async fn delete(&self, name: &str) -> Result<(), AlertError> {
        self.rules.delete(&self.store, name).await
    }

    /// Silences in force or to come.
    pub async fn silences(&self) -> Result<Vec<Value>, AlertError> {
        Ok(self
            .store
            .silences(now_ms() as i64)
            .await?
            .into_iter()
            .map(|s| {
                json!({
                    "id": s.id, "author": s.author, "comment": s.comment,
                    "matchers": serde_json::from_str::<Value>(&s.matchers).unwrap_or(Value::Null),
                    "starts_at": s.starts_at, "ends_at": s.ends_at, "created_at": s.created_at,
                })
            })
            .collect())
    }

    /// Silences alerts matching every matcher from `starts` (default now) for `lasting`.
    pub async fn silence(
        &self,
        matchers: BTreeMap<String, String>,
        starts: Option<u64>,
        lasting: Duration,
        author: &str,
        comment: &str,
    ) -> Result<Value, AlertError> {
        let now = now_ms();
        let starts = starts.unwrap_or(now);
        let row = SilenceRow {
            id: uuid::Uuid::new_v4().to_string(),
            matchers: json!(matchers).to_string(),
            starts_at: starts as i64,
            ends_at: (starts + lasting.as_millis() as u64) as i64,
            author: author.to_owned(),
            comment: comment.to_owned(),
            created_at: now as i64,
        };
        self.store.add_silence(&row).await?;
        self.event("-", "silenced", json!({"id": row.id, "matchers": matchers, "author": author, "comment": comment, "ends_at": row.ends_at}), now).await?;
        Ok(
            json!({"id": row.id, "matchers": matchers, "starts_at": row.starts_at, "ends_at": row.ends_at, "author": author, "comment": comment}),
        )
    }

    /// Ends a silence now.
    pub async fn unsilence(&self, id: &str) -> Result<(), AlertError> {
        if self.store.expire_silence(id, now_ms() as i64).await? {
            Ok(())
        } else {
            Err(AlertError::Unknown(format!("silence {id}")))
        }
    }

    /// Acknowledges a firing alert: no re-notification until `for` passes (then, if it still
    /// fires, it pages again).
    pub async fn ack(
        &self,
        name: &str,
        by: &str,
        lasting: Option<Duration>,
    ) -> Result<Value, AlertError> {
        if !self
            .expanded()
            .iter()
            .any(|(_, a)| a.name.get_ref() == name)
        {
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
