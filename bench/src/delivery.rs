//! Delivery figures: the data plane's cost of a rollout and of flags. In-process: arm
//! assignment and flag evaluation per call. Through a running Pylon: CPU per proxied request
//! with one active rollout against none (alternating rounds), and OFREP evaluation latency at
//! concurrency 1 for one flag and for a bulk of 100.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pylon_policy::bucket::in_candidate;
use pylon_policy::flags::FlagSet;
use serde_json::{json, Map, Value};

use crate::cost;
use crate::load::{self, Endpoint};
use crate::procs::wait_ready;

/// A flag with a targeting rule and a split, as a realistic flag is.
fn flag(i: usize) -> Value {
    json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false, "beta": true},
        "defaultVariant": "off",
        "targeting": {"if": [
            {"ends_with": [{"var": "email"}, "@example.com"]}, "beta",
            {"fractional": [["on", 10 + i % 50], ["off", 90 - i % 50]]}
        ]}
    })
}

/// `n` flags in flagd's format.
pub fn flags_json(n: usize) -> String {
    let flags: Map<String, Value> = (0..n).map(|i| (format!("flag-{i}"), flag(i))).collect();
    json!({ "flags": flags }).to_string()
}

fn per_call(iterations: u32, mut f: impl FnMut(u32)) -> f64 {
    let started = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    started.elapsed().as_secs_f64() * 1e9 / f64::from(iterations)
}

/// Arm assignment and one flag evaluation, in nanoseconds per call.
pub fn micro() {
    let keys: Vec<String> = (0..1024).map(|i| format!("key-{i:08}")).collect();
    let assign = per_call(2_000_000, |i| {
        black_box(in_candidate("chat-v2", &keys[i as usize % 1024], 25.0));
    });
    let set = match FlagSet::parse(&flags_json(100)) {
        Ok(s) => s,
        Err(e) => {
            println!("flag set failed to load: {e}");
            return;
        }
    };
    let contexts: Vec<Map<String, Value>> = keys
        .iter()
        .map(|k| {
            let v = json!({"targetingKey": k, "email": format!("{k}@corp.io")});
            v.as_object().cloned().unwrap_or_default()
        })
        .collect();
    let eval = per_call(200_000, |i| {
        let _ = black_box(set.evaluate("flag-7", &contexts[i as usize % 1024]));
    });
    let keys100: Vec<String> = set.keys().map(str::to_owned).collect();
    let bulk = per_call(2_000, |i| {
        let ctx = &contexts[i as usize % 1024];
        let out: Vec<Value> = keys100
            .iter()
            .filter_map(|k| set.evaluate(k, ctx).ok())
            .map(|r| json!({"value": r.value, "variant": r.variant, "reason": r.reason}))
            .collect();
        black_box(serde_json::to_vec(&out).map(|v| v.len()).unwrap_or(0));
    });
    println!("\ndelivery, in process:");
    println!("  rollout arm assignment (stickiness key → arm): {assign:.0} ns per request");
    println!("  flag evaluation (targeting + fractional):       {eval:.0} ns per flag");
    println!(
        "  together: {:.2} µs per request (goal ≤ 2 µs)",
        (assign + eval) / 1000.0
    );
    println!(
        "  OFREP work: one flag {:.1} µs, a bulk of 100 evaluated and serialized {:.0} µs (goals ≤ 100 µs, ≤ 1 ms)",
        eval / 1000.0,
        bulk / 1000.0
    );
}

