//! Alerting figures: one evaluation round of 200 rules over 2,000 series, in process — the
//! registry gathered, each rule's series read and decided — and the memory the rules' state
//! holds once their history is full.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use pylon_control::alerts::series::{self, Sample};
use pylon_policy::alert::anomaly::{Detector, Direction, Params};
use pylon_policy::alert::burn::Counts;
use pylon_policy::alert::{breaks, Lifecycle};

const MODELS: usize = 100;
const PROVIDERS: usize = 5;
const CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "cancelled"];

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// Fills a registry with 2,000 request series (100 models × 5 providers × 4 classes) plus a
/// latency histogram per model, as a busy gateway's would be.
fn traffic(m: &pylon_telemetry::Metrics, round: u64) {
    for model in 0..MODELS {
        let name = format!("model-{model}");
        for p in 0..PROVIDERS {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = 50 + (round + (model * 7 + p * 3 + c) as u64) % 20;
                m.requests
                    .with_label_values(&["chat", &name, &format!("p{p}"), class])
                    .inc_by(if c == 0 { n * 10 } else { n / 10 });
            }
        }
        for i in 0..20 {
            m.request_duration
                .with_label_values(&["chat", &name])
                .observe(0.1 + f64::from(i) * 0.05);
        }
    }
}

/// The data plane's CPU per request with 200 rules evaluated every second against none.
pub async fn cpu(spawn: &crate::SpawnPylon<'_>, seconds: u64, rounds: usize) -> anyhow::Result<()> {
    let base = "[auth]\nmode = \"none\"\n[limits]\nip_rpm = 0\n";
    let mut rules = format!("{base}[alerting]\nevaluate_every = \"1s\"\n");
    for i in 0..200 {
        let (kind, series, extra) = match i % 4 {
            0 => ("threshold", "error_rate", "above = 0.5"),
            1 => ("anomaly", "requests", "min_rate = 1.0"),
            2 => ("threshold", "latency_p95", "above = 10.0"),
            _ => ("burn-rate", "requests", "objective = 0.999"),
        };
        let series = if kind == "burn-rate" {
            String::new()
        } else {
            format!("series = \"{series}\"\n")
        };
        rules.push_str(&format!(
            "[[alerts]]\nname = \"r{i}\"\nkind = \"{kind}\"\n{series}labels = {{ model = \"bench\" }}\n{extra}\n"
        ));
    }
    let (m, lo, hi) = crate::delivery::cpu_ratio(
        spawn,
        ("no alerting", base),
        ("200 rules every 1 s", &rules),
        std::time::Duration::from_millis(1500),
        seconds,
        rounds,
    )
    .await?;
    println!(
        "  CPU per request with 200 alert rules evaluated every second vs none, median of {rounds} rounds: {m:+.1} % (rounds {lo:+.1} … {hi:+.1} %; goal within 5 %)"
    );
    Ok(())
}

/// Prints the figures.
pub fn figures(rounds: u32) {
    let m = match pylon_telemetry::Metrics::new(false) {
        Ok(m) => m,
        Err(e) => {
            println!("metrics: {e}");
            return;
        }
    };
    let rules: Vec<(String, BTreeMap<String, String>)> = (0..200)
        .map(|i| {
            let series = ["error_rate", "requests", "latency_p95", "errors"][i % 4];
            let labels = BTreeMap::from([("model".to_owned(), format!("model-{}", i % MODELS))]);
            (series.to_owned(), labels)
        })
        .collect();
    let params = Params {
        score: 5.0,
        direction: Direction::Both,
        n: 3,
        m: 5,
        min_rate: 0.0,
    };
    let before = rss_kib();
    // A third of the rules are anomaly rules, a third burn-rate rules, with full history.
    let mut detectors: Vec<Detector> = (0..67).map(|_| Detector::new(params)).collect();
    let mut counts: Vec<Counts> = (0..67).map(|_| Counts::new(60_000)).collect();
    let week = 7 * 24 * 3600 * 1000u64;
    let mut t = 0;
    while t < 4 * week + 3_600_000 {
        for d in &mut detectors {
            d.observe(t, 100.0, 10.0);
        }
        for c in &mut counts {
            c.add(t, 1.0, 100.0);
        }
        t += 15 * 60_000;
    }
    let mut lifecycles = vec![Lifecycle::default(); rules.len()];
    let state_kib = rss_kib().saturating_sub(before);
    traffic(&m, 0);
    let mut prev = Sample::of(&m.gather(), 0);
    let mut gather_ns = 0u128;
    let mut rules_ns = 0u128;
    for round in 1..=rounds {
        traffic(&m, u64::from(round));
        let now = t + u64::from(round) * 10_000;
        let started = Instant::now();
        let cur = Sample::of(&m.gather(), u64::from(round) * 10_000);
        gather_ns += started.elapsed().as_nanos();
        let started = Instant::now();
        for (i, (name, labels)) in rules.iter().enumerate() {
            let r = series::read(name, labels, &prev, &cur);
            let holds = match (i % 3, r) {
                (0, Some(r)) => detectors[i / 3].observe(now, r.value, r.traffic).holds,
                (1, _) => {
                    let (bad, total) = series::failed_and_total(&prev, &cur, labels);
                    let c = &mut counts[i / 3];
                    c.add(now, bad, total);
                    pylon_policy::alert::burn::evaluate(c, 0.999, now).is_some()
                }
                (_, Some(r)) => breaks(r.value, Some(0.05), None),
                _ => false,
            };
            black_box(lifecycles[i].step(holds, now, 60_000));
        }
        rules_ns += started.elapsed().as_nanos();
        prev = cur;
    }
    let per = |ns: u128| ns as f64 / f64::from(rounds) / 1e6;
    println!(
        "alert evaluation, 200 rules over {} request series: gather + sample {:.2} ms, rules {:.2} ms per round ({rounds} rounds; at the default 10 s interval: {:.3} % of one core)",
        MODELS * PROVIDERS * CLASSES.len(),
        per(gather_ns),
        per(rules_ns),
        (per(gather_ns) + per(rules_ns)) / 10_000.0 * 100.0
    );
    println!(
        "alert state with four weeks of history (67 anomaly, 67 burn-rate rules): {:.1} MiB RSS",
        state_kib as f64 / 1024.0
    );
}
