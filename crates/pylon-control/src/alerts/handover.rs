//! What passes between instances and between evaluators: each instance's series growth handed
//! to the evaluator, and what a new evaluator takes over from the last — the anomaly
//! detectors' histories and the alerts' states.

use std::time::Duration;

use pylon_config::AlertKind;
use pylon_policy::alert::anomaly::Detector;
use pylon_policy::alert::{Lifecycle, Phase};

use super::series::Sample;
use super::{backtest, AlertError, Alerts};

/// Where instances hand their series' growth to the evaluator: a bounded Redis list, or the
/// store's hand-over table (shared with the rollout judge, under a name no rollout can take).
const HANDOVER_KEY: &str = "alerts:handover";
const HANDOVER_STORE: &str = "~alerts";
const HANDOVER_MAX: usize = 10_000;
const HANDOVER_TTL: Duration = Duration::from_secs(600);

impl Alerts {
    /// Not the evaluator: hands this instance's growth over, through Redis when configured
    /// (a bounded list), else — or while Redis is down — through the store.
    pub(super) async fn hand_over(&self, delta: &Sample, now: u64) -> Result<(), AlertError> {
        let data = format!("{}\n{}", self.instance, delta.to_wire());
        if let Some(redis) = &self.redis {
            match redis
                .push_list(HANDOVER_KEY, &data, HANDOVER_MAX, HANDOVER_TTL)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(target: "pylon::alert", error = %e, "Redis unreachable: alert series handed over through the store");
                }
            }
        }
        self.store
            .push_window(HANDOVER_STORE, &self.instance, now as i64, &data)
            .await?;
        Ok(())
    }

    /// What the other instances handed over since the last round: (instance, growth).
    pub(super) async fn handed_over(&self) -> Result<Vec<(String, Sample)>, AlertError> {
        let mut all = self.store.take_windows(HANDOVER_STORE).await?;
        if let Some(redis) = &self.redis {
            match redis.take_list(HANDOVER_KEY).await {
                Ok(v) => all.extend(v),
                Err(e) => {
                    tracing::warn!(target: "pylon::alert", error = %e, "Redis unreachable: this round is evaluated without the series handed over there");
                }
            }
        }
        Ok(all
            .iter()
            .filter_map(|d| {
                let (instance, wire) = d.split_once('\n')?;
                Some((instance.to_owned(), Sample::from_wire(wire)?))
            })
            .collect())
    }

    /// Saves every anomaly detector's seasonal history, so the next evaluator (after a
    /// restart or a failover) starts with it.
    pub(super) async fn save_detectors(&self, now: u64) {
        self.saved_at
            .store(now, std::sync::atomic::Ordering::Relaxed);
        let histories: Vec<(String, Vec<(u64, f64)>)> = {
            let all = self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.iter()
                .filter_map(|(name, l)| Some((name.clone(), l.detector.as_ref()?.history())))
                .collect()
        };
        for (name, points) in histories {
            let json = serde_json::to_string(&points).unwrap_or_default();
            if let Err(e) = self.store.put_detector(&name, &json, now as i64).await {
                tracing::warn!(target: "pylon::alert", alert = %name, error = %e, "could not save the detector's history");
            }
        }
    }

    /// A saved history for `name`, taken (a detector is given it once).
    pub(super) fn saved_history(&self, name: &str) -> Option<Vec<(u64, f64)>> {
        self.saved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
    }

    /// Gives anomaly rules the weekly seasonality they would have had: the history the last
    /// evaluator saved (every series, split alerts included), else the last four weeks of the
    /// store's hourly rollups, each hour fed as its four quarter-hours. Only a rule with
    /// neither (a new one) starts cold.
    pub(super) async fn seed(&self, now: u64) {
        match self.store.detectors().await {
            Ok(rows) => {
                let mut saved = self
                    .saved
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                saved.clear();
                for (name, points) in rows {
                    if let Ok(p) = serde_json::from_str(&points) {
                        saved.insert(name, p);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(target: "pylon::alert", error = %e, "saved detector histories could not be read");
            }
        }
        let rules = self.rules.current();
        for rule in rules
            .iter()
            .map(|r| &r.alert)
            .filter(|r| r.kind == AlertKind::Anomaly && r.by.is_empty())
        {
            if self
                .saved
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(rule.name.get_ref())
            {
                continue;
            }
            let to = (now / 1000) as i64 / 3600 * 3600;
            let points = match backtest::stored(&self.store, rule, to - 28 * 86_400, to).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(target: "pylon::alert", alert = %rule.name.get_ref(), reason = %e, "anomaly rule starts without history");
                    continue;
                }
            };
            let Some(params) = backtest::condition(rule).ok().and_then(|c| match c {
                pylon_policy::alert::backtest::Condition::Anomaly(p) => Some(p),
                _ => None,
            }) else {
                continue;
            };
            let mut d = Detector::new(params);
            for p in &points {
                for quarter in 0..4 {
                    d.observe(p.t_ms + quarter * 900_000, p.value, p.traffic);
                }
            }
            if let Ok(mut all) = self.live.lock() {
                all.entry(rule.name.get_ref().clone()).or_default().detector = Some(d);
            }
            tracing::info!(target: "pylon::alert", alert = %rule.name.get_ref(), hours = points.len(), "anomaly rule seeded from history");
        }
    }

    /// Starts from the stored alerts, so a firing alert does not fire (nor act) again under a
    /// new holder; its groups are new here, so receivers may hear it once more.
    pub(super) async fn take_over(&self) -> Result<(), AlertError> {
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
}
