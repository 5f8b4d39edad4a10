//! Recovery time: a store with 1,000,000 request-log rows backed up, then restored into a fresh
//! SQLite data dir and into a fresh PostgreSQL schema, each followed by `pylon serve` on the
//! restored store until `/readyz` answers 200 — the disaster-recovery path, timed end to end.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::procs::Proc;

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Times backup, then restore + start + ready into SQLite and into PostgreSQL.
pub async fn figures(pylon: &Path, out: &Path, rows: usize) -> anyhow::Result<()> {
    let source = out.join("data-recovery");
    let _ = std::fs::remove_dir_all(&source);
    let filled = crate::reqlog::fill(&source, rows).await?;
    println!(
        "\nrecovery: {rows} request-log rows (filled in {:.1} s)",
        filled.as_secs_f64()
    );
    let cfg = out.join("recovery.toml");
    std::fs::write(&cfg, format!("[data]\ndir = \"{}\"\n", source.display()))?;
    let archive = out.join("recovery.tar.gz");
    let started = Instant::now();
    run(Command::new(pylon)
        .args(["backup", "create", "--config"])
        .arg(&cfg)
        .arg("--to")
        .arg(&archive))?;
    let backup = started.elapsed();
    let size = std::fs::metadata(&archive)?.len();
    println!(
        "  backup create        {:>6.1} s  ({:.0} MiB archive)",
        backup.as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );
    let started = Instant::now();
    run(Command::new(pylon).args(["backup", "verify"]).arg(&archive))?;
    println!(
        "  backup verify        {:>6.1} s",
        started.elapsed().as_secs_f64()
    );

    let schema = format!("recovery_{}", std::process::id());
    let base = std::env::var("PYLON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    run(Command::new("psql").arg(&base).args([
        "-q",
        "-c",
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
    ]))?;
    let pg = format!("{base}?options=-c%20search_path%3D{schema}");
    let fresh = out.join("data-recovered");
    let _ = std::fs::remove_dir_all(&fresh);
    for (name, into, data) in [
        (
            "SQLite",
            fresh.display().to_string(),
            format!("dir = \"{}\"", fresh.display()),
        ),
        (
            "PostgreSQL",
            pg.clone(),
            format!("dir = \"{}\"\nstore_url = \"{pg}\"", fresh.display()),
        ),
    ] {
        let port = crate::free_port()?;
        let cfg = out.join("recovered.toml");
        std::fs::write(
            &cfg,
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[data]\n{data}\n[log]\nformat = \"json\"\n"),
        )?;
        let started = Instant::now();
        run(Command::new(pylon)
            .arg("restore")
            .arg(&archive)
            .args(["--config"])
            .arg(&cfg)
            .args(["--into", &into]))?;
        let restored = started.elapsed();
        let _p = Proc::spawn(Command::new(pylon).args(["serve", "--config"]).arg(&cfg))?;
        crate::procs::wait_ready(
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(60),
        )
        .await?;
        let total = started.elapsed();
        println!(
            "  into {name:<11}     restore {:>5.1} s, + start and ready {:>5.1} s = {:>5.1} s (goal ≤ 30 s)",
            restored.as_secs_f64(),
            (total - restored).as_secs_f64(),
            total.as_secs_f64()
        );
    }
    let _ = run(Command::new("psql").arg(&base).args([
        "-q",
        "-c",
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
    ]));
    Ok(())
}
