//! The cost per proxied request, side by side with nginx in one run: CPU per request and RSS
//! under 50-connection load with Pylon's defaults (request log and metrics on), added p99 at
//! concurrency 1, and CPU per request for 4 KiB and 64 KiB prompts with a tokens-per-minute
//! limit on.

use std::time::Duration;

use bytes::Bytes;

use crate::load::{self, Endpoint};
use crate::procs::{cpu_seconds, rss_mib};

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

/// Runs `concurrency` closed-loop workers against each proxy; prints req/s, p50/p99, CPU per
/// request and the RSS seen while the load ran.
pub async fn run(
    title: &str,
    vias: &[Via],
    body: Bytes,
    concurrency: usize,
    d: Duration,
) -> Vec<(&'static str, f64, f64, Option<f64>)> {
    println!("\n{title}:");
    println!(
        "  {:<14} {:>9} {:>9} {:>9} {:>12} {:>10} {:>7}",
        "via", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "RSS MiB", "errors"
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
        let load = {
            let (client, to, body) = (client.clone(), v.to.clone(), body.clone());
            tokio::spawn(async move { load::closed_loop(&client, &to, body, concurrency, d).await })
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
            "  {:<14} {:>9.0} {:>9.0} {:>9.0} {:>12} {:>10} {:>7}",
            v.name,
            o.rps(),
            o.p(0.5),
            o.p(0.99),
            cpu.map_or("-".to_owned(), |c| format!("{c:.1}")),
            rss.map_or("-".to_owned(), |r| format!("{r:.1}")),
            o.errors
        );
        out.push((v.name, o.p(0.5), o.p(0.99), cpu));
    }
    out
}

/// Prints each proxy's figure against the direct and nginx rows of the same table; returns
/// (proxy, CPU per request as a multiple of nginx's, added p99 in µs) for each proxy row.
pub fn compare(
    rows: &[(&'static str, f64, f64, Option<f64>)],
) -> Vec<(&'static str, Option<f64>, f64)> {
    let get = |name: &str| rows.iter().find(|r| r.0 == name);
    let (Some(direct), Some(nginx)) = (get("direct"), get("nginx")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.0 != "direct") {
        let ratio = match (r.3, nginx.3) {
            (Some(p), Some(n)) if n > 0.0 => Some(p / n),
            _ => None,
        };
        let added_p99 = r.2 - direct.2;
        println!(
            "  {:<14} added p50 {:+7.0} µs, p99 {:+7.0} µs   {}",
            r.0,
            r.1 - direct.1,
            added_p99,
            ratio.map_or(String::new(), |x| format!("{x:.2}× nginx CPU"))
        );
        out.push((r.0, ratio, added_p99));
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