/// CPU per proxied request of Pylon with config `b` against `a` (each added to the mock's
/// base), 50 connections, in alternating rounds after `settle`: the median change in percent
/// and the range.
pub async fn cpu_ratio(
    spawn: &crate::SpawnPylon<'_>,
    a: (&'static str, &str),
    b: (&'static str, &str),
    settle: Duration,
    seconds: u64,
    rounds: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let (a_port, a_proc) = spawn(a.0, a.1)?;
    let (b_port, b_proc) = spawn(b.0, b.1)?;
    for port in [a_port, b_port] {
        wait_ready(
            &format!("http://127.0.0.1:{port}/livez"),
            Duration::from_secs(10),
        )
        .await?;
    }
    tokio::time::sleep(settle).await;
    let chat = |port: u16| Endpoint {
        url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
        bearer: None,
    };
    let vias = [
        cost::Via {
            name: a.0,
            to: chat(a_port),
            pid: Some(a_proc.pid()),
        },
        cost::Via {
            name: b.0,
            to: chat(b_port),
            pid: Some(b_proc.pid()),
        },
    ];
    let mut ratios = Vec::new();
    for round in 1..=rounds.max(1) {
        // Alternate which runs first: the machine drifts within a round.
        let order: Vec<cost::Via> = if round % 2 == 0 {
            vias.iter().rev().cloned().collect()
        } else {
            vias.to_vec()
        };
        let rows = cost::run(
            &format!("CPU per request, 50 connections, round {round}"),
            &order,
            cost::body(5),
            50,
            Duration::from_secs(seconds),
        )
        .await;
        let cpu = |name: &str| rows.iter().find(|r| r.via == name).and_then(|r| r.cpu);
        if let (Some(x), Some(y)) = (cpu(a.0), cpu(b.0)) {
            ratios.push(y / x);
        }
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| {
            (l.min(*r), h.max(*r))
        });
    let pct = |r: f64| (r - 1.0) * 100.0;
    Ok((pct(cost::median(&mut ratios)), pct(lo), pct(hi)))
}

/// CPU per request with and without an active rollout, and OFREP latencies.
pub async fn figures(
    spawn: &crate::SpawnPylon<'_>,
    out: &Path,
    seconds: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    micro();
    let base = "[auth]\nmode = \"none\"\n[limits]\nip_rpm = 0\n";
    // The candidate is the same mock model: any CPU difference is the rollout's own work.
    let rollout = format!(
        "{base}\n[[rollouts]]\nname = \"bench-v2\"\nmodel = \"bench\"\nstickiness = \"ip\"\ncandidate = {{ targets = [ {{ provider = \"mock\", model = \"bench\" }} ] }}\nsteps = [ {{ weight = 50 }} ]\n"
    );
    // The rollout starts on the judge's first pass.
    let (m, lo, hi) = cpu_ratio(
        spawn,
        ("no rollout", base),
        ("rollout 50 %", &rollout),
        Duration::from_millis(1500),
        seconds,
        rounds,
    )
    .await?;
    println!(
        "  CPU per request with one active rollout vs none, median of {rounds} rounds: {m:+.1} % (rounds {lo:+.1} … {hi:+.1} %; goal within 5 %)"
    );

    let file = out.join("bench-flags.json");
    std::fs::write(&file, flags_json(100))?;
    let (fl_port, _fl) = spawn(
        "pylon-flags",
        &format!("{base}[flags]\nfile = \"{}\"\n", file.display()),
    )?;
    wait_ready(
        &format!("http://127.0.0.1:{fl_port}/livez"),
        Duration::from_secs(10),
    )
    .await?;
    let client = load::client(8);
    let d = Duration::from_secs(seconds);
    let ctx = Bytes::from_static(br#"{"context":{"targetingKey":"user-42","email":"a@corp.io"}}"#);
    println!("\nOFREP at concurrency 1, end to end on loopback (an upper bound of server time):");
    for (what, path) in [
        ("single flag", "/ofrep/v1/evaluate/flags/flag-7"),
        ("bulk, 100 flags", "/ofrep/v1/evaluate/flags"),
    ] {
        let to = Endpoint {
            url: format!("http://127.0.0.1:{fl_port}{path}"),
            bearer: None,
        };
        let _ = load::closed_loop(&client, &to, ctx.clone(), 1, Duration::from_millis(300)).await;
        let o = load::closed_loop(&client, &to, ctx.clone(), 1, d).await;
        println!(
            "  {what:<16} p50 {:>6.0} µs, p99 {:>6.0} µs, {:.0} req/s ({} errors)",
            o.p(0.5),
            o.p(0.99),
            o.rps(),
            o.errors
        );
    }
    Ok(())
}
