//! The cost per proxied request, side by side with nginx in one run: CPU per request and RSS
//! under 50-connection load with Pylon's defaults (request log and metrics on), added p99 at
//! concurrency 1, and CPU per request for 4 KiB and 64 KiB prompts with a tokens-per-minute
//! limit on.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use crate::load::{self, Endpoint};
use crate::procs::{self, wait_ready};
use crate::procs::{cpu_seconds, rss_mib, thread_cpu_seconds};
use crate::{create_key, free_port, Args, SpawnPylon};

/// One proxy under test: its endpoint and the process to measure (`None`: the mock itself).
#[derive(Clone)]
pub struct Via {
    pub name: &'static str,
    pub to: Endpoint,
    pub pid: Option<u32>,
}

/// A chat request whose user message is `bytes` long.
pub fn body(bytes: usize) -> Bytes {
    let text = "lorem ipsum dolor sit amet ".repeat(bytes / 27 + 1);
    let text = &text[..bytes];
    Bytes::from(format!(
        r#"{{"model":"bench","max_tokens":64,"messages":[{{"role":"user","content":"{text}"}}]}}"#
    ))
}

/// One proxy's figures in one table.
pub struct Row {
    pub via: &'static str,
    /// Latency quantiles in µs: p50, p99, p99.9.
    pub p: [f64; 3],
    /// CPU µs per request of the proxy process (`None` for the direct row).
    pub cpu: Option<f64>,
}

