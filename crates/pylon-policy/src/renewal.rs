//! When an ACME certificate is renewed and when the renewer looks again: pure, on unix seconds
//! passed in, so every case runs on an injected clock.

use std::time::Duration;

/// First retry after a failed order; doubles per failure up to [`MAX_BACKOFF`]. Public CAs
/// limit failed validations (Let's Encrypt: 5 per name per hour), so retries slow down fast.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait between failed attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How soon an instance without a certificate looks again while another instance orders one.
pub const WAIT_FOR_PEER: Duration = Duration::from_secs(2);

/// The certificate being served, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// `notBefore`, unix seconds.
    pub not_before: i64,
    /// `notAfter`, unix seconds.
    pub not_after: i64,
}

/// When renewal is due: `renew_before` ahead of expiry, or by default when a third of the
/// lifetime is left (30 days of Let's Encrypt's 90, 2 of a 6-day certificate).
pub fn renew_at(served: Served, renew_before: Option<Duration>) -> i64 {
    let lifetime = (served.not_after - served.not_before).max(0);
    let before = renew_before.map_or(lifetime / 3, |d| {
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
    });
    served.not_after.saturating_sub(before)
}

/// Whether to order now.
pub fn due(served: Option<Served>, renew_before: Option<Duration>, now: i64) -> bool {
    served.is_none_or(|s| now >= renew_at(s, renew_before))
}

/// How long to wait after `failures` consecutive failed orders (`failures` ≥ 1).
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    FIRST_BACKOFF.saturating_mul(1u32 << exp).min(MAX_BACKOFF)
}

/// How long until the renewer next looks: soon after failures (backing off), shortly while
/// another instance holds the lease and nothing is served yet, otherwise at the next check or
/// when renewal falls due, whichever is first (never less than a second).
pub fn next_look(
    served: Option<Served>,
    renew_before: Option<Duration>,
    now: i64,
    check_interval: Duration,
    failures: u32,
) -> Duration {
    if failures > 0 {
        return backoff(failures).min(check_interval.max(FIRST_BACKOFF));
    }
    let Some(s) = served else {
        return WAIT_FOR_PEER.min(check_interval);
    };
    let until_due = u64::try_from(renew_at(s, renew_before).saturating_sub(now)).unwrap_or(0);
    check_interval
        .min(Duration::from_secs(until_due))
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400;

    #[test]
    fn a_90_day_certificate_renews_with_30_days_left() {
        let s = Served {
            not_before: 0,
            not_after: 90 * DAY,
        };
        assert_eq!(renew_at(s, None), 60 * DAY);
        assert!(!due(Some(s), None, 60 * DAY - 1));
        assert!(due(Some(s), None, 60 * DAY));
        assert!(due(None, None, 0));
        assert_eq!(
            renew_at(s, Some(Duration::from_secs(7 * DAY as u64))),
            83 * DAY
        );
    }

    #[test]
    fn failures_back_off_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    /// A day-by-day simulation of one 90-day certificate renewed whenever due: the renewer
    /// never lets it expire and never orders before two thirds of its life.
    #[test]
    fn a_simulated_year_renews_every_sixty_days() {
        let check = Duration::from_secs(3600);
        let mut served = Served {
            not_before: 0,
            not_after: 90 * DAY,
        };
        let mut now = 0;
        let mut orders = 0;
        while now < 365 * DAY {
            assert!(now < served.not_after, "expired at {now}");
            if due(Some(served), None, now) {
                assert!(now >= served.not_before + 60 * DAY);
                served = Served {
                    not_before: now,
                    not_after: now + 90 * DAY,
                };
                orders += 1;
            }
            now += i64::try_from(next_look(Some(served), None, now, check, 0).as_secs()).unwrap();
        }
        assert_eq!(orders, 6);
    }

    proptest! {
        /// The next look is never later than the moment renewal falls due (past the one-second
        /// floor) nor later than the check interval.
        #[test]
        fn the_renewer_never_sleeps_past_the_due_time(
            not_before in 0i64..1_000_000,
            life in 1i64..10_000_000,
            now in 0i64..12_000_000,
            check_s in 1u64..100_000,
            before in proptest::option::of(0u64..5_000_000),
        ) {
            let s = Served { not_before, not_after: not_before + life };
            let rb = before.map(Duration::from_secs);
            let check = Duration::from_secs(check_s);
            let wait = next_look(Some(s), rb, now, check, 0);
            prop_assert!(wait <= check.max(Duration::from_secs(1)));
            prop_assert!(wait >= Duration::from_secs(1));
            let woke = now + i64::try_from(wait.as_secs()).unwrap();
            prop_assert!(woke <= renew_at(s, rb).max(now + 1));
        }

        /// Backoff only grows with failures, and stays within its bounds.
        #[test]
        fn backoff_is_monotonic(f in 1u32..1000) {
            prop_assert!(backoff(f) <= backoff(f + 1));
            prop_assert!(backoff(f) >= FIRST_BACKOFF && backoff(f) <= MAX_BACKOFF);
        }
    }
}
