//! In-process admission state: one small lock around plain maps, never held across an await.
//!
//! Every entry expires: a bucket once its TAT is past, a spend counter after its period, a slot
//! count when it returns to zero. Expiry is amortized O(1): each map key has one entry in a
//! queue ordered by when it was last due, and each call looks at a few entries at its front.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::{gcra, Admission, Remaining, Settlement, Verdict};

/// Queue entries looked at per call; more than one per call so expiry outpaces growth.
const SWEEP: usize = 4;

#[derive(Debug, Default)]
struct Maps {
    tats: HashMap<String, f64>,
    slots: HashMap<String, u64>,
    /// Spent micro-dollars and when the counter expires (ms; infinite for lifetime budgets).
    spend: HashMap<String, (i64, f64)>,
    /// (due ms, key) for `tats`, roughly in due order: a key is re-queued when found refreshed.
    tat_queue: VecDeque<(f64, String)>,
    spend_queue: VecDeque<(f64, String)>,
}

impl Maps {
    /// Forgets a few expired buckets and spend counters.
    fn sweep(&mut self, now: f64) {
        for _ in 0..SWEEP {
            let Some((due, _)) = self.tat_queue.front() else {
                break;
            };
            if *due > now {
                break;
            }
            let Some((_, key)) = self.tat_queue.pop_front() else {
                break;
            };
            match self.tats.get(&key).copied() {
                Some(tat) if tat > now => self.tat_queue.push_back((tat, key)),
                Some(_) => {
                    self.tats.remove(&key);
                }
                None => {}
            }
        }
        for _ in 0..SWEEP {
            let Some((due, _)) = self.spend_queue.front() else {
                break;
            };
            if *due > now {
                break;
            }
            if let Some((_, key)) = self.spend_queue.pop_front() {
                if self.spend.get(&key).is_some_and(|(_, exp)| *exp <= now) {
                    self.spend.remove(&key);
                }
            }
        }
    }

    fn set_tat(&mut self, key: &str, tat: f64) {
        if self.tats.insert(key.to_owned(), tat).is_none() {
            self.tat_queue.push_back((tat, key.to_owned()));
        }
    }

    fn add_spend(&mut self, key: &str, micros: i64, expires: f64) {
        match self.spend.get_mut(key) {
            Some(v) => v.0 += micros,
            None => {
                self.spend.insert(key.to_owned(), (micros, expires));
                if expires.is_finite() {
                    self.spend_queue.push_back((expires, key.to_owned()));
                }
            }
        }
    }
}

/// Limits for one instance.
#[derive(Debug, Default)]
pub struct Local {
    maps: Mutex<Maps>,
}

impl Local {
    /// Checks everything, then takes everything, atomically.
    pub fn admit(&self, a: &Admission, now: f64) -> Verdict {
        let Ok(mut m) = self.maps.lock() else {
            return Verdict::Allowed(Vec::new());
        };
        let mut decisions = Vec::with_capacity(a.buckets.len());
        for (index, b) in a.buckets.iter().enumerate() {
            let d = gcra::check(b.rate, m.tats.get(&b.key).copied(), now, b.cost);
            if !d.allowed {
                return Verdict::Limited {
                    index,
                    retry_after_ms: d.retry_after_ms,
                    reset_ms: d.reset_ms,
                };
            }
            decisions.push(d);
        }
        for (index, s) in a.slots.iter().enumerate() {
            if m.slots.get(&s.key).copied().unwrap_or(0) >= s.max {
                return Verdict::Busy { index };
            }
        }
        for (index, c) in a.caps.iter().enumerate() {
            let spent = m.spend.get(&c.key).map_or(0, |v| v.0);
            if spent >= c.limit_micros {
                return Verdict::OverBudget {
                    index,
                    spent_micros: spent,
                };
            }
        }
        for (b, d) in a.buckets.iter().zip(&decisions) {
            m.set_tat(&b.key, d.new_tat);
        }
        for s in &a.slots {
            *m.slots.entry(s.key.clone()).or_default() += 1;
        }
        m.sweep(now);
        Verdict::Allowed(
            decisions
                .iter()
                .map(|d| Remaining {
                    remaining: d.remaining,
                    reset_ms: d.reset_ms,
                })
                .collect(),
        )
    }

