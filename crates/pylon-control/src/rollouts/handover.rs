//! Counts handed from every instance to the judge: through Redis when configured, else (or
//! while Redis is down) through the store.

use std::time::Duration;

use pylon_policy::rollout::{ArmWindow, Histogram};
use serde::{Deserialize, Serialize};

use super::{take, Def, RolloutError, Rollouts};

/// Windows one rollout's list in Redis keeps (newest), and how long it outlives its last push.
const MAX_WINDOWS: usize = 10_000;
const WINDOWS_TTL: Duration = Duration::from_secs(600);

fn windows_key(rollout: &str) -> String {
    format!("rollout:{rollout}:windows")
}

/// Both arms' counts as handed between instances.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct Wire {
    pub(super) arms: [WireArm; 2],
}

/// One arm's counts: its window with the histograms sparse.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct WireArm {
    requests: u64,
    errors: u64,
    latency: Vec<(u16, u32)>,
    ttft: Vec<(u16, u32)>,
    cost: f64,
    cost_sq: f64,
}

impl WireArm {
    fn of(w: &ArmWindow) -> WireArm {
        WireArm {
            requests: w.requests,
            errors: w.errors,
            latency: w.latency.sparse(),
            ttft: w.ttft.sparse(),
            cost: w.cost,
            cost_sq: w.cost_sq,
        }
    }

    pub(super) fn window(&self) -> ArmWindow {
        ArmWindow {
            requests: self.requests,
            errors: self.errors,
            latency: Histogram::from_sparse(&self.latency),
            ttft: Histogram::from_sparse(&self.ttft),
            cost: self.cost,
            cost_sq: self.cost_sq,
        }
    }
}

impl Rollouts {
    /// Not the judge: hands this instance's counts to whoever is.
    pub(super) async fn hand_over(&self, def: &Def, now: u64) -> Result<(), RolloutError> {
        let p = take(&self.pending, &def.name);
        if p.stable.requests + p.candidate.requests == 0 {
            return Ok(());
        }
        let wire = Wire {
            arms: [WireArm::of(&p.stable), WireArm::of(&p.candidate)],
        };
        let data = serde_json::to_string(&wire).unwrap_or_default();
        if let Some(redis) = &self.redis {
            match redis
                .push_list(&windows_key(&def.name), &data, MAX_WINDOWS, WINDOWS_TTL)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(target: "pylon::rollout", error = %e, "Redis unreachable: counts handed over through the store");
                }
            }
        }
        self.store
            .push_window(&def.name, &self.instance, now as i64, &data)
            .await?;
        Ok(())
    }

    /// Every window other instances handed over (through Redis and the store).
    pub(super) async fn handed_over(&self, name: &str) -> Result<Vec<String>, RolloutError> {
        let mut all = self.store.take_windows(name).await?;
        if let Some(redis) = &self.redis {
            match redis.take_list(&windows_key(name)).await {
                Ok(v) => all.extend(v),
                Err(e) => {
                    tracing::warn!(target: "pylon::rollout", error = %e, "Redis unreachable: this interval is judged without the counts handed over there");
                }
            }
        }
        Ok(all)
    }
}
