//! In-process admission state: one small lock around plain maps, never held across an await.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::{gcra, Admission, Remaining, Settlement, Verdict};

#[derive(Debug, Default)]
struct Maps {
    tats: HashMap<String, f64>,
    slots: HashMap<String, u64>,
    spend: HashMap<String, i64>,
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
            let spent = m.spend.get(&c.key).copied().unwrap_or(0);
            if spent >= c.limit_micros {
                return Verdict::OverBudget {
                    index,
                    spent_micros: spent,
                };
            }
        }
        for (b, d) in a.buckets.iter().zip(&decisions) {
            m.tats.insert(b.key.clone(), d.new_tat);
        }
        for s in &a.slots {
            *m.slots.entry(s.key.clone()).or_default() += 1;
        }
        // Forget idle buckets now and then so memory follows the active key set.
        if m.tats.len() > 100_000 {
            m.tats.retain(|_, tat| *tat > now);
        }
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
            m.tats
                .insert(key.clone(), gcra::adjust(*rate, tat, now, *delta));
        }
        for key in &s.release {
            if let Some(n) = m.slots.get_mut(key) {
                *n = n.saturating_sub(1);
            }
        }
        for (key, micros, _) in &s.spend {
            *m.spend.entry(key.clone()).or_default() += micros;
        }
    }

    /// Raises a spend counter to at least `micros`.
    pub fn seed_spend(&self, key: &str, micros: i64) {
        if let Ok(mut m) = self.maps.lock() {
            let v = m.spend.entry(key.to_owned()).or_default();
            *v = (*v).max(micros);
        }
    }
}
