//! The rollout judge's statistics: is the candidate worse than the stable, on the requests each
//! served in one interval? Every relative check is a one-sided test at a fixed significance, so
//! a candidate fails only on evidence; an arm below its minimum sample makes the verdict
//! inconclusive, never a failure.

use serde::Serialize;

/// Buckets per doubling of a latency histogram: adjacent bounds differ by 2^(1/8) ≈ 9 %.
const PER_OCTAVE: f64 = 8.0;
/// Buckets: 1 ms to 2^20 ms (17 minutes), the last one open-ended.
const BUCKETS: usize = 160;

/// z for a one-sided test at 5 %: a check fails when the candidate is worse than its allowance
/// with 95 % confidence.
const Z: f64 = 1.645;

/// Latencies in milliseconds, in log-spaced buckets (bounded: 160 counters whatever the load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u32>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    fn index(ms: f64) -> usize {
        if ms <= 1.0 {
            return 0;
        }
        ((ms.log2() * PER_OCTAVE) as usize).min(BUCKETS - 1)
    }

    fn lower(i: usize) -> f64 {
        if i == 0 {
            0.0
        } else {
            (i as f64 / PER_OCTAVE).exp2()
        }
    }

    fn upper(i: usize) -> f64 {
        ((i + 1) as f64 / PER_OCTAVE).exp2()
    }

    /// Counts one observation of `ms` milliseconds.
    pub fn record(&mut self, ms: f64) {
        self.record_n(ms, 1);
    }

    /// Counts `n` observations of `ms` milliseconds.
    pub fn record_n(&mut self, ms: f64, n: u32) {
        let i = Self::index(ms);
        self.counts[i] = self.counts[i].saturating_add(n);
        self.total += u64::from(n);
    }

    /// Adds another histogram's counts (another instance's, or another window's).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The non-empty buckets as (index, count), the compact form stored and shared.
    pub fn sparse(&self) -> Vec<(u16, u32)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u16, *c))
            .collect()
    }

    /// Rebuilds a histogram from [`Histogram::sparse`]; out-of-range indexes are ignored.
    pub fn from_sparse(cells: &[(u16, u32)]) -> Histogram {
        let mut h = Histogram::default();
        for &(i, c) in cells {
            if let Some(slot) = h.counts.get_mut(usize::from(i)) {
                *slot = slot.saturating_add(c);
                h.total += u64::from(c);
            }
        }
        h
    }

    /// The `q` quantile (0–1), interpolated inside its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.total as f64;
        let mut seen = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let c = f64::from(c);
            if seen + c >= rank {
                let within = ((rank - seen) / c).clamp(0.0, 1.0);
                let (lo, hi) = (Self::lower(i).max(0.5), Self::upper(i));
                // Log-linear inside the bucket, as the buckets are log-spaced.
                return Some(lo * (hi / lo).powf(within));
            }
            seen += c;
        }
        Some(Self::upper(BUCKETS - 1))
    }

    /// How many observations exceed `ms` (fractional inside the bucket that holds it).
    pub fn above(&self, ms: f64) -> f64 {
        let i = Self::index(ms);
        let tail: u64 = self.counts[i + 1..].iter().map(|&c| u64::from(c)).sum();
        let (lo, hi) = (Self::lower(i).max(0.5), Self::upper(i));
        let share_above = if ms <= lo {
            1.0
        } else {
            (1.0 - (ms / lo).ln() / (hi / lo).ln()).clamp(0.0, 1.0)
        };
        tail as f64 + f64::from(self.counts[i]) * share_above
    }
}

/// What one arm served in one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmWindow {
    pub requests: u64,
    /// Server-side failures (5xx, upstream errors, timeouts, broken streams), not client errors.
    pub errors: u64,
    /// Whole-request latency.
    pub latency: Histogram,
    /// Time to first token, streams only.
    pub ttft: Histogram,
    /// Cost in US dollars: sum and sum of squares, for the mean and its variance.
    pub cost: f64,
    pub cost_sq: f64,
}

impl ArmWindow {
    /// Counts one finished request.
    pub fn record(&mut self, error: bool, latency_ms: f64, ttft_ms: Option<f64>, cost: f64) {
        self.requests += 1;
        self.errors += u64::from(error);
        self.latency.record(latency_ms);
        if let Some(t) = ttft_ms {
            self.ttft.record(t);
        }
        self.cost += cost;
        self.cost_sq += cost * cost;
    }

    /// Adds another window of the same arm.
    pub fn merge(&mut self, other: &ArmWindow) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
        self.ttft.merge(&other.ttft);
        self.cost += other.cost;
        self.cost_sq += other.cost_sq;
    }

    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    fn mean_cost(&self) -> (f64, f64) {
        let n = self.requests.max(1) as f64;
        let mean = self.cost / n;
        let var = (self.cost_sq / n - mean * mean).max(0.0);
        (mean, var)
    }
}

/// What the candidate must not exceed (`None`: not checked).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Criteria {
    /// Per arm and interval; fewer → inconclusive.
    pub min_requests: u64,
    /// Absolute points of error rate over the stable's.
    pub max_error_rate_increase: Option<f64>,
    /// Candidate p95 latency / stable p95.
    pub max_latency_ratio: Option<f64>,
    /// Candidate p95 time to first token / stable p95.
    pub max_ttft_ratio: Option<f64>,
    /// Candidate mean cost per request / stable mean.
    pub max_cost_ratio: Option<f64>,
    /// Absolute bounds on the candidate alone.
    pub max_error_rate: Option<f64>,
    pub max_p95_ms: Option<f64>,
}

