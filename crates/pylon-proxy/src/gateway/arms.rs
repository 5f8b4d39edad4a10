//! What each rollout's arms served since the judge last looked, and the weights every request
//! reads. Process state: each instance counts its own traffic; the control plane combines them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use pylon_policy::rollout::ArmWindow;

/// Which variant served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Stable,
    Candidate,
}

impl Arm {
    /// The arm's name in headers, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Candidate => "candidate",
        }
    }
}

/// One rollout's live state in this process.
pub struct ArmState {
    /// The rollout's name (also its bucketing prefix).
    pub name: Arc<str>,
    /// Percent of clients' requests the candidate serves, in hundredths (0–10 000).
    weight: AtomicU32,
    /// Percent of requests copied to the candidate (shadow), in hundredths.
    shadow: AtomicU32,
    /// Stable and candidate windows since the judge last took them. Fixed size whatever the
    /// traffic (two histograms of 160 counters per arm); held for a few additions only.
    windows: Mutex<[ArmWindow; 2]>,
}

fn hundredths(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 100.0).round() as u32
}

impl ArmState {
    /// A rollout serving nothing to the candidate yet.
    pub fn new(name: &str) -> ArmState {
        ArmState {
            name: Arc::from(name),
            weight: AtomicU32::new(0),
            shadow: AtomicU32::new(0),
            windows: Mutex::new(Default::default()),
        }
    }

    /// The candidate's serving and shadow shares, in percent.
    pub fn weights(&self) -> (f64, f64) {
        (
            f64::from(self.weight.load(Ordering::Relaxed)) / 100.0,
            f64::from(self.shadow.load(Ordering::Relaxed)) / 100.0,
        )
    }

    /// Applies new shares (percent); requests that start from now on use them.
    pub fn set_weights(&self, serving: f64, shadow: f64) {
        self.weight.store(hundredths(serving), Ordering::Relaxed);
        self.shadow.store(hundredths(shadow), Ordering::Relaxed);
    }

    /// Counts one finished request of `arm`.
    pub fn observe(&self, arm: Arm, error: bool, latency_ms: f64, ttft_ms: Option<f64>, cost: f64) {
        if let Ok(mut w) = self.windows.lock() {
            w[arm as usize].record(error, latency_ms, ttft_ms, cost);
        }
    }

    /// Takes the windows counted since the last call: (stable, candidate).
    pub fn take(&self) -> (ArmWindow, ArmWindow) {
        match self.windows.lock() {
            Ok(mut w) => {
                let [s, c] = std::mem::take(&mut *w);
                (s, c)
            }
            Err(_) => Default::default(),
        }
    }
}
