//! Per-target health: circuit breaker (closed → open → half-open), Retry-After cool-down,
//! in-flight count and latency average. Time is passed in, so tests drive it with fake instants.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether a target may be tried now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Availability {
    /// Go ahead; hold the permit until the attempt has a verdict (it may be the half-open probe).
    Ready(Permit),
    /// The provider asked us to wait (Retry-After) until then.
    CoolingUntil(Instant),
    /// The breaker is open (or its half-open probe is out).
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probe` is the number of the probe out, if one is.
    HalfOpen {
        probe: Option<u64>,
    },
}

/// A breaker's state for metrics and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breaker {
    Closed,
    HalfOpen,
    Open,
}

impl Breaker {
    /// The `pylon_circuit_breaker_state` value.
    pub fn gauge(self) -> i64 {
        match self {
            Breaker::Closed => 0,
            Breaker::HalfOpen => 1,
            Breaker::Open => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Breaker::Closed => "closed",
            Breaker::HalfOpen => "half-open",
            Breaker::Open => "open",
        }
    }
}

/// Breaker thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub failures: u32,
    pub cooldown: Duration,
}

/// Health of one target.
#[derive(Debug)]
pub(crate) struct Health {
    policy: Policy,
    state: Mutex<(State, Option<Instant>)>,
    /// Numbers half-open probes, so a late permit never releases a newer probe.
    probes: AtomicU64,
    in_flight: AtomicU32,
    /// Exponentially weighted time to first byte in microseconds; 0 = no sample yet.
    ewma_us: AtomicU64,
}

impl Health {
    pub fn new(policy: Policy) -> Self {
        Health {
            policy,
            state: Mutex::new((State::Closed { failures: 0 }, None)),
            probes: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
        }
    }

    /// May a request go to this target now? Claims the half-open probe when it says `Ready`;
    /// the permit gives the probe back if it is dropped without a verdict (an encoding error,
    /// a client that went away), so a cancelled probe never keeps the target out of rotation.
    pub fn check(self: &Arc<Self>, now: Instant) -> Availability {
        let Ok(mut guard) = self.state.lock() else {
            return Availability::Ready(Permit::plain(self));
        };
        let (state, cool) = &mut *guard;
        match *state {
            State::Open { until } if now < until => return Availability::Open,
            State::Open { .. } => *state = State::HalfOpen { probe: None },
            _ => {}
        }
        if let Some(until) = *cool {
            if now < until {
                return Availability::CoolingUntil(until);
            }
            *cool = None;
        }
        match state {
            State::HalfOpen { probe: Some(_) } => Availability::Open,
            State::HalfOpen { probe } => {
                let n = self.probes.fetch_add(1, Ordering::Relaxed) + 1;
                *probe = Some(n);
                Availability::Ready(Permit {
                    health: self.clone(),
                    probe: Some(n),
                })
            }
            State::Closed { .. } | State::Open { .. } => Availability::Ready(Permit::plain(self)),
        }
    }

    /// A call succeeded: the breaker closes.
    pub fn success(&self, ttfb: Duration) {
        if let Ok(mut g) = self.state.lock() {
            g.0 = State::Closed { failures: 0 };
        }
        let sample = ttfb.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            (old * 4 + sample) / 5
        };
        self.ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    /// A call failed in a way that says the target is unhealthy.
    pub fn failure(&self, now: Instant) {
        let Ok(mut g) = self.state.lock() else { return };
        g.0 = match g.0 {
            State::Closed { failures } if failures + 1 < self.policy.failures => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: now + self.policy.cooldown,
            },
        };
    }

    /// The provider asked for a pause (429/503 with Retry-After); not a health failure.
    pub fn cool_down(&self, until: Instant) {
        if let Ok(mut g) = self.state.lock() {
            if let State::HalfOpen { probe: Some(_) } = g.0 {
                g.0 = State::HalfOpen { probe: None };
            }
            g.1 = Some(g.1.map_or(until, |u| u.max(until)));
        }
    }

    /// Releases a half-open probe that ended without a verdict (e.g. a non-retryable 4xx).
    pub fn neutral(&self) {
        if let Ok(mut g) = self.state.lock() {
            if let State::HalfOpen { probe: Some(_) } = g.0 {
                g.0 = State::HalfOpen { probe: None };
            }
        }
    }

    /// Gives back probe `n` if it is still the one out.
    fn release(&self, n: u64) {
        if let Ok(mut g) = self.state.lock() {
            if g.0 == (State::HalfOpen { probe: Some(n) }) {
                g.0 = State::HalfOpen { probe: None };
            }
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The breaker as operators see it, without claiming a probe.
    pub fn breaker(&self, now: Instant) -> Breaker {
        match self.state.lock().map(|g| g.0) {
            Ok(State::Open { until }) if now < until => Breaker::Open,
            Ok(State::Open { .. } | State::HalfOpen { .. }) => Breaker::HalfOpen,
            _ => Breaker::Closed,
        }
    }

    pub fn latency_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Leave to try a target; releases the half-open probe it may carry when dropped without a
/// verdict (success, failure and neutral verdicts are given on [`Health`]).
#[derive(Debug)]
pub(crate) struct Permit {
    health: Arc<Health>,
    probe: Option<u64>,
}

impl Permit {
    fn plain(health: &Arc<Health>) -> Permit {
        Permit {
            health: health.clone(),
            probe: None,
        }
    }

    /// Whether this permit is the half-open probe.
    #[cfg(test)]
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

impl PartialEq for Permit {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.health, &other.health) && self.probe == other.probe
    }
}

impl Eq for Permit {}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(n) = self.probe {
            self.health.release(n);
        }
    }
}

/// Decrements the in-flight count when dropped (at the end of a response or stream).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Health>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Arc<Health> {
        Arc::new(Health::new(Policy {
            failures: 3,
            cooldown: Duration::from_secs(10),
        }))
    }

    fn ready(a: Availability) -> bool {
        matches!(a, Availability::Ready(_))
    }

    #[test]
    fn opens_after_threshold_then_half_opens_with_one_probe() {
        let h = health();
        let t0 = Instant::now();
        for _ in 0..2 {
            h.failure(t0);
            assert!(ready(h.check(t0)));
        }
        h.failure(t0);
        assert_eq!(h.check(t0 + Duration::from_secs(9)), Availability::Open);
        let later = t0 + Duration::from_secs(10);
        let probe = h.check(later);
        assert!(
            matches!(&probe, Availability::Ready(p) if p.is_probe()),
            "one probe"
        );
        assert_eq!(
            h.check(later),
            Availability::Open,
            "only one probe at a time"
        );
        h.success(Duration::from_millis(5));
        drop(probe);
        assert!(ready(h.check(later)));
        assert!(ready(h.check(later)));
    }

    #[test]
    fn failed_probe_reopens() {
        let h = health();
        let t0 = Instant::now();
        for _ in 0..3 {
            h.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(11);
        let probe = h.check(t1);
        h.failure(t1);
        drop(probe);
        assert_eq!(h.check(t1 + Duration::from_secs(5)), Availability::Open);
        assert!(ready(h.check(t1 + Duration::from_secs(10))));
    }

    #[test]
    fn success_resets_the_count() {
        let h = health();
        let t0 = Instant::now();
        h.failure(t0);
        h.failure(t0);
        h.success(Duration::ZERO);
        h.failure(t0);
        h.failure(t0);
        assert!(ready(h.check(t0)));
    }

    #[test]
    fn cool_down_is_not_a_failure() {
        let h = health();
        let t0 = Instant::now();
        h.cool_down(t0 + Duration::from_secs(2));
        assert_eq!(
            h.check(t0),
            Availability::CoolingUntil(t0 + Duration::from_secs(2))
        );
        assert!(ready(h.check(t0 + Duration::from_secs(2))));
    }

    #[test]
    fn a_dropped_probe_is_given_back() {
        let h = health();
        let t0 = Instant::now();
        for _ in 0..3 {
            h.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        let probe = h.check(t1);
        assert!(matches!(&probe, Availability::Ready(p) if p.is_probe()));
        assert_eq!(h.check(t1), Availability::Open, "the probe is out");
        // The attempt was cancelled before any verdict: the next request may probe.
        drop(probe);
        let again = h.check(t1);
        assert!(matches!(&again, Availability::Ready(p) if p.is_probe()));
    }

    #[test]
    fn a_late_permit_never_releases_a_newer_probe() {
        let h = health();
        let t0 = Instant::now();
        for _ in 0..3 {
            h.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        let first = h.check(t1);
        h.failure(t1); // the first probe failed: open again
        let t2 = t1 + Duration::from_secs(10);
        let second = h.check(t2);
        assert!(matches!(&second, Availability::Ready(p) if p.is_probe()));
        drop(first);
        assert_eq!(
            h.check(t2),
            Availability::Open,
            "the second probe is still out"
        );
        drop(second);
    }
}
