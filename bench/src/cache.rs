//! Response-cache figures: an exact hit's latency end to end on loopback, and memory per 10,000
//! cached answers.

use std::time::Duration;

use bytes::Bytes;

use crate::load::{self, Endpoint};
use crate::procs::rss_mib;

/// Measures hits at concurrency 1 and the memory that `entries` distinct answers take.
pub async fn figures(to: &Endpoint, pid: u32, d: Duration, entries: usize) -> anyhow::Result<()> {
    let body = Bytes::from_static(
        br#"{"model":"bench","temperature":0,"messages":[{"role":"user","content":"cache bench"}]}"#,
    );
    let client = load::client(64);
    // The first request stores the answer; everything after is a hit.
    let _ = load::closed_loop(&client, to, body.clone(), 1, Duration::from_millis(300)).await;
    let o = load::closed_loop(&client, to, body, 1, d).await;
    println!(
        "\nresponse cache: exact hit, concurrency 1: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs end to end ({} errors)",
        o.rps(),
        o.p(0.5),
        o.p(0.99),
        o.errors
    );
    let (before, _) = rss_mib(pid);
    let mut sent = 0;
    while sent < entries {
        let batch: Vec<Bytes> = (sent..(sent + 64).min(entries))
            .map(|i| {
                Bytes::from(format!(
                    r#"{{"model":"bench","temperature":0,"messages":[{{"role":"user","content":"distinct question number {i}"}}]}}"#
                ))
            })
            .collect();
        sent += batch.len();
        let calls: Vec<_> = batch.iter().map(|b| load::one(&client, to, b)).collect();
        for r in futures_util::future::join_all(calls).await {
            anyhow::ensure!(r.is_some(), "a request failed while filling the cache");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (after, _) = rss_mib(pid);
    println!(
        "response cache: {entries} distinct answers held: RSS {before:.1} → {after:.1} MiB ({:.1} MiB per 10,000 entries)",
        (after - before) * 10_000.0 / entries as f64
    );
    Ok(())
}