/// A verdict's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

/// One check of a verdict, with the figures that decided it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub stable: Option<f64>,
    pub candidate: f64,
    /// What the candidate was allowed.
    pub limit: f64,
    /// The test statistic (z); above 1.645 fails.
    pub z: f64,
    pub outcome: Outcome,
}

/// The judge's answer for one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: String,
    pub stable_requests: u64,
    pub candidate_requests: u64,
    pub checks: Vec<Check>,
}

fn check(name: &'static str, stable: Option<f64>, candidate: f64, limit: f64, z: f64) -> Check {
    let outcome = if z > Z { Outcome::Fail } else { Outcome::Pass };
    Check {
        name,
        stable,
        candidate,
        limit,
        z,
        outcome,
    }
}

/// z of "more than 5 % of `arm`'s observations exceed `threshold`", i.e. its p95 is above it.
fn p95_above(arm: &Histogram, threshold: f64) -> f64 {
    let n = arm.count() as f64;
    let share = arm.above(threshold) / n;
    (share - 0.05) / (0.05 * 0.95 / n).sqrt()
}

/// Compares `candidate` with `stable` under `c`. After a blue-green switch no stable traffic is
/// left: the caller passes the stable's last window before the switch as the baseline.
pub fn judge(stable: &ArmWindow, candidate: &ArmWindow, c: &Criteria) -> Verdict {
    let mut v = Verdict {
        outcome: Outcome::Pass,
        reason: String::new(),
        stable_requests: stable.requests,
        candidate_requests: candidate.requests,
        checks: Vec::new(),
    };
    let relative = c.max_error_rate_increase.is_some()
        || c.max_latency_ratio.is_some()
        || c.max_ttft_ratio.is_some()
        || c.max_cost_ratio.is_some();
    if candidate.requests < c.min_requests || (relative && stable.requests < c.min_requests) {
        v.outcome = Outcome::Inconclusive;
        v.reason = format!(
            "too little traffic: stable {} and candidate {} requests, {} needed per arm",
            stable.requests, candidate.requests, c.min_requests
        );
        return v;
    }
    let (nc, ns) = (candidate.requests as f64, stable.requests.max(1) as f64);
    let (pc, ps) = (candidate.error_rate(), stable.error_rate());
    if let Some(delta) = c.max_error_rate_increase {
        // Unpooled two-proportion test of pc - ps > delta; a floor on the variance keeps
        // zero-error arms from making the statistic infinite.
        let var = (ps * (1.0 - ps) / ns + pc * (1.0 - pc) / nc).max(0.25 / (ns * nc));
        let z = (pc - ps - delta) / var.sqrt();
        v.checks
            .push(check("error_rate", Some(ps), pc, ps + delta, z));
    }
    if let Some(max) = c.max_error_rate {
        let var = (max * (1.0 - max) / nc).max(0.25 / (nc * nc));
        v.checks.push(check(
            "error_rate_bound",
            None,
            pc,
            max,
            (pc - max) / var.sqrt(),
        ));
    }
    let quantiles = [
        (
            "latency_p95",
            c.max_latency_ratio,
            &stable.latency,
            &candidate.latency,
        ),
        ("ttft_p95", c.max_ttft_ratio, &stable.ttft, &candidate.ttft),
    ];
    for (name, ratio, s, k) in quantiles {
        let Some(ratio) = ratio else { continue };
        // TTFT exists only for streams: too few on either side skips the check.
        if k.count() < c.min_requests.max(1) || s.count() < c.min_requests.max(1) {
            continue;
        }
        let (Some(sp), Some(kp)) = (s.quantile(0.95), k.quantile(0.95)) else {
            continue;
        };
        let limit = sp * ratio;
        v.checks
            .push(check(name, Some(sp), kp, limit, p95_above(k, limit)));
    }
    if let Some(max) = c.max_p95_ms {
        if let Some(kp) = candidate.latency.quantile(0.95) {
            v.checks.push(check(
                "latency_p95_bound",
                None,
                kp,
                max,
                p95_above(&candidate.latency, max),
            ));
        }
    }
    if let Some(ratio) = c.max_cost_ratio {
        let ((mc, vc), (ms, vs)) = (candidate.mean_cost(), stable.mean_cost());
        if ms > 0.0 {
            let var = (vc / nc + ratio * ratio * vs / ns).max(f64::MIN_POSITIVE);
            let z = (mc - ratio * ms) / var.sqrt();
            v.checks
                .push(check("cost_per_request", Some(ms), mc, ratio * ms, z));
        }
    }
    let failed: Vec<_> = v
        .checks
        .iter()
        .filter(|k| k.outcome == Outcome::Fail)
        .map(|k| format!("{} {:.4} over {:.4}", k.name, k.candidate, k.limit))
        .collect();
    if failed.is_empty() {
        v.reason = format!(
            "candidate within bounds on {} checks ({} and {} requests)",
            v.checks.len(),
            candidate.requests,
            stable.requests
        );
    } else {
        v.outcome = Outcome::Fail;
        v.reason = failed.join("; ");
    }
    v
}
