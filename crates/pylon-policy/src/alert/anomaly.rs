//! The anomaly detector: is this value far from what is normal for this time of the week?
//!
//! Expected value = a seasonal baseline (the median of the same quarter-hour of the week over up to
//! four past weeks, once one week is held) plus a short-term correction (Holt's linear smoothing of
//! what the baseline does not explain — the whole signal while history is short, and what
//! absorbs a lasting level shift). The score is the error in robust units: the median absolute
//! deviation of recent errors, so a few outliers do not widen the band. A point is anomalous
//! beyond `score` in the rule's direction, and only when traffic is above a floor (quiet nights
//! do not page); the alert holds when `n` of the last `m` points are anomalous. Anomalous
//! points move the baseline only as far as the band's edge, so a long spike is not learnt as
//! normal within minutes.

use std::collections::VecDeque;

use serde::Serialize;

/// The seasonal profile's resolution: a quarter of an hour.
const SLOT: u64 = 15 * 60_000;
const WEEK_SLOTS: u64 = 7 * 24 * 4;
/// Past weeks the seasonal baseline looks at.
const WEEKS: u64 = 4;
/// Recent errors the spread is measured on.
const SPREAD_POINTS: usize = 360;
/// Time constants (ms) of the short-term level and trend, of the ratio to the seasonal profile,
/// and of the series' magnitude: learning goes by time, not by points, so a 10 s evaluation
/// interval learns a spike as normal no faster than a 5 min one.
const TAU_LEVEL: f64 = 30.0 * 60_000.0;
const TAU_TREND: f64 = 6.0 * 3_600_000.0;
const TAU_RATIO: f64 = 2.0 * 3_600_000.0;
const TAU_SCALE: f64 = 24.0 * 3_600_000.0;

/// A change beyond the band for this long is learnt as the new normal.
const ACCEPT_AFTER_MS: u64 = 3_600_000;

/// The weight of a new point `dt` after the last one, for a time constant `tau`.
fn smoothing(dt: f64, tau: f64) -> f64 {
    1.0 - (-dt / tau).exp()
}
/// MAD to standard deviation for normal data.
const MAD_SCALE: f64 = 1.4826;

/// Which way a value must leave the band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
    Both,
}

/// A rule's settings.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Beyond this many robust deviations a point is anomalous.
    pub score: f64,
    pub direction: Direction,
    /// `n` anomalous points among the last `m` make the alert hold.
    pub n: u32,
    pub m: u32,
    /// Below this traffic (requests per second) points are not judged.
    pub min_rate: f64,
}

/// What the detector made of one point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub expected: f64,
    /// Signed error in robust deviations (0 until the spread is known).
    pub score: f64,
    pub anomalous: bool,
    /// Whether `n` of the last `m` points were anomalous.
    pub holds: bool,
}

/// One series' detector state: about 68 KiB (2,689 quarter-hour means, 360 recent errors, `m`
/// flags).
#[derive(Debug, Clone)]
pub struct Detector {
    params: Params,
    /// (quarter-hour index, sum, count) of the last four weeks, oldest first.
    slots: VecDeque<(u64, f64, u32)>,
    /// Short-term level and trend while no week is held (Holt).
    level: Option<f64>,
    trend: f64,
    /// Once a week is held: how the present compares with the seasonal profile (a lasting
    /// level shift moves it, over hours).
    ratio: Option<f64>,
    /// The series' typical magnitude, below which differences are noise.
    scale: f64,
    last_ms: Option<u64>,
    /// Since when points have been beyond the band without a break.
    beyond_since: Option<u64>,
    /// Recent relative errors.
    errors: VecDeque<f64>,
    flags: VecDeque<bool>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Detector {
    /// A detector with no history.
    pub fn new(params: Params) -> Detector {
        Detector {
            params,
            slots: VecDeque::new(),
            level: None,
            trend: 0.0,
            ratio: None,
            scale: 0.0,
            last_ms: None,
            beyond_since: None,
            errors: VecDeque::new(),
            flags: VecDeque::new(),
        }
    }

    /// The median of this quarter-hour of the week over the past weeks held, if any.
    fn seasonal(&self, slot: u64) -> Option<f64> {
        let mut same: Vec<f64> = (1..=WEEKS)
            .filter_map(|k| {
                let h = slot.checked_sub(k * WEEK_SLOTS)?;
                let i = self.slots.binary_search_by_key(&h, |e| e.0).ok()?;
                let e = self.slots[i];
                Some(e.1 / f64::from(e.2))
            })
            .collect();
        (!same.is_empty()).then(|| median(&mut same))
    }

    /// The robust spread of recent relative errors (at least 1 %).
    fn spread(&self) -> Option<f64> {
        if self.errors.len() < 30 {
            return None;
        }
        let mut e: Vec<f64> = self.errors.iter().copied().collect();
        let mid = median(&mut e);
        let mut dev: Vec<f64> = e.iter().map(|x| (x - mid).abs()).collect();
        Some((median(&mut dev) * MAD_SCALE).max(0.01))
    }

    /// Feeds one point (`traffic`: requests per second behind it, for the quiet floor).
    /// The seasonal history held: each quarter-hour's mean, oldest first, as (start, value) —
    /// what a new detector is fed to start where this one is.
    pub fn history(&self) -> Vec<(u64, f64)> {
        self.slots
            .iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(slot, sum, n)| (slot * SLOT, sum / f64::from(*n)))
            .collect()
    }