    /// Applies corrections, releases slots, adds spend.
    pub fn settle(&self, s: &Settlement, now: f64) {
        let Ok(mut m) = self.maps.lock() else { return };
        for (key, rate, delta) in &s.corrections {
            let tat = m.tats.get(key).copied().unwrap_or(now);
            m.set_tat(key, gcra::adjust(*rate, tat, now, *delta));
        }
        for key in &s.release {
            if let Some(n) = m.slots.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.slots.remove(key);
                }
            }
        }
        for (key, micros, ttl) in &s.spend {
            let expires = if ttl.is_zero() {
                f64::INFINITY
            } else {
                now + ttl.as_secs_f64() * 1000.0
            };
            m.add_spend(key, *micros, expires);
        }
        m.sweep(now);
    }

    /// Raises a spend counter to at least `micros` (it lives `ttl`; zero: forever).
    pub fn seed_spend(&self, key: &str, micros: i64, ttl: std::time::Duration, now: f64) {
        if let Ok(mut m) = self.maps.lock() {
            let expires = if ttl.is_zero() {
                f64::INFINITY
            } else {
                now + ttl.as_secs_f64() * 1000.0
            };
            m.add_spend(key, 0, expires);
            if let Some(v) = m.spend.get_mut(key) {
                v.0 = v.0.max(micros);
            }
        }
    }

    /// Entries held (buckets, slots, spend counters), for tests and metrics.
    pub fn sizes(&self) -> (usize, usize, usize) {
        self.maps
            .lock()
            .map_or((0, 0, 0), |m| (m.tats.len(), m.slots.len(), m.spend.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bucket, Rate, Slot};
    use std::time::Duration;

    #[test]
    fn idle_buckets_spend_and_slots_are_forgotten() {
        let l = Local::default();
        let rate = Rate::per_minute(60);
        // 10,000 distinct clients once each, at t = 0.
        for i in 0..10_000 {
            let a = Admission {
                buckets: vec![Bucket {
                    key: format!("ip:{i}"),
                    rate,
                    cost: 1,
                }],
                slots: vec![Slot {
                    key: format!("k:{i}:conc"),
                    max: 1,
                }],
                ..Admission::default()
            };
            assert!(matches!(l.admit(&a, 0.0), Verdict::Allowed(_)));
            l.settle(
                &Settlement {
                    release: vec![format!("k:{i}:conc")],
                    spend: vec![(format!("k:{i}:spend:d1"), 5, Duration::from_secs(60))],
                    ..Settlement::default()
                },
                0.0,
            );
        }
        let (tats, slots, spend) = l.sizes();
        assert_eq!((tats, slots, spend), (10_000, 0, 10_000));
        // Traffic from one client goes on for two minutes: the idle entries drain away.
        let mut now = 0.0;
        while now < 120_000.0 {
            now += 20.0;
            let a = Admission {
                buckets: vec![Bucket {
                    key: "ip:busy".into(),
                    rate: Rate::per_minute(1_000_000),
                    cost: 1,
                }],
                ..Admission::default()
            };
            l.admit(&a, now);
        }
        let (tats, _, spend) = l.sizes();
        assert!(tats <= 2, "{tats} buckets left");
        assert_eq!(spend, 0);
    }

    #[test]
    fn a_refreshed_bucket_is_kept() {
        let l = Local::default();
        let rate = Rate::per_minute(1);
        let a = Admission {
            buckets: vec![Bucket {
                key: "k".into(),
                rate,
                cost: 1,
            }],
            ..Admission::default()
        };
        assert!(matches!(l.admit(&a, 0.0), Verdict::Allowed(_)));
        // Due at 60 s; admitted again at 61 s (TAT now 121 s): still limited at 62 s.
        assert!(matches!(l.admit(&a, 61_000.0), Verdict::Allowed(_)));
        for t in 0..100 {
            let other = Admission {
                buckets: vec![Bucket {
                    key: format!("o{t}"),
                    rate,
                    cost: 1,
                }],
                ..Admission::default()
            };
            l.admit(&other, 61_500.0);
        }
        assert!(matches!(l.admit(&a, 62_000.0), Verdict::Limited { .. }));
    }
}
