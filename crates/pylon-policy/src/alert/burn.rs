//! SLO burn rates over several windows (the multi-window, multi-burn-rate alerts of Google's
//! SRE workbook): a window pair fires when both its long and its short window burn the error
//! budget at least `factor` times as fast as the objective allows, so a page is both
//! significant (long window) and still happening (short window).

use std::collections::VecDeque;

use serde::Serialize;

/// One window pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    pub name: &'static str,
    pub long_ms: u64,
    pub short_ms: u64,
    pub factor: f64,
    /// Whether it pages (else it is a ticket).
    pub page: bool,
}

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;

/// Fast page (2 % of a 30-day budget in an hour), slow page (5 % in 6 h), ticket (10 % in 3 d).
pub const WINDOWS: [Window; 3] = [
    Window {
        name: "fast",
        long_ms: HOUR,
        short_ms: 5 * MIN,
        factor: 14.4,
        page: true,
    },
    Window {
        name: "slow",
        long_ms: 6 * HOUR,
        short_ms: 30 * MIN,
        factor: 6.0,
        page: true,
    },
    Window {
        name: "ticket",
        long_ms: 72 * HOUR,
        short_ms: 6 * HOUR,
        factor: 1.0,
        page: false,
    },
];

/// The longest window: how much history a burn-rate rule keeps.
pub const SPAN_MS: u64 = 72 * HOUR;

/// Bad and total counts in fixed-width buckets over [`SPAN_MS`]; at most `SPAN_MS / width + 1`
/// buckets (a minute wide: 4,321 buckets, 104 KiB per rule).
#[derive(Debug, Clone)]
pub struct Counts {
    width_ms: u64,
    /// (bucket start, bad, total), oldest first.
    buckets: VecDeque<(u64, f64, f64)>,
}

impl Counts {
    /// Buckets `width_ms` wide (at least a second).
    pub fn new(width_ms: u64) -> Counts {
        Counts {
            width_ms: width_ms.max(1000),
            buckets: VecDeque::new(),
        }
    }

    /// Adds what happened up to `now_ms`.
    pub fn add(&mut self, now_ms: u64, bad: f64, total: f64) {
        let start = now_ms - now_ms % self.width_ms;
        match self.buckets.back_mut() {
            Some(b) if b.0 == start => {
                b.1 += bad;
                b.2 += total;
            }
            _ => self.buckets.push_back((start, bad, total)),
        }
        let cap = (SPAN_MS / self.width_ms + 1) as usize;
        while self.buckets.len() > cap
            || self
                .buckets
                .front()
                .is_some_and(|b| b.0 + SPAN_MS + self.width_ms <= now_ms)
        {
            self.buckets.pop_front();
        }
    }

    /// (bad, total) over the last `window_ms`.
    pub fn sum(&self, now_ms: u64, window_ms: u64) -> (f64, f64) {
        let from = now_ms.saturating_sub(window_ms);
        self.buckets
            .iter()
            .rev()
            .take_while(|b| b.0 + self.width_ms > from)
            .fold((0.0, 0.0), |(bad, total), b| (bad + b.1, total + b.2))
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether nothing was added yet.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// How fast a window burns: the error ratio over what the objective allows.
fn rate(counts: &Counts, now_ms: u64, window_ms: u64, objective: f64) -> Option<f64> {
    let (bad, total) = counts.sum(now_ms, window_ms);
    (total > 0.0).then(|| bad / total / (1.0 - objective))
}

/// A window pair burning too fast.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Burn {
    pub window: Window,
    pub long_rate: f64,
    pub short_rate: f64,
}

/// The most urgent window pair burning too fast, if any.
pub fn evaluate(counts: &Counts, objective: f64, now_ms: u64) -> Option<Burn> {
    WINDOWS.iter().find_map(|w| {
        let long_rate = rate(counts, now_ms, w.long_ms, objective)?;
        let short_rate = rate(counts, now_ms, w.short_ms, objective)?;
        (long_rate >= w.factor && short_rate >= w.factor).then_some(Burn {
            window: *w,
            long_rate,
            short_rate,
        })
    })
}

/// The share of the error budget left over the history held (1: untouched, below 0: overspent).
pub fn budget_left(counts: &Counts, objective: f64, now_ms: u64) -> f64 {
    let (bad, total) = counts.sum(now_ms, SPAN_MS);
    if total == 0.0 {
        return 1.0;
    }
    1.0 - bad / (total * (1.0 - objective))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rps` requests a second with `bad_share` failing, minute by minute, for `minutes`.
    fn feed(c: &mut Counts, from_ms: u64, minutes: u64, rps: f64, bad_share: f64) -> u64 {
        let mut t = from_ms;
        for _ in 0..minutes {
            t += MIN;
            c.add(t, rps * 60.0 * bad_share, rps * 60.0);
        }
        t
    }

    #[test]
    fn a_total_outage_pages_within_minutes_and_a_trickle_only_tickets() {
        let objective = 0.999;
        let mut c = Counts::new(MIN);
        let t = feed(&mut c, 0, 24 * 60, 10.0, 0.0005);
        assert_eq!(evaluate(&c, objective, t), None, "half the budget rate");
        // Everything fails: the fast window pages once 1.44 % of an hour has failed.
        let mut t2 = t;
        let mut paged = None;
        for minute in 1..=10 {
            t2 = feed(&mut c, t2, 1, 10.0, 1.0);
            if let Some(b) = evaluate(&c, objective, t2) {
                paged = Some((minute, b));
                break;
            }
        }
        let (minute, b) = paged.expect("pages");
        assert_eq!(b.window.name, "fast");
        assert!(minute <= 2, "paged after {minute} min");
        // 1.5× the allowed rate for long: a ticket, never a page.
        let mut c = Counts::new(MIN);
        let t = feed(&mut c, 0, 72 * 60, 10.0, 0.0015);
        let b = evaluate(&c, objective, t).expect("a ticket");
        assert_eq!((b.window.name, b.window.page), ("ticket", false));
        assert!(budget_left(&c, objective, t) < 0.0, "overspent");
    }

    #[test]
    fn a_spike_that_stopped_does_not_page() {
        let objective = 0.99;
        let mut c = Counts::new(MIN);
        let t = feed(&mut c, 0, 72 * 60, 10.0, 0.0);
        let t = feed(&mut c, t, 10, 10.0, 1.0);
        assert_eq!(
            evaluate(&c, objective, t).map(|b| b.window.name),
            Some("fast")
        );
        // The short windows are clean again: the long windows alone do not page.
        let t = feed(&mut c, t, 31, 10.0, 0.0);
        assert_eq!(evaluate(&c, objective, t).map(|b| b.window.name), None);
    }

    #[test]
    fn history_is_bounded() {
        let mut c = Counts::new(MIN);
        feed(&mut c, 0, 10 * 24 * 60, 1.0, 0.0);
        assert!(c.len() <= (SPAN_MS / MIN + 1) as usize, "{}", c.len());
    }
}
