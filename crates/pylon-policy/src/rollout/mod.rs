//! Rollouts: the judge's statistics and the state machine, both pure so they can be simulated
//! on an injected clock.

pub mod judge;
pub mod machine;

#[cfg(test)]
mod simulation;

pub use judge::{judge, ArmWindow, Check, Criteria, Histogram, Outcome, Verdict};
pub use machine::{advance, Event, Plan, Progress, State, Step, Strategy};
