//! The detector on labelled synthetic series: daily and weekly seasonality, trend, noise,
//! quiet nights, and injected spikes, dips and level shifts. Reports precision, recall, false
//! alarms per simulated day per series, and detection delay (`cargo test -p pylon-policy
//! anomaly -- --nocapture` prints them).

use super::*;

const STEP: u64 = 5 * 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

fn normal(rng: &mut fastrand::Rng) -> f64 {
    // Box–Muller.
    let (u, v) = (rng.f64().max(1e-12), rng.f64());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

#[derive(Clone, Copy)]
enum Kind {
    Spike,
    Dip,
    Shift,
}

struct Event {
    kind: Kind,
    start: u64,
    end: u64,
}

/// The normal shape at `t`: a daily wave, weekends lower, a slow trend; `quiet` nights fall to
/// almost nothing.
fn normal_at(t: u64, quiet: bool) -> f64 {
    let hours = (t % DAY) as f64 / HOUR as f64;
    let day = t / DAY;
    let daily = 1.0 + 0.5 * (2.0 * std::f64::consts::PI * (hours - 9.0) / 24.0).sin();
    let weekly = if day % 7 >= 5 { 0.6 } else { 1.0 };
    let trend = 1.0 + 0.01 * day as f64;
    let night = if quiet && !(7.0..23.0).contains(&hours) {
        0.02
    } else {
        1.0
    };
    100.0 * daily * weekly * trend * night
}

/// One series of `days`, with its labelled events.
fn series(rng: &mut fastrand::Rng, days: u64, quiet: bool) -> (Vec<(u64, f64, f64)>, Vec<Event>) {
    let mut events = Vec::new();
    // One event every two days on average, after a first clean week.
    let mut t = 7 * DAY + rng.u64(0..DAY / STEP) * STEP;
    while t < days * DAY - DAY {
        let kind = match rng.u8(0..3) {
            0 => Kind::Spike,
            1 => Kind::Dip,
            _ => Kind::Shift,
        };
        let hours = (t % DAY) as f64 / HOUR as f64;
        if quiet && !(8.0..22.0).contains(&hours) {
            t += rng.u64(DAY / STEP..3 * DAY / STEP) * STEP;
            continue;
        }
        let end = match kind {
            Kind::Shift => t + 2 * HOUR,
            _ => t + rng.u64(4..12) * STEP,
        };
        events.push(Event {
            kind,
            start: t,
            end,
        });
        t += rng.u64(DAY / STEP..3 * DAY / STEP) * STEP;
    }
    let mut shift = 1.0;
    let mut points = Vec::new();
    let mut t = 0;
    while t < days * DAY {
        let mut factor = shift;
        for e in &events {
            match e.kind {
                Kind::Spike if (e.start..e.end).contains(&t) => factor *= 2.5,
                Kind::Dip if (e.start..e.end).contains(&t) => factor *= 0.3,
                Kind::Shift if t == e.start => shift *= 1.6,
                _ => {}
            }
        }
        if events
            .iter()
            .any(|e| matches!(e.kind, Kind::Shift) && e.start == t)
        {
            factor = shift;
        }
        let base = normal_at(t, quiet);
        let value = (base * factor * (1.0 + 0.05 * normal(rng))).max(0.0);
        // Traffic behind the value: the value itself, as for a requests-per-second series.
        points.push((t, value, value));
        t += STEP;
    }
    (points, events)
}

struct Score {
    events: usize,
    detected: usize,
    onsets: usize,
    false_alarms: usize,
    /// False alarms in the first week, before any seasonal profile is held.
    cold_false_alarms: usize,
    delays_min: Vec<f64>,
    days: f64,
}

fn run(seeds: std::ops::Range<u64>, days: u64, quiet: bool) -> Score {
    let params = Params {
        score: 5.0,
        direction: Direction::Both,
        n: 2,
        m: 3,
        min_rate: if quiet { 10.0 } else { 0.0 },
    };
    let grace = 6 * STEP;
    let mut s = Score {
        events: 0,
        detected: 0,
        onsets: 0,
        false_alarms: 0,
        cold_false_alarms: 0,
        delays_min: Vec::new(),
        days: 0.0,
    };
    for seed in seeds {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (points, events) = series(&mut rng, days, quiet);
        let mut d = Detector::new(params);
        let mut was = false;
        let mut onsets = Vec::new();
        for (t, v, traffic) in points {
            let p = d.observe(t, v, traffic);
            if p.holds && !was {
                onsets.push(t);
            }
            was = p.holds;
        }
        assert!(d.slots_held() <= (WEEKS * WEEK_SLOTS + 1) as usize);
        s.events += events.len();
        s.onsets += onsets.len();
        // Judged from the second week: the first is the cold start, reported apart.
        s.days += (days - 7) as f64;
        for e in &events {
            if let Some(o) = onsets
                .iter()
                .find(|o| (e.start..e.end + grace).contains(*o))
            {
                s.detected += 1;
                s.delays_min.push((o - e.start) as f64 / 60_000.0);
            }
        }
        let false_onsets: Vec<u64> = onsets
            .iter()
            .copied()
            .filter(|o| !events.iter().any(|e| (e.start..e.end + grace).contains(o)))
            .collect();
        let cold = false_onsets.iter().filter(|o| **o < 7 * DAY).count();
        s.cold_false_alarms += cold;
        s.false_alarms += false_onsets.len() - cold;
        s.onsets -= cold;
    }
    s
}

fn report(name: &str, s: &Score, series: u64) -> (f64, f64, f64) {
    let recall = s.detected as f64 / s.events.max(1) as f64;
    let precision = (s.onsets - s.false_alarms) as f64 / s.onsets.max(1) as f64;
    let per_day = s.false_alarms as f64 / s.days;
    let mut delays = s.delays_min.clone();
    let p50 = median(&mut delays);
    let cold = s.cold_false_alarms as f64 / (7 * series) as f64;
    println!(
        "{name}: {series} series, {} events, recall {recall:.3}, precision {precision:.3}, {per_day:.3} false alarms per series-day ({cold:.2} in the cold-start week), median delay {p50:.0} min",
        s.events
    );
    (recall, precision, per_day)
}

#[test]
fn seasonal_series_with_spikes_dips_and_shifts() {
    let (recall, precision, per_day) = report("seasonal", &run(0..8, 28, false), 8);
    assert!(recall >= 0.95, "recall {recall}");
    assert!(precision >= 0.9, "precision {precision}");
    assert!(per_day <= 0.1, "{per_day} false alarms per series-day");
}

#[test]
fn quiet_nights_do_not_page() {
    let (recall, _, per_day) = report("quiet nights", &run(100..106, 28, true), 6);
    assert!(recall >= 0.9, "recall {recall}");
    assert!(per_day <= 0.1, "{per_day} false alarms per series-day");
}

/// A detector given another's saved history expects what that one expects: a restart or a new
/// evaluator keeps the weekly pattern of any series, latency included.
#[test]
fn a_detector_fed_a_saved_history_continues_the_seasonal_pattern() {
    let params = Params {
        score: 5.0,
        direction: Direction::Both,
        n: 3,
        m: 5,
        min_rate: 0.0,
    };
    let mut first = Detector::new(params);
    let mut t = 0;
    while t < 9 * DAY {
        first.observe(t, normal_at(t, false), 10.0);
        t += STEP;
    }
    let mut second = Detector::new(params);
    let history = first.history();
    assert!(
        history.len() > 7 * 96,
        "a week and more of quarter-hours: {}",
        history.len()
    );
    for (at, v) in history {
        second.observe(at, v, f64::INFINITY);
    }
    let (a, b) = (
        first.observe(t, normal_at(t, false), 10.0),
        second.observe(t, normal_at(t, false), 10.0),
    );
    // Within a tenth: the replay is at quarter-hour resolution, and its level ratio relearns.
    let gap = (a.expected - b.expected).abs() / a.expected;
    assert!(gap < 0.1, "{} vs {}", a.expected, b.expected);
    // And a cold detector has no weekly pattern at all to go by.
    let cold = Detector::new(params).history();
    assert!(cold.is_empty());
}
