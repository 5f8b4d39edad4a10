//! Alert decisions from values alone: when a rule's condition becomes an alert (pending, firing,
//! resolved), SLO burn rates over several windows, and the seasonal anomaly detector. Time is
//! always passed in (milliseconds), so every rule is simulated on an injected clock.

pub mod anomaly;
pub mod backtest;
pub mod burn;
pub mod dispatch;

use serde::Serialize;

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The condition does not hold.
    Inactive,
    /// It holds, for less than the rule's `for`.
    Pending,
    Firing,
}

/// A change worth recording (and, for firing and resolved, notifying).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Pending,
    Firing,
    Resolved,
    /// Pending, then the condition went away before `for` passed: nobody is told.
    Cleared,
}

/// One alert's lifecycle: the condition must hold for `for_ms` before it fires; it resolves
/// the first evaluation it no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    pub phase: Phase,
    /// When the condition started holding (pending and firing).
    pub active_since: u64,
    /// When it fired.
    pub firing_since: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: Phase::Inactive,
            active_since: 0,
            firing_since: 0,
        }
    }
}

impl Lifecycle {
    /// Feeds one evaluation; the transition it caused, if any.
    pub fn step(&mut self, holds: bool, now_ms: u64, for_ms: u64) -> Option<Transition> {
        match (self.phase, holds) {
            (Phase::Inactive, true) => {
                self.active_since = now_ms;
                if for_ms == 0 {
                    self.phase = Phase::Firing;
                    self.firing_since = now_ms;
                    Some(Transition::Firing)
                } else {
                    self.phase = Phase::Pending;
                    Some(Transition::Pending)
                }
            }
            (Phase::Pending, true) if now_ms.saturating_sub(self.active_since) >= for_ms => {
                self.phase = Phase::Firing;
                self.firing_since = now_ms;
                Some(Transition::Firing)
            }
            (Phase::Pending, false) => {
                self.phase = Phase::Inactive;
                Some(Transition::Cleared)
            }
            (Phase::Firing, false) => {
                self.phase = Phase::Inactive;
                Some(Transition::Resolved)
            }
            _ => None,
        }
    }
}

/// Whether `value` breaks a threshold (`above` and `below` are exclusive bounds).
pub fn breaks(value: f64, above: Option<f64>, below: Option<f64>) -> bool {
    above.is_some_and(|a| value > a) || below.is_some_and(|b| value < b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_only_after_for_and_resolves_at_once() {
        let mut l = Lifecycle::default();
        assert_eq!(l.step(true, 0, 120_000), Some(Transition::Pending));
        assert_eq!(l.step(true, 60_000, 120_000), None);
        assert_eq!(l.step(true, 120_000, 120_000), Some(Transition::Firing));
        assert_eq!(l.step(true, 130_000, 120_000), None);
        assert_eq!(l.step(false, 140_000, 120_000), Some(Transition::Resolved));
        assert_eq!(l.phase, Phase::Inactive);
        // A blip shorter than `for` is cleared without firing.
        assert_eq!(l.step(true, 150_000, 120_000), Some(Transition::Pending));
        assert_eq!(l.step(false, 160_000, 120_000), Some(Transition::Cleared));
        // `for = 0` fires on the first evaluation.
        assert_eq!(l.step(true, 170_000, 0), Some(Transition::Firing));
    }

    proptest! {
        /// Whatever the sequence, an alert fires only after holding for `for` without a break,
        /// and resolves only from firing.
        #[test]
        fn firing_needs_an_unbroken_for(holds in prop::collection::vec(any::<bool>(), 1..200), for_steps in 0u64..10) {
            let mut l = Lifecycle::default();
            let mut run = 0u64;
            for (i, h) in holds.into_iter().enumerate() {
                let before = l.phase;
                run = if h { run + 1 } else { 0 };
                let t = l.step(h, i as u64 * 1000, for_steps * 1000);
                if t == Some(Transition::Firing) {
                    prop_assert!(run > for_steps);
                }
                if t == Some(Transition::Resolved) {
                    prop_assert_eq!(before, Phase::Firing);
                }
            }
        }
    }
}