/// Runs `concurrency` closed-loop workers against each proxy; prints req/s, p50/p99/p99.9, CPU
/// per request and the RSS seen while the load ran.
pub async fn run(
    title: &str,
    vias: &[Via],
    body: Bytes,
    concurrency: usize,
    d: Duration,
) -> Vec<Row> {
    println!("\n{title}:");
    println!(
        "  {:<14} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10} {:>7}",
        "via", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "CPU µs/req", "RSS MiB", "errors"
    );
    let mut out = Vec::new();
    for v in vias {
        let client = load::client(1024);
        // Warm every hop's connection pool.
        let _ = load::closed_loop(
            &client,
            &v.to,
            body.clone(),
            concurrency,
            Duration::from_millis(500),
        )
        .await;
        let cpu0 = v.pid.map(cpu_seconds);
        let threads0 = v.pid.map(thread_cpu_seconds);
        let load = {
            let (client, to, body) = (client.clone(), v.to.clone(), body.clone());
            tokio::spawn(async move {
                match concurrency {
                    1 => load::sequential(&to, body, d).await,
                    n => load::closed_loop(&client, &to, body, n, d).await,
                }
            })
        };
        // RSS sampled while the load runs; its peak is the figure.
        let mut rss: Option<f64> = None;
        while !load.is_finished() {
            if let Some(p) = v.pid {
                rss = Some(rss.unwrap_or(0.0).max(rss_mib(p).0));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Ok(o) = load.await else {
            continue;
        };
        let cpu = v
            .pid
            .zip(cpu0)
            .map(|(pid, before)| (cpu_seconds(pid) - before) / o.ok.max(1) as f64 * 1e6);
        println!(
            "  {:<14} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>12} {:>10} {:>7}",
            v.name,
            o.rps(),
            o.p(0.5),
            o.p(0.99),
            o.p(0.999),
            cpu.map_or("-".to_owned(), |c| format!("{c:.1}")),
            rss.map_or("-".to_owned(), |r| format!("{r:.1}")),
            o.errors
        );
        if let (Some(pid), Some(before), true) = (v.pid, threads0, v.name.starts_with("pylon")) {
            print_threads(&before, &thread_cpu_seconds(pid), o.ok.max(1));
        }
        out.push(Row {
            via: v.name,
            p: [o.p(0.5), o.p(0.99), o.p(0.999)],
            cpu,
        });
    }
    out
}

/// Pylon's CPU per request by thread group: the background threads' share is measured far more
/// precisely this way than as a difference of two noisy totals.
fn print_threads(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, requests: u64) {
    let mut parts: Vec<(f64, String)> = after
        .iter()
        .map(|(name, s)| {
            let us = (s - before.get(name).copied().unwrap_or(0.0)) / requests as f64 * 1e6;
            let label = match name.as_str() {
                "pylon-worker" => "data plane",
                "tokio-rt-worker" => "control plane (ledger)",
                "sqlx-sqlite-wor" => "SQLite",
                "pylon-log" => "log writer",
                other => other,
            };
            (us, format!("{label} {us:.1}"))
        })
        .filter(|(us, _)| *us >= 0.05)
        .collect();
    parts.sort_by(|a, b| b.0.total_cmp(&a.0));
    let parts: Vec<String> = parts.into_iter().map(|(_, p)| p).collect();
    println!("  {:<14} by thread, CPU µs/req: {}", "", parts.join(", "));
}

/// Prints each proxy's figure against the direct and nginx rows of the same table; returns
/// (proxy, CPU per request as a multiple of nginx's, added p99 and p99.9 in µs) for each proxy
/// row.
pub fn compare(rows: &[Row]) -> Vec<(&'static str, Option<f64>, [f64; 2])> {
    let get = |name: &str| rows.iter().find(|r| r.via == name);
    let (Some(direct), Some(nginx)) = (get("direct"), get("nginx")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.via != "direct") {
        let ratio = match (r.cpu, nginx.cpu) {
            (Some(p), Some(n)) if n > 0.0 => Some(p / n),
            _ => None,
        };
        let added = [r.p[1] - direct.p[1], r.p[2] - direct.p[2]];
        println!(
            "  {:<14} added p50 {:+7.0} µs, p99 {:+7.0} µs, p99.9 {:+7.0} µs   {}",
            r.via,
            r.p[0] - direct.p[0],
            added[0],
            added[1],
            ratio.map_or(String::new(), |x| format!("{x:.2}× nginx CPU"))
        );
        out.push((r.via, ratio, added));
    }
    out
}

/// The median of `xs` (empty: NaN).
pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

/// CPU per request, RSS under load and added latency with Pylon's defaults next to nginx, then
/// realistic prompt sizes with a tokens-per-minute limit on.
pub(crate) async fn figures(
    args: &Args,
    out: &Path,
    spawn_pylon: &SpawnPylon<'_>,
    mock_port: u16,
    pylon_port: u16,
    pylon_pid: u32,
) -> anyhow::Result<()> {
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    let endpoint = |port: u16, bearer: Option<String>| Endpoint {
        url: url(port),
        bearer,
    };
    let (tpm_port, tpm) = spawn_pylon("pylon-tpm", "[limits]\nip_rpm = 0\n")?;
    wait_ready(
        &format!("http://127.0.0.1:{tpm_port}/livez"),
        Duration::from_secs(10),
    )
    .await?;
    let key = create_key(tpm_port).await?;
    let nginx_port = free_port()?;
    let nginx = if args.no_nginx {
        None
    } else {
        let n = procs::nginx(out, nginx_port, mock_port)?;
        wait_ready(
            &format!("http://127.0.0.1:{nginx_port}/mock/stats"),
            Duration::from_secs(10),
        )
        .await?;
        Some(n)
    };
    let direct = Via {
        name: "direct",
        to: endpoint(mock_port, None),
        pid: None,
    };
    let via_nginx = nginx.as_ref().map(|n| Via {
        name: "nginx",
        to: endpoint(nginx_port, None),
        pid: Some(n.pid()),
    });
    let defaults = Via {
        name: "pylon",
        to: endpoint(pylon_port, None),
        pid: Some(pylon_pid),
    };
    let limited = Via {
        name: "pylon+tpm",
        to: endpoint(tpm_port, Some(key)),
        pid: Some(tpm.pid()),
    };
    let d = Duration::from_secs(args.seconds);
    let tiny = body(5);
    let mut vias = vec![direct, defaults];
    vias.extend(via_nginx);
    // Per (table, proxy): each round's CPU ratio, added p99 and added p99.9.
    type Rounds<'a> = ((&'a str, &'a str), Vec<f64>, Vec<f64>, Vec<f64>);
    let mut seen: Vec<Rounds> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        if args.rounds > 1 {
            println!("\n-- round {round} of {}", args.rounds);
        }
        for (title, conc) in [
            (
                "60-byte body, 50 connections (request log and metrics on)",
                50,
            ),
            ("60-byte body, concurrency 1", 1),
        ] {
            let rows = run(title, &vias, tiny.clone(), conc, d).await;
            for (proxy, ratio, [p99, p999]) in compare(&rows) {
                let i = match seen.iter().position(|s| s.0 == (title, proxy)) {
                    Some(i) => i,
                    None => {
                        seen.push(((title, proxy), Vec::new(), Vec::new(), Vec::new()));
                        seen.len() - 1
                    }
                };
                seen[i].1.extend(ratio);
                seen[i].2.push(p99);
                seen[i].3.push(p999);
            }
        }
    }
    if args.rounds > 1 {
        println!("\nmedians over {} rounds:", args.rounds);
        for ((title, proxy), mut ratios, mut p99s, mut p999s) in seen {
            let (lo, hi) = (
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            );
            println!(
                "  {title}: {proxy:<6} CPU {:.2}× nginx (range {lo:.2}–{hi:.2}), added p99 {:+.0} µs, p99.9 {:+.0} µs",
                median(&mut ratios),
                median(&mut p99s),
                median(&mut p999s),
            );
        }
    }
    vias[1] = limited;
    for size in [4 * 1024, 64 * 1024] {
        let title = format!(
            "{} KiB prompt, 8 connections, key with a tokens-per-minute limit",
            size / 1024
        );
        let rows = run(&title, &vias, body(size), 8, d).await;
        compare(&rows);
    }
    // The request log must keep up with the load it measured, not shed rows to look cheap.
    for (name, port) in [("pylon", pylon_port), ("pylon+tpm", tpm_port)] {
        let dropped = procs::metric(
            &format!("http://127.0.0.1:{port}/metrics"),
            "pylon_request_log_dropped_total",
        )
        .await?;
        println!("\n{name}: request-log rows dropped during the runs: {dropped}");
    }
    Ok(())
}
