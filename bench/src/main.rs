//! Pylon's load harness: the same mock provider loaded directly, through Pylon and through nginx.
//!
//! Prints requests/s, p50/p99 latency, Pylon's added latency, CPU per request of the proxy process,
//! RSS, readiness time, and memory with 1,000 concurrent slow streams.

mod load;
mod procs;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;

use load::Outcome;
use procs::{cpu_seconds, rss_mib, wait_ready, Proc};

#[derive(Parser)]
#[command(about = "Load the mock provider directly, through Pylon and through nginx")]
struct Args {
    /// Length of each measured run.
    #[arg(long, default_value = "5s", value_parser = humantime_parse)]
    duration: Duration,
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
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("bad duration {s} (use ms or s)")),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Target {
    name: &'static str,
    port: u16,
    /// The proxy process measured for CPU; `None` for the direct case.
    pid: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = PathBuf::from("bench/out");
    std::fs::create_dir_all(&out)?;
    let out = out.canonicalize()?;
    let pylon_bin = match &args.pylon {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("pylon"),
    };

    let (mock_port, pylon_port, nginx_port) = (free_port()?, free_port()?, free_port()?);
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

    let config = out.join("pylon.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{pylon_port}"
shutdown_grace = "1s"

[log]
level = "info"
format = "json"

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key = "sk-bench"

[[models]]
name = "bench"
targets = [ {{ provider = "mock", model = "bench" }} ]
"#
        ),
    )?;
    let pylon = Proc::spawn(
        Command::new(&pylon_bin)
            .arg("serve")
            .arg("--config")
            .arg(&config),
    )?;
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

    let nginx = if args.no_nginx {
        None
    } else {
        Some(procs::nginx(&out, nginx_port, mock_port)?)
    };
    let mut targets = vec![
        Target {
            name: "direct",
            port: mock_port,
            pid: None,
        },
        Target {
            name: "pylon",
            port: pylon_port,
            pid: Some(pylon.pid()),
        },
    ];
    if let Some(n) = &nginx {
        wait_ready(
            &format!("http://127.0.0.1:{nginx_port}/mock/stats"),
            Duration::from_secs(10),
        )
        .await?;
        targets.push(Target {
            name: "nginx",
            port: nginx_port,
            pid: Some(n.pid()),
        });
    }

    let plain =
        Bytes::from_static(br#"{"model":"bench","messages":[{"role":"user","content":"hello"}]}"#);
    let stream = Bytes::from_static(
        br#"{"model":"bench","stream":true,"messages":[{"role":"user","content":"hello"}]}"#,
    );
    let d = args.duration;
    let c = args.concurrency;
    println!(
        "\n{:<28} {:<7} {:>9} {:>9} {:>9} {:>12} {:>7}",
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
            let url = format!("http://127.0.0.1:{}/v1/chat/completions", t.port);
            // One client per run, warmed up first so every hop's connection pool is full.
            let client = load::client(1024);
            let _ = load::closed_loop(&client, &url, body.clone(), 32, Duration::from_millis(300))
                .await;
            let cpu0 = t.pid.map(cpu_seconds);
            let o = match mode {
                Mode::Closed(n) => load::closed_loop(&client, &url, body.clone(), n, d).await,
                Mode::Rate(r) => load::fixed_rate(&client, &url, body.clone(), r, d).await,
            };
            let cpu = t
                .pid
                .zip(cpu0)
                .map(|(pid, before)| (cpu_seconds(pid) - before) / o.ok.max(1) as f64 * 1e6);
            println!(
                "{:<28} {:<7} {:>9.0} {:>9.0} {:>9.0} {:>12} {:>7}",
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
            for via in ["pylon", "nginx"] {
                if let Some((p50, p99)) = get(via) {
                    println!(
                        "  {case:<28} {via:<6} p50 {:+7.0}   p99 {:+7.0}",
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
        if let (Some(p), Some(n)) = (cpu_of(&case, "pylon"), cpu_of(&case, "nginx")) {
            println!(
                "CPU per request, {case}: pylon {p:.1} µs, nginx {n:.1} µs, ratio {:.2}×",
                p / n
            );
        }
    }

    // Memory with many slow streams held open at once.
    let behaviour = r#"{"chunk_delay":"100ms","repeat":6}"#;
    put(
        &format!("http://127.0.0.1:{mock_port}/mock/behaviour"),
        behaviour,
    )
    .await?;
    println!(
        "\n{} concurrent slow SSE streams (~4 s each, a chunk every 100 ms):",
        args.streams
    );
    for t in targets.iter().filter(|t| t.pid.is_some()) {
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", t.port);
        let pid = t.pid.unwrap_or_default();
        let mut during = 0.0;
        let (ok, failed) = load::held_streams(
            &url,
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
    Ok(())
}

#[derive(Clone, Copy)]
enum Mode {
    Closed(usize),
    Rate(u32),
}

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
