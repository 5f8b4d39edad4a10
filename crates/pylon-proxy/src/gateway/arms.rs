//! What each rollout's arms served since the judge last looked, and the weights every request
//! reads. Process state: each instance counts its own traffic; the control plane combines them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use pylon_policy::rollout::ArmWindow;
use pylon_telemetry::prometheus;

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

/// One arm's metric handles, resolved once (no label lookup per request).
struct ArmMetrics {
    ok: prometheus::IntCounter,
    error: prometheus::IntCounter,
    duration: prometheus::Histogram,
    ttft: prometheus::Histogram,
    cost: prometheus::Counter,
}

impl ArmMetrics {
    fn new(m: &pylon_telemetry::Metrics, rollout: &str, arm: Arm) -> ArmMetrics {
        let r = &m.rollout;
        let labels = [rollout, arm.as_str()];
        ArmMetrics {
            ok: r.requests.with_label_values(&[rollout, arm.as_str(), "ok"]),
            error: r
                .requests
                .with_label_values(&[rollout, arm.as_str(), "error"]),
            duration: r.duration.with_label_values(&labels),
            ttft: r.ttft.with_label_values(&labels),
            cost: r.cost.with_label_values(&labels),
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
    metrics: [ArmMetrics; 2],
}

fn hundredths(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 100.0).round() as u32
}

impl ArmState {
    /// A rollout serving nothing to the candidate yet.
    pub fn new(name: &str, metrics: &pylon_telemetry::Metrics) -> ArmState {
        ArmState {
            name: Arc::from(name),
            weight: AtomicU32::new(0),
            shadow: AtomicU32::new(0),
            windows: Mutex::new(Default::default()),
            metrics: [
                ArmMetrics::new(metrics, name, Arm::Stable),
                ArmMetrics::new(metrics, name, Arm::Candidate),
            ],
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

    /// Counts one finished request of `arm`, for the judge and in the metrics.
    pub fn observe(&self, arm: Arm, error: bool, latency_ms: f64, ttft_ms: Option<f64>, cost: f64) {
        if let Ok(mut w) = self.windows.lock() {
            w[arm as usize].record(error, latency_ms, ttft_ms, cost);
        }
        let m = &self.metrics[arm as usize];
        if error { &m.error } else { &m.ok }.inc();
        m.duration.observe(latency_ms / 1000.0);
        if let Some(t) = ttft_ms {
            m.ttft.observe(t / 1000.0);
        }
        if cost > 0.0 {
            m.cost.inc_by(cost);
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
