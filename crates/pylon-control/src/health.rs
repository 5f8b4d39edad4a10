//! Background dependency checks: the store, Redis, the data dir's disk and (optionally) each
//! provider, reported to the data plane so `/readyz` and `/health` answer without I/O.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pylon_proxy::{Check, Gateway};
use pylon_store::Store;
use pylon_telemetry::Metrics;

/// Pings the store once and reports it.
pub(crate) async fn check_store(store: &Store, gw: &Gateway, metrics: &Metrics, timeout: Duration) {
    let started = Instant::now();
    let result =
        tokio::time::timeout(timeout, crate::ledger::timed(metrics, "ping", store.ping())).await;
    let check = match result {
        Ok(Ok(())) => Check::pass(started.elapsed()),
        Ok(Err(e)) => Check::fail(started.elapsed(), e.to_string()),
        Err(_) => {
            metrics.store_errors.with_label_values(&["ping"]).inc();
            Check::fail(started.elapsed(), format!("no answer within {timeout:?}"))
        }
    };
    gw.report_store(check);
}

/// Share of the disk in use and bytes free for `dir`.
pub fn disk(dir: &Path) -> Option<(f64, u64)> {
    let s = rustix::fs::statvfs(dir).ok()?;
    let total = s.f_blocks.saturating_mul(s.f_frsize);
    let free = s.f_bavail.saturating_mul(s.f_frsize);
    (total > 0).then(|| (1.0 - free as f64 / total as f64, free))
}

/// Resident memory from the process's own statistics (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Checks every `cfg.check_every` until the task is aborted.
pub(crate) async fn check_loop(
    store: Store,
    gw: Arc<Gateway>,
    cfg: pylon_config::Health,
    data_dir: PathBuf,
) {
    let mut tick = tokio::time::interval(cfg.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check_store(&store, &gw, gw.metrics(), cfg.check_timeout).await;
        gw.check_redis(cfg.check_timeout).await;
        gw.report_system(disk(&data_dir), resident_bytes());
    }
}

/// Probes every provider every `every`.
pub(crate) async fn probe_loop(gw: Arc<Gateway>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        gw.probe_providers().await;
    }
}
