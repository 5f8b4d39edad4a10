//! Pylon's load harness: the same mock provider loaded directly, through Pylon (plain, and with
//! auth + limits in-process and in Redis) and through nginx.
//!
//! Prints requests/s, p50/p99 latency, Pylon's added latency, CPU per request of the proxy
//! process, RSS, readiness time, and memory with 1,000 concurrent slow streams.

mod alerts;
mod cache;
mod cost;
mod delivery;
mod edge;
mod load;
mod procs;
mod recovery;
mod reqlog;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};

use load::{Endpoint, Outcome};
use procs::{cpu_seconds, rss_mib, wait_ready, Proc};

#[derive(Parser)]
#[command(about = "Load the mock provider directly, through Pylon and through nginx")]
struct Args {
    /// Length of each measured run, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrency of the throughput runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Rate of the fixed-rate run (requests per second).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Concurrent slow streams held open for the memory check.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// The pylon binary (default: next to this one).
    #[arg(long)]
    pylon: Option<PathBuf>,
    /// Skip nginx (when it is not installed).
    #[arg(long)]
    no_nginx: bool,
    /// Skip the Pylon variants with auth and limits.
    #[arg(long)]
    no_limits: bool,
    /// Rate of the request-log on/off comparison.
    #[arg(long, default_value_t = 2000)]
    log_rate: u32,
    /// Logged requests for the admin-query timing.
    #[arg(long, default_value_t = 1_000_000)]
    log_rows: usize,
    /// Run only the request-log figures.
    #[arg(long)]
    only_request_log: bool,
    /// Run only the response-cache figures.
    #[arg(long)]
    only_cache: bool,
    /// Run only the semantic-cache guard cost.
    #[arg(long)]
    only_guards: bool,
    /// Run only the delivery figures (rollout assignment and flag evaluation cost, CPU with an
    /// active rollout, OFREP latency).
    #[arg(long)]
    only_delivery: bool,
    /// Run only the alerting figures (one evaluation round of 200 rules over 2,000 series).
    #[arg(long)]
    only_alerts: bool,
    /// Run only the recovery-time figures (backup, restore into SQLite and PostgreSQL, start,
    /// ready) over `--log-rows` request-log rows.
    #[arg(long)]
    only_recovery: bool,
    /// Run only the cost-per-request figures (CPU, RSS and added latency vs nginx; large bodies).
    #[arg(long)]
    only_cost: bool,
    /// Run only the edge figures (app-route compression CPU and edge-cache hits vs nginx).
    #[arg(long)]
    only_edge: bool,
    /// Distinct answers cached for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    cache_entries: usize,
    /// Entries and dimensions of the semantic-index figure.
    #[arg(long, default_value_t = 100_000)]
    semantic_entries: usize,
    #[arg(long, default_value_t = 384)]
    semantic_dims: usize,
    /// Rounds of the 60-byte cost tables; more than one prints the median of each figure (the
    /// machine's noise is about ±10 % per round).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Pylon's `[server] workers` (left out by default, so older builds run too).
    #[arg(long)]
    workers: Option<usize>,
    /// TOML sections added to every Pylon's config (e.g. `[request_log]\nenabled = false` to
    /// see what a feature costs).
    #[arg(long, default_value = "")]
    extra_config: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A config for a Pylon in front of the mock; `extra` adds sections.
fn pylon_config(port: u16, mock: u16, data: &Path, extra: &str, workers: Option<usize>) -> String {
    let workers = workers.map_or(String::new(), |n| format!("workers = {n}\n"));
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "1s"
{workers}
[data]
dir = "{data}"
{extra}
[log]
level = "info"
format = "json"

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:{mock}/v1"
api_key = "sk-bench"

[[models]]
name = "bench"
targets = [ {{ provider = "mock", model = "bench" }} ]

[[prices]]
model = "bench"
input_per_million = 1.0
output_per_million = 2.0
"#,
        data = data.display()
    )
}

