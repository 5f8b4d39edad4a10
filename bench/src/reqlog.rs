//! Request-log figures: the request path's latency at a fixed rate with the request log on and
//! off, and how fast the admin API answers over 1,000,000 logged requests in SQLite.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pylon_store::{RequestRow, Store};

use crate::load::{self, Endpoint};
use crate::procs::{wait_ready, Proc};
use crate::{free_port, pylon_config, Args, SpawnPylon};

/// Alternates runs at `rate` through a Pylon with the request log on and one with it off.
pub async fn on_vs_off(on: &Endpoint, off: &Endpoint, rate: u32, d: Duration) {
    println!("\nrequest log on vs off, non-stream at {rate} req/s (two runs each, alternating):");
    let body =
        Bytes::from_static(br#"{"model":"bench","messages":[{"role":"user","content":"hello"}]}"#);
    for round in 1..=2 {
        for (name, to) in [("on", on), ("off", off)] {
            let client = load::client(1024);
            let _ =
                load::closed_loop(&client, to, body.clone(), 32, Duration::from_millis(300)).await;
            let o = load::fixed_rate(&client, to, body.clone(), rate, d).await;
            println!(
                "  run {round} log {name:<3}  {:>7.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {}",
                o.rps(),
                o.p(0.5),
                o.p(0.99),
                o.errors
            );
        }
    }
}

/// Fills `data`'s store with `n` requests over the last 30 days (as the writer would).
pub async fn fill(data: &Path, n: usize) -> anyhow::Result<Duration> {
    let store = Store::open_sqlite(data).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let span_ms = 30 * 86_400_000i64;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        let at_ms = now_ms - span_ms + (i as i64 * span_ms / n as i64);
        batch.push(RequestRow {
            at_ms,
            request_id: format!("{i:08x}-bench"),
            key_id: format!("key{}", i % 20),
            user_id: None,
            team_id: Some(format!("team{}", i % 4)),
            route: "/v1/chat/completions".into(),
            model: ["gpt-4o", "claude", "gemini", "mini"][i % 4].into(),
            served_model: Some("served".into()),
            provider: Some(["openai", "anthropic"][i % 2].into()),
            status: if i % 50 == 0 { 502 } else { 200 },
            outcome: "ok".into(),
            error_class: (i % 50 == 0).then(|| "upstream_error".into()),
            error: None,
            latency_ms: 100.0 + (i % 900) as f64,
            ttft_ms: Some(50.0),
            input_tokens: 100,
            output_tokens: 200,
            cost_usd: 0.001,
            cache: None,
            attempts: 1,
            fallback: None,
            stream: i % 3 == 0,
            trace_id: None,
            cache_similarity: None,
            cache_matched: None,
            cache_entry: None,
            cache_question: None,
        });
        if batch.len() == 10_000 {
            store.record_requests(&batch, true).await?;
            batch.clear();
        }
    }
    store.record_requests(&batch, true).await?;
    Ok(started.elapsed())
}

/// Times admin queries against a Pylon serving that store.
pub async fn query(port: u16) -> anyhow::Result<()> {
    let client = load::client(1);
    for path in [
        "/admin/v1/usage?group_by=model,provider,day",
        "/admin/v1/usage?group_by=key,hour",
        "/admin/v1/usage?group_by=team",
        "/admin/v1/requests?limit=100",
        "/admin/v1/requests?key=key7&status=5xx&limit=100",
        "/admin/v1/errors",
    ] {
        let mut best = Duration::MAX;
        let mut rows = 0;
        for _ in 0..5 {
            let req = hyper::Request::get(format!("http://127.0.0.1:{port}{path}"))
                .header("authorization", "Bearer bench-admin")
                .body(Full::new(Bytes::new()))?;
            let t = Instant::now();
            let resp = client.request(req).await?;
            anyhow::ensure!(resp.status().is_success(), "{path}: {}", resp.status());
            let body = resp.into_body().collect().await?.to_bytes();
            best = best.min(t.elapsed());
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            rows = v["rows"]
                .as_array()
                .or(v["data"].as_array())
                .map_or(0, Vec::len);
        }
        println!(
            "  {path:<52} {:>8.1} ms  ({rows} rows)",
            best.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// The request log's cost on the request path, and admin queries over a large log.
pub(crate) async fn figures(
    args: &Args,
    pylon_bin: &Path,
    spawn_pylon: &SpawnPylon<'_>,
    pylon_port: u16,
) -> anyhow::Result<()> {
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    let (off_port, _off) = spawn_pylon(
        "pylon-nolog",
        "[auth]\nmode = \"none\"\n[limits]\nip_rpm = 0\n[request_log]\nenabled = false\n",
    )?;
    wait_ready(
        &format!("http://127.0.0.1:{off_port}/livez"),
        Duration::from_secs(10),
    )
    .await?;
    let on = Endpoint {
        url: url(pylon_port),
        bearer: None,
    };
    let off = Endpoint {
        url: url(off_port),
        bearer: None,
    };
    on_vs_off(&on, &off, args.log_rate, Duration::from_secs(args.seconds)).await;

    let data = PathBuf::from("bench/out/data-reqlog");
    let _ = std::fs::remove_dir_all(&data);
    let took = fill(&data, args.log_rows).await?;
    println!(
        "\nadmin API over {} logged requests in SQLite (filled in {:.1} s; best of 5):",
        args.log_rows,
        took.as_secs_f64()
    );
    let port = free_port()?;
    let cfg = PathBuf::from("bench/out/reqlog.toml");
    std::fs::write(
        &cfg,
        pylon_config(
            port,
            9,
            &data.canonicalize()?,
            "[request_log]\nmax_rows = 100000000\n",
            args.workers,
        ),
    )?;
    let _p = Proc::spawn(
        Command::new(pylon_bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("PYLON_ADMIN_TOKEN", "bench-admin"),
    )?;
    wait_ready(
        &format!("http://127.0.0.1:{port}/livez"),
        Duration::from_secs(30),
    )
    .await?;
    query(port).await
}
