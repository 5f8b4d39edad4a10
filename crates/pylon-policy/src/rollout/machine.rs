//! The rollout state machine, one for every strategy: a plan of steps, the judge's verdicts and
//! the operator's commands move it; time comes in as a value, so it runs the same under a
//! simulated clock as in production.

use serde::{Deserialize, Serialize};

use super::judge::Outcome;

/// How traffic reaches the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Weights in steps.
    Canary,
    /// Preview only, then 100 % at once; the stable stays warm for the rollback window.
    BlueGreen,
    /// Copies of requests go to the candidate; its answers are discarded.
    Shadow,
}

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Percent of traffic served by the candidate (shadow: percent copied to it).
    pub weight: f64,
    /// How long the step is held (in ms) once it has a passing verdict; `None`: until resumed
    /// by hand.
    pub hold_ms: Option<u64>,
}

/// What a rollout will do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub strategy: Strategy,
    pub steps: Vec<Step>,
    /// Consecutive failing verdicts that roll back.
    pub failure_limit: u32,
    /// Consecutive inconclusive verdicts before pausing for a human.
    pub max_inconclusive: u32,
    /// Blue-green: how long after the switch the stable stays warm and analysis continues.
    pub rollback_window_ms: u64,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Progressing,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl State {
    /// The state's name in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Progressing => "progressing",
            State::Paused => "paused",
            State::Promoted => "promoted",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
        }
    }

    /// Every state.
    pub const ALL: [State; 6] = [
        State::Pending,
        State::Progressing,
        State::Paused,
        State::Promoted,
        State::RolledBack,
        State::Aborted,
    ];

    /// Parses [`State::as_str`].
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// The moving part of a rollout, stored after every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub state: State,
    /// Index into the plan's steps.
    pub step: usize,
    /// Percent served by the candidate now (shadow: percent copied).
    pub weight: f64,
    /// When the current step began (ms on the caller's clock).
    pub step_started_ms: u64,
    /// A passing verdict was seen in this step.
    pub step_passed: bool,
    pub consecutive_failures: u32,
    pub consecutive_inconclusive: u32,
    /// Blue-green: the switch happened and the rollback window runs until this time.
    pub window_until_ms: Option<u64>,
}

impl Progress {
    /// A rollout that has not started.
    pub fn new() -> Progress {
        Progress {
            state: State::Pending,
            step: 0,
            weight: 0.0,
            step_started_ms: 0,
            step_passed: false,
            consecutive_failures: 0,
            consecutive_inconclusive: 0,
            window_until_ms: None,
        }
    }

    /// Nothing is left to judge: rolled back, aborted, or promoted with no rollback window open.
    pub fn is_done(&self) -> bool {
        match self.state {
            State::RolledBack | State::Aborted => true,
            State::Promoted => self.window_until_ms.is_none(),
            _ => false,
        }
    }

    /// Percent of clients' requests the candidate serves now (not counting copies).
    pub fn serving_weight(&self, plan: &Plan) -> f64 {
        match (plan.strategy, self.state) {
            (_, State::RolledBack | State::Aborted) => 0.0,
            (_, State::Promoted) => 100.0,
            (Strategy::Shadow, _) => 0.0,
            _ => self.weight,
        }
    }