    pub fn observe(&mut self, t_ms: u64, value: f64, traffic: f64) -> Point {
        let slot = t_ms / SLOT;
        let dt = self.last_ms.map_or(0, |l| t_ms.saturating_sub(l)) as f64;
        self.last_ms = Some(t_ms);
        let seasonal = self.seasonal(slot);
        // Values smaller than this are treated alike (an error rate of 0 against one of 1e-6).
        self.scale = if self.scale == 0.0 {
            value.abs()
        } else {
            self.scale + smoothing(dt, TAU_SCALE) * (value.abs() - self.scale)
        };
        let floor = (self.scale * 0.05).max(1e-12);
        let expected = match (seasonal, self.ratio) {
            (Some(p), Some(r)) => p * r,
            // The first week is held: from now on last week is what is expected.
            (Some(p), None) => {
                self.ratio = Some(1.0);
                p
            }
            (None, _) => self.level.map_or(value, |l| l + self.trend),
        };
        let relative = (value - expected) / expected.abs().max(floor);
        let spread = self.spread();
        let score = spread.map_or(0.0, |s| relative / s);
        let beyond = match self.params.direction {
            Direction::Up => score > self.params.score,
            Direction::Down => score < -self.params.score,
            Direction::Both => score.abs() > self.params.score,
        };
        let anomalous = beyond && traffic >= self.params.min_rate;
        // Learn, but an outlier only as far as the band's edge, unless the change has lasted
        // long enough to be the new normal (a level shift).
        self.beyond_since = if beyond {
            self.beyond_since.or(Some(t_ms))
        } else {
            None
        };
        let lasting = self
            .beyond_since
            .is_some_and(|since| t_ms - since >= ACCEPT_AFTER_MS);
        let edge = match spread {
            Some(s) if !lasting => 3.0 * s,
            _ => f64::INFINITY,
        };
        let clipped = expected + relative.clamp(-edge, edge) * expected.abs().max(floor);
        match seasonal {
            // Where the profile is near nothing (quiet hours) a ratio says nothing: kept.
            Some(p) if p >= floor => {
                let r = self.ratio.unwrap_or(1.0);
                self.ratio = Some(r + smoothing(dt, TAU_RATIO) * (clipped / p - r));
            }
            Some(_) => {}
            None => {
                let level = self.level.unwrap_or(value);
                let forecast = level + self.trend;
                let next = forecast + smoothing(dt, TAU_LEVEL) * (clipped - forecast);
                self.trend += smoothing(dt, TAU_TREND) * (next - level - self.trend);
                self.level = Some(next);
            }
        }
        self.errors.push_back(relative);
        if self.errors.len() > SPREAD_POINTS {
            self.errors.pop_front();
        }
        // The profile keeps what was normal: once it exists, an outlier only up to the band's
        // edge, so an incident does not come back as a false alarm a week later. In the first
        // week it keeps what happened (a cold start cannot tell a daily ramp from a spike).
        // It keeps the shape, not the level: divided by the ratio in force, so weeks before and
        // after a level shift agree.
        let shape = match self.ratio {
            Some(r) if r > 0.0 => clipped / r,
            _ => value,
        };
        self.record_slot(slot, shape);
        self.flags.push_back(anomalous);
        while self.flags.len() > self.params.m as usize {
            self.flags.pop_front();
        }
        let holds = self.flags.iter().filter(|f| **f).count() >= self.params.n as usize;
        Point {
            expected,
            score,
            anomalous,
            holds,
        }
    }

    fn record_slot(&mut self, slot: u64, value: f64) {
        match self.slots.back_mut() {
            Some(e) if e.0 == slot => {
                e.1 += value;
                e.2 += 1;
            }
            _ => self.slots.push_back((slot, value, 1)),
        }
        while self
            .slots
            .front()
            .is_some_and(|e| e.0 + WEEKS * WEEK_SLOTS < slot)
        {
            self.slots.pop_front();
        }
    }

    /// Quarter-hour means held (bounded by four weeks and a quarter).
    pub fn slots_held(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod simulation;
