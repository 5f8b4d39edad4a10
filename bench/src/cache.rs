//! Response-cache figures: an exact hit's latency end to end on loopback, and memory per 10,000
//! cached answers.

use std::time::Duration;

use bytes::Bytes;

use crate::load::{self, Endpoint};
use crate::procs::rss_mib;
use crate::procs::wait_ready;
use crate::{Args, SpawnPylon};

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

/// The semantic cache's vector search: `n` cached questions of `dims` dimensions in one context,
/// then 1,000 lookups; prints build time, lookup p50/p99 and the index's memory.
pub fn semantic(n: usize, dims: usize) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut vector = || {
        let mut v: Vec<f32> = (0..dims)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect();
        let norm = v
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::EPSILON);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    };
    let vectors: Vec<Vec<f32>> = (0..n).map(|_| vector()).collect();
    let queries: Vec<Vec<f32>> = (0..1000).map(|_| vector()).collect();
    let (rss0, _) = rss_mib(std::process::id());
    let index = pylon_proxy::VectorIndex::new(n);
    let started = std::time::Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for chunk in vectors.chunks(n.div_ceil(threads)) {
            let index = &index;
            s.spawn(move || {
                for (i, v) in chunk.iter().enumerate() {
                    index.insert(v, format!("entry-{i}"));
                }
            });
        }
    });
    let built = started.elapsed();
    let (rss1, _) = rss_mib(std::process::id());
    let mut times: Vec<u128> = queries
        .iter()
        .map(|q| {
            let t = std::time::Instant::now();
            let _ = index.nearest(q, 4);
            t.elapsed().as_micros()
        })
        .collect();
    times.sort_unstable();
    println!(
        "semantic index: {n} entries of {dims} dims built in {:.1} s; lookup p50 {} µs, p99 {} µs; index RSS {:.0} MiB (vectors alone {:.0} MiB)",
        built.as_secs_f64(),
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        rss1 - rss0,
        (n * dims * 4) as f64 / (1024.0 * 1024.0)
    );
}

/// The semantic-cache guards' cost: facets of a question (once per lookup) and one check (per
/// candidate), over the quality bench's questions, and facets of the longest question compared.
pub fn guards() {
    use pylon_policy::guard::{check, Facets};
    let pairs: Vec<(&str, &str)> = include_str!("../semantic/pairs.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split('\t').skip(2);
            Some((f.next()?, f.next()?))
        })
        .collect();
    let rounds = 200;
    let started = std::time::Instant::now();
    let mut facets = Vec::new();
    for _ in 0..rounds {
        facets = pairs
            .iter()
            .map(|(a, b)| (Facets::of(a), Facets::of(b)))
            .collect();
    }
    let extract = started.elapsed().as_secs_f64() * 1e6 / (rounds * pairs.len() * 2) as f64;
    let started = std::time::Instant::now();
    let mut refused = 0;
    for _ in 0..rounds * 10 {
        refused = facets.iter().filter(|(a, b)| check(a, b).is_err()).count();
    }
    let per_check = started.elapsed().as_secs_f64() * 1e6 / (rounds * 10 * facets.len()) as f64;
    let long: String = pairs
        .iter()
        .map(|(a, _)| *a)
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(2_000)
        .collect();
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(Facets::of(&long));
    }
    let long_us = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    println!(
        "semantic guards: facets of a question {extract:.1} µs (a 2,000-character one {long_us:.0} µs), one candidate check {per_check:.2} µs ({} pairs, {refused} refused)",
        pairs.len()
    );
}

/// The response cache's figures, through a Pylon with the cache on and the request log off
/// (so its memory figure is the cache's), then the semantic index on its own.
pub(crate) async fn run(args: &Args, spawn_pylon: &SpawnPylon<'_>) -> anyhow::Result<()> {
    let (port, p) = spawn_pylon(
        "pylon-cache",
        "[auth]\nmode = \"none\"\n[limits]\nip_rpm = 0\n[cache]\nenabled = true\n[request_log]\nenabled = false\n",
    )?;
    wait_ready(
        &format!("http://127.0.0.1:{port}/livez"),
        Duration::from_secs(10),
    )
    .await?;
    let to = Endpoint {
        url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
        bearer: None,
    };
    figures(
        &to,
        p.pid(),
        Duration::from_secs(args.seconds),
        args.cache_entries,
    )
    .await?;
    semantic(args.semantic_entries, args.semantic_dims);
    guards();
    Ok(())
}