    /// Percent of requests copied to the candidate (shadow only).
    pub fn shadow_weight(&self, plan: &Plan) -> f64 {
        match (plan.strategy, self.state) {
            (Strategy::Shadow, State::Progressing | State::Paused) => self.weight,
            _ => 0.0,
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// What moves a rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    Start,
    /// The judge's verdict on the last interval.
    Verdict(Outcome),
    /// Time passed (holds end, rollback windows close).
    Tick,
    Pause,
    Resume,
    /// Straight to 100 % (blue-green's switch; or an operator skipping the remaining steps).
    Promote,
    Abort,
    /// Back to stable at once (an alert, or an operator).
    Rollback,
}

/// Applies `event` at `now_ms`; returns the new progress and whether anything changed.
pub fn advance(plan: &Plan, p: &Progress, event: Event, now_ms: u64) -> (Progress, bool) {
    let mut n = p.clone();
    match (p.state, event) {
        (State::Pending, Event::Start) => {
            n.state = State::Progressing;
            enter_step(plan, &mut n, 0, now_ms);
        }
        (State::Progressing | State::Paused | State::Pending, Event::Abort) => {
            n.state = State::Aborted;
            n.weight = 0.0;
        }
        (State::Promoted, Event::Rollback | Event::Abort) if p.window_until_ms.is_some() => {
            n.state = State::RolledBack;
            n.weight = 0.0;
            n.window_until_ms = None;
        }
        (State::Progressing | State::Paused, Event::Rollback) => {
            n.state = State::RolledBack;
            n.weight = 0.0;
        }
        (State::Progressing, Event::Pause) => n.state = State::Paused,
        (State::Paused, Event::Resume) => {
            n.state = State::Progressing;
            n.consecutive_inconclusive = 0;
            // A step held for a manual resume moves on when resumed.
            if plan.steps.get(p.step).is_some_and(|s| s.hold_ms.is_none()) && p.step_passed {
                next_step(plan, &mut n, now_ms);
            }
        }
        (State::Progressing | State::Paused, Event::Promote) => promote(plan, &mut n, now_ms),
        (State::Progressing, Event::Verdict(o)) => verdict(plan, &mut n, o, now_ms),
        (State::Promoted, Event::Verdict(Outcome::Fail)) if p.window_until_ms.is_some() => {
            n.consecutive_failures += 1;
            if n.consecutive_failures >= plan.failure_limit.max(1) {
                n.state = State::RolledBack;
                n.weight = 0.0;
                n.window_until_ms = None;
            }
        }
        (State::Promoted, Event::Verdict(_)) if p.window_until_ms.is_some() => {
            n.consecutive_failures = 0;
        }
        (State::Promoted, Event::Tick) if p.window_until_ms.is_some_and(|u| now_ms >= u) => {
            n.window_until_ms = None;
        }
        (State::Progressing, Event::Tick) => {
            let held = plan.steps.get(p.step).and_then(|s| s.hold_ms);
            if let Some(hold) = held {
                if p.step_passed && now_ms.saturating_sub(p.step_started_ms) >= hold {
                    next_step(plan, &mut n, now_ms);
                }
            }
        }
        _ => {}
    }
    let changed = n != *p;
    (n, changed)
}

fn verdict(plan: &Plan, n: &mut Progress, o: Outcome, now_ms: u64) {
    match o {
        Outcome::Fail => {
            n.consecutive_failures += 1;
            n.consecutive_inconclusive = 0;
            if n.consecutive_failures >= plan.failure_limit.max(1) {
                n.state = State::RolledBack;
                n.weight = 0.0;
            }
        }
        Outcome::Inconclusive => {
            n.consecutive_inconclusive += 1;
            if n.consecutive_inconclusive > plan.max_inconclusive {
                n.state = State::Paused;
            }
        }
        Outcome::Pass => {
            n.consecutive_failures = 0;
            n.consecutive_inconclusive = 0;
            n.step_passed = true;
            let hold = plan.steps.get(n.step).and_then(|s| s.hold_ms);
            match hold {
                Some(h) if now_ms.saturating_sub(n.step_started_ms) >= h => {
                    next_step(plan, n, now_ms)
                }
                // Held for a human: pause at a passing step until resumed.
                None if plan.strategy != Strategy::BlueGreen => n.state = State::Paused,
                _ => {}
            }
        }
    }
}

fn enter_step(plan: &Plan, n: &mut Progress, step: usize, now_ms: u64) {
    n.step = step;
    n.weight = match plan.strategy {
        // Blue-green serves the candidate only to previews until the switch.
        Strategy::BlueGreen => 0.0,
        _ => plan.steps.get(step).map_or(100.0, |s| s.weight),
    };
    n.step_started_ms = now_ms;
    n.step_passed = false;
    n.consecutive_failures = 0;
    n.consecutive_inconclusive = 0;
}

fn next_step(plan: &Plan, n: &mut Progress, now_ms: u64) {
    if plan.strategy == Strategy::BlueGreen || n.step + 1 >= plan.steps.len() {
        promote(plan, n, now_ms);
    } else {
        enter_step(plan, n, n.step + 1, now_ms);
    }
}

fn promote(plan: &Plan, n: &mut Progress, now_ms: u64) {
    n.state = State::Promoted;
    n.weight = 100.0;
    n.consecutive_failures = 0;
    n.consecutive_inconclusive = 0;
    n.step_started_ms = now_ms;
    n.window_until_ms = (plan.strategy == Strategy::BlueGreen && plan.rollback_window_ms > 0)
        .then(|| now_ms + plan.rollback_window_ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, prop_oneof, proptest, Just};

    fn plan(strategy: Strategy, holds: &[Option<u64>]) -> Plan {
        Plan {
            strategy,
            steps: holds
                .iter()
                .enumerate()
                .map(|(i, &hold_ms)| Step {
                    weight: [5.0, 25.0, 50.0][i % 3],
                    hold_ms,
                })
                .collect(),
            failure_limit: 2,
            max_inconclusive: 3,
            rollback_window_ms: 60_000,
        }
    }

    fn run(plan: &Plan, events: &[(Event, u64)]) -> Progress {
        events
            .iter()
            .fold(Progress::new(), |p, &(e, at)| advance(plan, &p, e, at).0)
    }

    #[test]
    fn a_canary_walks_its_steps_and_promotes() {
        let plan = plan(Strategy::Canary, &[Some(10), Some(10)]);
        let p = run(
            &plan,
            &[(Event::Start, 0), (Event::Verdict(Outcome::Pass), 5)],
        );
        assert_eq!((p.state, p.step, p.weight), (State::Progressing, 0, 5.0));
        let p = advance(&plan, &p, Event::Tick, 10).0;
        assert_eq!((p.step, p.weight), (1, 25.0));
        let p = advance(&plan, &p, Event::Verdict(Outcome::Pass), 25).0;
        assert_eq!((p.state, p.weight), (State::Promoted, 100.0));
        assert!(p.is_done());
    }

    #[test]
    fn consecutive_failures_roll_back_and_a_pass_resets_them() {
        let plan = plan(Strategy::Canary, &[Some(1000)]);
        let fail = Event::Verdict(Outcome::Fail);
        let pass = Event::Verdict(Outcome::Pass);
        let p = run(&plan, &[(Event::Start, 0), (fail, 1), (pass, 2), (fail, 3)]);
        assert_eq!(p.state, State::Progressing);
        let p = advance(&plan, &p, fail, 4).0;
        assert_eq!((p.state, p.serving_weight(&plan)), (State::RolledBack, 0.0));
    }

    #[test]
    fn a_step_without_hold_waits_for_resume() {
        let plan = plan(Strategy::Canary, &[None, Some(10)]);
        let p = run(
            &plan,
            &[(Event::Start, 0), (Event::Verdict(Outcome::Pass), 5)],
        );
        assert_eq!(p.state, State::Paused);
        let p = advance(&plan, &p, Event::Resume, 6).0;
        assert_eq!((p.state, p.step, p.weight), (State::Progressing, 1, 25.0));
    }

    #[test]
    fn blue_green_switches_at_once_and_can_switch_back_in_its_window() {
        let plan = plan(Strategy::BlueGreen, &[]);
        let p = run(
            &plan,
            &[(Event::Start, 0), (Event::Verdict(Outcome::Pass), 5)],
        );
        assert_eq!(
            (p.state, p.serving_weight(&plan)),
            (State::Progressing, 0.0)
        );
        let p = advance(&plan, &p, Event::Promote, 10).0;
        assert_eq!((p.state, p.serving_weight(&plan)), (State::Promoted, 100.0));
        assert_eq!(p.window_until_ms, Some(60_010));
        let p = advance(&plan, &p, Event::Verdict(Outcome::Fail), 20).0;
        let back = advance(&plan, &p, Event::Verdict(Outcome::Fail), 30).0;
        assert_eq!(
            (back.state, back.serving_weight(&plan)),
            (State::RolledBack, 0.0)
        );
        // After the window the switch is final.
        let closed = advance(&plan, &p, Event::Tick, 60_010).0;
        assert!(closed.is_done());
        let still = advance(&plan, &closed, Event::Rollback, 60_020).0;
        assert_eq!(still.state, State::Promoted);
    }

    #[test]
    fn shadow_copies_but_never_serves_until_promoted() {
        let plan = plan(Strategy::Shadow, &[Some(10)]);
        let p = run(&plan, &[(Event::Start, 0)]);
        assert_eq!(
            (p.serving_weight(&plan), p.shadow_weight(&plan)),
            (0.0, 5.0)
        );
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Start),
            Just(Event::Verdict(Outcome::Pass)),
            Just(Event::Verdict(Outcome::Fail)),
            Just(Event::Verdict(Outcome::Inconclusive)),
            Just(Event::Tick),
            Just(Event::Pause),
            Just(Event::Resume),
            Just(Event::Promote),
            Just(Event::Abort),
            Just(Event::Rollback),
        ]
    }

    proptest! {
        /// Whatever happens, the weight stays in 0–100, a rolled-back or aborted rollout serves
        /// nothing and never moves again, and a canary's weight only falls by rolling back.
        #[test]
        fn any_sequence_keeps_the_invariants(events in proptest::collection::vec((event(), 0u64..50), 0..60)) {
            let plan = plan(Strategy::Canary, &[Some(20), None, Some(20)]);
            let mut p = Progress::new();
            let mut now = 0;
            for (e, dt) in events {
                now += dt;
                let (n, _) = advance(&plan, &p, e, now);
                prop_assert!((0.0..=100.0).contains(&n.weight));
                if matches!(p.state, State::RolledBack | State::Aborted) {
                    prop_assert_eq!(&n, &p);
                }
                if matches!(n.state, State::RolledBack | State::Aborted) {
                    prop_assert_eq!(n.serving_weight(&plan), 0.0);
                } else if p.state != State::Pending {
                    prop_assert!(n.weight >= p.weight);
                }
                p = n;
            }
        }
    }
}
