//! Thousands of simulated rollouts on an injected clock: how often the judge rolls back a
//! candidate as good as the stable (must be ≤ 1 %), how often it catches one with +5 points of
//! errors or +50 % latency (must be ≥ 99 %), and how long that takes.

use super::*;

/// Simulated traffic: requests per second, interval and steps as in the README's example.
const RPS: f64 = 20.0;
const INTERVAL_MS: u64 = 60_000;

#[derive(Clone, Copy)]
struct Arm {
    error_rate: f64,
    /// Median latency (ms); log-normal with sigma 0.5.
    median_ms: f64,
    cost: f64,
}

const STABLE: Arm = Arm {
    error_rate: 0.01,
    median_ms: 800.0,
    cost: 0.002,
};

fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u, v) = (rng.f64().max(1e-12), rng.f64());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn window(rng: &mut fastrand::Rng, arm: Arm, n: u64) -> ArmWindow {
    let mut w = ArmWindow::default();
    for _ in 0..n {
        let latency = arm.median_ms * (0.5 * normal(rng)).exp();
        let cost = arm.cost * (1.0 + 0.3 * normal(rng)).max(0.1);
        w.record(
            rng.f64() < arm.error_rate,
            latency,
            Some(latency / 4.0),
            cost,
        );
    }
    w
}

fn plan() -> Plan {
    let step = |weight| Step {
        weight,
        hold_ms: Some(5 * INTERVAL_MS),
    };
    Plan {
        strategy: Strategy::Canary,
        steps: vec![step(5.0), step(25.0), step(50.0)],
        failure_limit: 2,
        max_inconclusive: 10,
        rollback_window_ms: 0,
    }
}

fn criteria() -> Criteria {
    Criteria {
        min_requests: 50,
        max_error_rate_increase: Some(0.02),
        max_latency_ratio: Some(1.25),
        max_ttft_ratio: Some(1.25),
        max_cost_ratio: Some(1.5),
        max_error_rate: None,
        max_p95_ms: None,
    }
}

/// Runs one rollout to its end; the final state and when it was reached (ms).
fn run(rng: &mut fastrand::Rng, candidate: Arm) -> (State, u64) {
    let (plan, criteria) = (plan(), criteria());
    let mut now = 0;
    let (mut p, _) = advance(&plan, &Progress::new(), Event::Start, now);
    while !p.is_done() && now < 100 * INTERVAL_MS {
        now += INTERVAL_MS;
        let total = (RPS * INTERVAL_MS as f64 / 1000.0) as u64;
        let to_candidate = (total as f64 * p.weight / 100.0).round() as u64;
        let s = window(rng, STABLE, total - to_candidate);
        let c = window(rng, candidate, to_candidate);
        let v = judge(&s, &c, &criteria);
        (p, _) = advance(&plan, &p, Event::Verdict(v.outcome), now);
        (p, _) = advance(&plan, &p, Event::Tick, now);
    }
    (p.state, now)
}

fn rollbacks(candidate: Arm, runs: u32, seed: u64) -> (f64, f64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rolled = 0;
    let mut delay = 0;
    for _ in 0..runs {
        let (state, at) = run(&mut rng, candidate);
        if state == State::RolledBack {
            rolled += 1;
            delay += at;
        }
    }
    let mean_delay_s = if rolled > 0 {
        delay as f64 / f64::from(rolled) / 1000.0
    } else {
        0.0
    };
    (f64::from(rolled) / f64::from(runs), mean_delay_s)
}

#[test]
fn a_candidate_as_good_as_the_stable_is_rarely_rolled_back() {
    let (rate, _) = rollbacks(STABLE, 1000, 1);
    println!(
        "good candidate: rolled back in {:.2} % of 1000 runs",
        rate * 100.0
    );
    assert!(rate <= 0.01, "{rate}");
}

#[test]
fn five_more_points_of_errors_are_caught() {
    let bad = Arm {
        error_rate: STABLE.error_rate + 0.05,
        ..STABLE
    };
    let (rate, delay) = rollbacks(bad, 500, 2);
    println!(
        "+5 points of errors: rolled back in {:.2} % of 500 runs, after {delay:.0} s on average",
        rate * 100.0
    );
    assert!(rate >= 0.99, "{rate}");
}

#[test]
fn half_again_the_latency_is_caught() {
    let bad = Arm {
        median_ms: STABLE.median_ms * 1.5,
        ..STABLE
    };
    let (rate, delay) = rollbacks(bad, 500, 3);
    println!(
        "+50 % latency: rolled back in {:.2} % of 500 runs, after {delay:.0} s on average",
        rate * 100.0
    );
    assert!(rate >= 0.99, "{rate}");
}

#[test]
fn triple_the_cost_is_caught() {
    let bad = Arm {
        cost: STABLE.cost * 3.0,
        ..STABLE
    };
    let (rate, _) = rollbacks(bad, 200, 4);
    assert!(rate >= 0.99, "{rate}");
}

#[test]
fn too_little_traffic_holds_and_never_fails() {
    let (plan, criteria) = (plan(), criteria());
    let mut rng = fastrand::Rng::with_seed(5);
    let (mut p, _) = advance(&plan, &Progress::new(), Event::Start, 0);
    let bad = Arm {
        error_rate: 0.5,
        ..STABLE
    };
    for i in 1..=10 {
        let v = judge(
            &window(&mut rng, STABLE, 30),
            &window(&mut rng, bad, 3),
            &criteria,
        );
        assert_eq!(v.outcome, Outcome::Inconclusive);
        (p, _) = advance(&plan, &p, Event::Verdict(v.outcome), i * INTERVAL_MS);
        assert_eq!(p.state, State::Progressing);
        assert_eq!(p.step, 0);
    }
    let v = judge(
        &window(&mut rng, STABLE, 30),
        &window(&mut rng, bad, 3),
        &criteria,
    );
    (p, _) = advance(&plan, &p, Event::Verdict(v.outcome), 11 * INTERVAL_MS);
    assert_eq!(
        p.state,
        State::Paused,
        "inconclusive beyond the limit pauses for a human"
    );
}
