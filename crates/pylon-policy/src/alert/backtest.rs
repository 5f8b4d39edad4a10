//! Replaying a rule over a recorded series: which points would have fired, with the same code
//! the evaluator runs live, so a rule can be tuned before it pages anyone.

use serde::Serialize;

use super::anomaly::{Detector, Params};
use super::burn::{self, Counts};
use super::{breaks, Lifecycle, Phase, Transition};

/// What a rule looks for, with its settings.
#[derive(Debug, Clone)]
pub enum Condition {
    /// `above` / `below`, held for `for_ms`.
    Threshold {
        above: Option<f64>,
        below: Option<f64>,
    },
    Anomaly(Params),
    /// The points' values are bad events and `traffic` the total (per point, not per second).
    BurnRate {
        objective: f64,
    },
}

/// One recorded point: time (ms), value, and the traffic behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t_ms: u64,
    pub value: f64,
    pub traffic: f64,
}

/// What the rule made of one point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Judged {
    pub t_ms: u64,
    pub value: f64,
    /// The anomaly detector's expected value and score.
    pub expected: Option<f64>,
    pub score: Option<f64>,
    pub holds: bool,
    pub phase: Phase,
}

/// A stretch during which the alert would have fired.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Firing {
    pub from_ms: u64,
    /// When it would have resolved (`None`: still firing at the end).
    pub to_ms: Option<u64>,
}

/// Every point judged, and the stretches that would have fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replay {
    pub points: Vec<Judged>,
    pub firings: Vec<Firing>,
}

/// Replays `points` (oldest first) through a rule.
pub fn replay(condition: &Condition, for_ms: u64, points: &[Point]) -> Replay {
    let mut life = Lifecycle::default();
    let mut detector = match condition {
        Condition::Anomaly(p) => Some(Detector::new(*p)),
        _ => None,
    };
    let mut counts = Counts::new(60_000);
    let mut out = Replay {
        points: Vec::with_capacity(points.len()),
        firings: Vec::new(),
    };
    for p in points {
        let (holds, expected, score) = match condition {
            Condition::Threshold { above, below } => (breaks(p.value, *above, *below), None, None),
            Condition::Anomaly(_) => {
                let j = detector
                    .as_mut()
                    .map(|d| d.observe(p.t_ms, p.value, p.traffic));
                (
                    j.is_some_and(|j| j.holds),
                    j.map(|j| j.expected),
                    j.map(|j| j.score),
                )
            }
            Condition::BurnRate { objective } => {
                counts.add(p.t_ms, p.value, p.traffic);
                (
                    burn::evaluate(&counts, *objective, p.t_ms).is_some(),
                    None,
                    None,
                )
            }
        };
        match life.step(holds, p.t_ms, for_ms) {
            Some(Transition::Firing) => out.firings.push(Firing {
                from_ms: p.t_ms,
                to_ms: None,
            }),
            Some(Transition::Resolved) => {
                if let Some(f) = out.firings.last_mut() {
                    f.to_ms = Some(p.t_ms);
                }
            }
            _ => {}
        }
        out.points.push(Judged {
            t_ms: p.t_ms,
            value: p.value,
            expected,
            score,
            holds,
            phase: life.phase,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Vec<Point> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Point {
                t_ms: i as u64 * 10_000,
                value: *v,
                traffic: 10.0,
            })
            .collect()
    }

    #[test]
    fn a_threshold_fires_after_its_for_and_resolves() {
        let r = replay(
            &Condition::Threshold {
                above: Some(0.05),
                below: None,
            },
            20_000,
            &series(&[0.0, 0.1, 0.1, 0.1, 0.0, 0.2, 0.0]),
        );
        assert_eq!(
            r.firings,
            [Firing {
                from_ms: 30_000,
                to_ms: Some(40_000)
            }],
            "held 20 s from 10 s; the later blip is too short"
        );
        assert_eq!(r.points[3].phase, Phase::Firing);
    }

    #[test]
    fn the_anomaly_replay_is_the_live_detector() {
        let params = Params {
            score: 5.0,
            direction: super::super::anomaly::Direction::Up,
            n: 2,
            m: 3,
            min_rate: 0.0,
        };
        let mut values: Vec<f64> = (0..200).map(|i| 100.0 + f64::from(i % 7)).collect();
        values.extend([400.0, 420.0, 410.0]);
        let pts = series(&values);
        let r = replay(&Condition::Anomaly(params), 0, &pts);
        let mut live = Detector::new(params);
        for (p, j) in pts.iter().zip(&r.points) {
            assert_eq!(live.observe(p.t_ms, p.value, p.traffic).holds, j.holds);
        }
        assert_eq!(r.firings.len(), 1);
        assert!(r.firings[0].from_ms >= 200 * 10_000);
    }
}
