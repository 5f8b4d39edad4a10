//! The generic cell rate algorithm: exact rate limits from one number of state per bucket.
//!
//! A bucket allowing `limit` units per `period` remembers its theoretical arrival time (TAT).
//! A request of `cost` units is allowed when, after adding `cost × interval` to the TAT, the TAT
//! is at most one `period` ahead of now. Pure: time is passed in, in milliseconds.

/// A limit: `limit` units per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub limit: u64,
    pub period_ms: f64,
}

impl Rate {
    /// Units per minute.
    pub fn per_minute(limit: u64) -> Self {
        Rate {
            limit: limit.max(1),
            period_ms: 60_000.0,
        }
    }

    /// Milliseconds one unit occupies.
    pub fn interval(&self) -> f64 {
        self.period_ms / self.limit.max(1) as f64
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// The TAT to store when allowed (unchanged state otherwise).
    pub new_tat: f64,
    /// Units still available right after this request.
    pub remaining: u64,
    /// Milliseconds until this request would be allowed (0 when allowed).
    pub retry_after_ms: f64,
    /// Milliseconds until the bucket is completely empty again.
    pub reset_ms: f64,
}

/// Checks `cost` units against a bucket whose stored TAT is `tat` (None: never used).
/// A cost above the limit is capped at the limit, so an oversized request waits for a full,
/// idle bucket instead of being refused forever.
pub fn check(rate: Rate, tat: Option<f64>, now: f64, cost: u64) -> Decision {
    let interval = rate.interval();
    let cost = cost.min(rate.limit) as f64;
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + cost * interval;
    let ahead = new_tat - now;
    if ahead > rate.period_ms + 1e-6 {
        let used = tat - now;
        return Decision {
            allowed: false,
            new_tat: tat,
            remaining: remaining(rate, used),
            retry_after_ms: ahead - rate.period_ms,
            reset_ms: used,
        };
    }
    Decision {
        allowed: true,
        new_tat,
        remaining: remaining(rate, ahead),
        retry_after_ms: 0.0,
        reset_ms: ahead,
    }
}

fn remaining(rate: Rate, ahead: f64) -> u64 {
    ((rate.period_ms - ahead) / rate.interval())
        .floor()
        .max(0.0) as u64
}

/// Moves a TAT by a correction of `delta` units (negative: refund), never below `now`.
pub fn adjust(rate: Rate, tat: f64, now: f64, delta: i64) -> f64 {
    (tat.max(now) + delta as f64 * rate.interval()).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_limit_requests_per_period_then_spaced() {
        let rate = Rate::per_minute(10);
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..25 {
            let d = check(rate, tat, 0.0, 1);
            if d.allowed {
                allowed += 1;
                tat = Some(d.new_tat);
            }
        }
        assert_eq!(allowed, 10, "a burst gets exactly the limit");
        let d = check(rate, tat, 0.0, 1);
        assert!(!d.allowed);
        assert!(
            (d.retry_after_ms - 6_000.0).abs() < 1e-6,
            "one slot frees every 6 s: {}",
            d.retry_after_ms
        );
        assert!(check(rate, tat, 6_000.0, 1).allowed);
    }

    #[test]
    fn never_more_than_burst_plus_refill() {
        // Property: between any two allowed requests at times t0 ≤ t1, at most
        // `limit + (t1 - t0) / interval` requests were allowed (a full bucket plus its refill).
        let rate = Rate::per_minute(7);
        let mut seed: u64 = 42;
        let mut times = Vec::new();
        let mut now = 0.0;
        let mut tat = None;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += (seed % 3_000) as f64;
            let d = check(rate, tat, now, 1);
            if d.allowed {
                tat = Some(d.new_tat);
                times.push(now);
            }
        }
        assert!(times.len() > 100);
        for (i, &t0) in times.iter().enumerate().step_by(7) {
            for (j, &t1) in times.iter().enumerate().skip(i) {
                let bound = 7.0 + (t1 - t0) / rate.interval();
                assert!(
                    ((j - i + 1) as f64) <= bound + 1e-9,
                    "{} allowed in [{t0}, {t1}]",
                    j - i + 1
                );
            }
        }
    }

    #[test]
    fn costs_and_refunds() {
        let rate = Rate::per_minute(1_000);
        let d = check(rate, None, 0.0, 600);
        assert!(d.allowed);
        assert_eq!(d.remaining, 400);
        assert!(!check(rate, Some(d.new_tat), 0.0, 500).allowed);
        let refunded = adjust(rate, d.new_tat, 0.0, -300);
        assert!(
            check(rate, Some(refunded), 0.0, 500).allowed,
            "actual usage was lower"
        );
        assert!(
            check(rate, None, 0.0, 5_000).allowed,
            "oversized cost waits for an idle bucket, not forever"
        );
    }
}