/// A key with every kind of limit, none of which the run reaches.
async fn create_key(port: u16) -> anyhow::Result<String> {
    let body = r#"{"name":"bench","limits":{"rpm":100000000,"tpm":1000000000,"max_concurrent":100000},"budget":{"amount_usd":1000000,"period":"monthly"}}"#;
    let req = hyper::Request::post(format!("http://127.0.0.1:{port}/admin/v1/keys"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer bench-admin")
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let resp = load::client(1).request(req).await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "creating the bench key failed: {}",
        resp.status()
    );
    let json: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    json["key"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no key in the answer"))
}

struct Target {
    name: &'static str,
    to: Endpoint,
    /// The proxy process measured for CPU; `None` for the direct case.
    pid: Option<u32>,
}

#[derive(Clone, Copy)]
enum Mode {
    Closed(usize),
    Rate(u32),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.only_guards {
        cache::guards();
        return Ok(());
    }
    let out = PathBuf::from("bench/out");
    std::fs::create_dir_all(&out)?;
    let out = out.canonicalize()?;
    let pylon_bin = match &args.pylon {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("pylon"),
    };

    if args.only_recovery {
        return recovery::figures(&pylon_bin, &out, args.log_rows).await;
    }
    let mock_port = free_port()?;
    let _mock = Proc::spawn(Command::new(&pylon_bin).args([
        "mock-provider",
        "--port",
        &mock_port.to_string(),
    ]))?;
    wait_ready(
        &format!("http://127.0.0.1:{mock_port}/mock/stats"),
        Duration::from_secs(10),
    )
    .await?;

    let spawn_pylon = |name: &str, extra: &str| -> anyhow::Result<(u16, Proc)> {
        let port = free_port()?;
        let data = out.join(format!("data-{name}"));
        let _ = std::fs::remove_dir_all(&data);
        let cfg = out.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            pylon_config(
                port,
                mock_port,
                &data,
                &format!("{}\n{extra}", args.extra_config),
                args.workers,
            ),
        )?;
        let p = Proc::spawn(
            Command::new(&pylon_bin)
                .arg("serve")
                .arg("--config")
                .arg(&cfg)
                .env("PYLON_ADMIN_TOKEN", "bench-admin"),
        )?;
        Ok((port, p))
    };

    let (pylon_port, pylon) =
        spawn_pylon("pylon", "[auth]\nmode = \"none\"\n[limits]\nip_rpm = 0\n")?;
    let ready = wait_ready(
        &format!("http://127.0.0.1:{pylon_port}/livez"),
        Duration::from_secs(10),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (idle_rss, _) = rss_mib(pylon.pid());
    println!(
        "pylon: ready in {:.1} ms, idle RSS {idle_rss:.1} MiB",
        ready.as_secs_f64() * 1000.0
    );

    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    if args.only_cache {
        return cache::run(&args, &spawn_pylon).await;
    }
    if args.only_request_log {
        return reqlog::figures(&args, &pylon_bin, &spawn_pylon, pylon_port).await;
    }
    if args.only_alerts {
        alerts::figures(u32::try_from(args.rounds.max(20)).unwrap_or(20));
        return alerts::cpu(&spawn_pylon, args.seconds, args.rounds).await;
    }
    if args.only_edge {
        return edge::figures(&spawn_pylon, &out, args.seconds).await;
    }
    if args.only_delivery {
        return delivery::figures(&spawn_pylon, &out, args.seconds, args.rounds).await;
    }
    if args.only_cost {
        return cost::figures(
            &args,
            &out,
            &spawn_pylon,
            mock_port,
            pylon_port,
            pylon.pid(),
        )
        .await;
    }
    let mut targets = vec![
        Target {
            name: "direct",
            to: Endpoint {
                url: url(mock_port),
                bearer: None,
            },
            pid: None,
        },
        Target {
            name: "pylon",
            to: Endpoint {
                url: url(pylon_port),
                bearer: None,
            },
            pid: Some(pylon.pid()),
        },
    ];
    // Auth and limits on: every kind of limit is checked (per IP, key rpm/tpm, concurrency,
    // budget), none is reached.
    let mut keep = Vec::new();
    if !args.no_limits {
        for (name, redis) in [
            ("pylon+keys", ""),
            ("pylon+redis", "redis_url = \"redis://127.0.0.1:6379\"\n"),
        ] {
            let extra = format!("{redis}[limits]\nip_rpm = 100000000\n");
            let (port, p) = spawn_pylon(
                name,
                &extra.replacen("redis_url", "#redis_url", usize::from(redis.is_empty())),
            )?;
            wait_ready(
                &format!("http://127.0.0.1:{port}/livez"),
                Duration::from_secs(10),
            )
            .await?;
            let key = create_key(port).await?;
            targets.push(Target {
                name,
                to: Endpoint {
                    url: url(port),
                    bearer: Some(key),
                },
                pid: Some(p.pid()),
            });
            keep.push(p);
        }
    }
    let nginx = if args.no_nginx {
        None
    } else {
        let port = free_port()?;
        let n = procs::nginx(&out, port, mock_port)?;
        wait_ready(
            &format!("http://127.0.0.1:{port}/mock/stats"),
            Duration::from_secs(10),
        )
        .await?;
        targets.push(Target {
            name: "nginx",
            to: Endpoint {
                url: url(port),
                bearer: None,
            },
            pid: Some(n.pid()),
        });
        Some(n)
    };

    let plain =
        Bytes::from_static(br#"{"model":"bench","messages":[{"role":"user","content":"hello"}]}"#);
    let stream = Bytes::from_static(
        br#"{"model":"bench","stream":true,"messages":[{"role":"user","content":"hello"}]}"#,
    );
    let d = Duration::from_secs(args.seconds);
    let c = args.concurrency;
    println!(
        "\n{:<28} {:<12} {:>9} {:>9} {:>9} {:>12} {:>7}",
        "case", "via", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "errors"
    );
    let mut rows: Vec<(String, &'static str, Outcome, Option<f64>)> = Vec::new();
    for (case, body, mode) in [
        (
            "non-stream, concurrency 1".to_owned(),
            &plain,
            Mode::Closed(1),
        ),
        (
            format!("non-stream, concurrency {c}"),
            &plain,
            Mode::Closed(c),
        ),
        (
            format!("non-stream, {} req/s", args.rate),
            &plain,
            Mode::Rate(args.rate),
        ),
        ("stream, concurrency 1".to_owned(), &stream, Mode::Closed(1)),
        (format!("stream, concurrency {c}"), &stream, Mode::Closed(c)),
    ] {
        for t in &targets {
            // One client per run, warmed up first so every hop's connection pool is full.
            let client = load::client(1024);
            let _ = load::closed_loop(&client, &t.to, body.clone(), 32, Duration::from_millis(300))
                .await;
            let cpu0 = t.pid.map(cpu_seconds);
            let o = match mode {
                Mode::Closed(n) => load::closed_loop(&client, &t.to, body.clone(), n, d).await,
                Mode::Rate(r) => load::fixed_rate(&client, &t.to, body.clone(), r, d).await,
            };
            let cpu = t
                .pid
                .zip(cpu0)
                .map(|(pid, before)| (cpu_seconds(pid) - before) / o.ok.max(1) as f64 * 1e6);
            println!(
                "{:<28} {:<12} {:>9.0} {:>9.0} {:>9.0} {:>12} {:>7}",
                case,
                t.name,
                o.rps(),
                o.p(0.5),
                o.p(0.99),
                cpu.map_or("-".to_owned(), |v| format!("{v:.1}")),
                o.errors
            );
            rows.push((case.clone(), t.name, o, cpu));
        }
    }

    println!("\nadded latency over direct (µs):");
    let vias: Vec<&str> = targets.iter().skip(1).map(|t| t.name).collect();
    for case in [
        "non-stream, concurrency 1".to_owned(),
        format!("non-stream, {} req/s", args.rate),
        "stream, concurrency 1".to_owned(),
    ] {
        let get = |via: &str| {
            rows.iter()
                .find(|r| r.0 == case && r.1 == via)
                .map(|r| (r.2.p(0.5), r.2.p(0.99)))
        };
        if let Some((d50, d99)) = get("direct") {
            for via in &vias {
                if let Some((p50, p99)) = get(via) {
                    println!(
                        "  {case:<28} {via:<12} p50 {:+7.0}   p99 {:+7.0}",
                        p50 - d50,
                        p99 - d99
                    );
                }
            }
        }
    }
    let cpu_of = |case: &str, via: &str| {
        rows.iter()
            .find(|r| r.0 == case && r.1 == via)
            .and_then(|r| r.3)
    };
    for case in [
        format!("non-stream, concurrency {c}"),
        format!("stream, concurrency {c}"),
    ] {
        if let Some(n) = cpu_of(&case, "nginx") {
            for via in vias.iter().filter(|v| **v != "nginx") {
                if let Some(p) = cpu_of(&case, via) {
                    println!(
                        "CPU per request, {case}: {via} {p:.1} µs vs nginx {n:.1} µs = {:.2}×",
                        p / n
                    );
                }
            }
        }
    }

    // Memory with many slow streams held open at once.
    put(
        &format!("http://127.0.0.1:{mock_port}/mock/behaviour"),
        r#"{"chunk_delay":"100ms","repeat":6}"#,
    )
    .await?;
    println!(
        "\n{} concurrent slow SSE streams (~4 s each, a chunk every 100 ms):",
        args.streams
    );
    for t in targets
        .iter()
        .filter(|t| t.name == "pylon" || t.name == "nginx")
    {
        let pid = t.pid.unwrap_or_default();
        let mut during = 0.0;
        let (ok, failed) = load::held_streams(
            &t.to,
            stream.clone(),
            args.streams,
            Duration::from_secs(2),
            || during = rss_mib(pid).0,
        )
        .await;
        let (after, peak) = rss_mib(pid);
        println!("  {:<6} RSS while streaming {during:.1} MiB (peak so far {peak:.1}, after {after:.1}); {ok} ok, {failed} failed", t.name);
    }
    put(
        &format!("http://127.0.0.1:{mock_port}/mock/behaviour"),
        "{}",
    )
    .await?;
    drop(nginx);
    reqlog::figures(&args, &pylon_bin, &spawn_pylon, pylon_port).await?;
    cache::run(&args, &spawn_pylon).await
}

/// Starts a Pylon named `name` with extra config; returns its port and process.
type SpawnPylon<'a> = dyn Fn(&str, &str) -> anyhow::Result<(u16, Proc)> + 'a;

async fn put(url: &str, body: &'static str) -> anyhow::Result<()> {
    let req = hyper::Request::put(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let resp = load::client(1).request(req).await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "mock rejected behaviour: {}",
        resp.status()
    );
    Ok(())
}
