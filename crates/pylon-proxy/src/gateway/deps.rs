//! Dependency state that the control plane's background checks write and the probes read.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The last result of checking one dependency.
#[derive(Debug, Clone)]
pub struct Check {
    pub ok: bool,
    /// Round-trip time of the check.
    pub latency: Duration,
    pub at: SystemTime,
    pub error: Option<String>,
}

impl Check {
    /// A check that passed in `latency`.
    pub fn pass(latency: Duration) -> Check {
        Check {
            ok: true,
            latency,
            at: SystemTime::now(),
            error: None,
        }
    }

    /// A check that failed.
    pub fn fail(latency: Duration, error: impl Into<String>) -> Check {
        Check {
            ok: false,
            latency,
            at: SystemTime::now(),
            error: Some(error.into()),
        }
    }
}

/// Dependency state written by background checks and read by the probes.
#[derive(Debug, Default)]
pub(crate) struct Dependencies {
    pub store: Mutex<Option<Check>>,
    pub redis: Mutex<Option<Check>>,
    /// Share of the data dir's disk in use, and bytes free.
    pub disk: Mutex<Option<(f64, u64)>>,
    /// Resident memory in bytes, read by the same background check.
    pub rss: std::sync::atomic::AtomicU64,
    pub disk_warn: f64,
    /// Active provider probes, by provider name.
    pub probes: Mutex<BTreeMap<String, Check>>,
    /// Scheduled backups: the last good one, and the schedule's period.
    pub backup: Mutex<Option<BackupState>>,
    /// When the served TLS certificate expires (set at start and on each reload).
    pub tls_not_after: Mutex<Option<SystemTime>>,
    /// The ACME client's state, when certificates come from ACME.
    pub acme: Mutex<Option<AcmeState>>,
}

/// What the health report says about automatic certificates.
#[derive(Debug, Clone, Default)]
pub struct AcmeState {
    /// Whether a certificate is being served.
    pub serving: bool,
    /// When the served certificate will be renewed.
    pub renew_at: Option<SystemTime>,
    /// Consecutive failed orders.
    pub failures: u32,
    /// Why the last order failed, if it did.
    pub error: Option<String>,
}

/// What the health report and metrics say about backups.
#[derive(Debug, Clone)]
pub struct BackupState {
    /// When the last good backup was written (`None`: none yet).
    pub last_ok: Option<SystemTime>,
    /// The schedule's period: a last backup older than twice this is a warning.
    pub every: Duration,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
}

// What the control plane's health loops report into the gateway.
impl super::Gateway {
    /// Records the latest store check (read by `/readyz` and `/health`).
    pub fn report_store(&self, check: Check) {
        if let Ok(mut g) = self.deps.store.lock() {
            *g = Some(check);
        }
    }

    /// Pings Redis (when configured) and records the result for `/health`.
    pub async fn check_redis(&self, timeout: std::time::Duration) {
        let started = std::time::Instant::now();
        let check = match tokio::time::timeout(timeout, self.limiter.ping()).await {
            Ok(None) => return,
            Ok(Some(Ok(took))) => Check::pass(took),
            Ok(Some(Err(e))) => Check::fail(started.elapsed(), e.to_string()),
            Err(_) => Check::fail(started.elapsed(), "timed out"),
        };
        if let Ok(mut g) = self.deps.redis.lock() {
            *g = Some(check);
        }
    }

    /// Records the state of scheduled backups (read by `/health` and `/metrics`).
    pub fn report_backup(&self, state: BackupState) {
        if let Ok(mut g) = self.deps.backup.lock() {
            *g = Some(state);
        }
    }

    /// Records the ACME client's state (health item and metric).
    pub fn report_acme(&self, state: AcmeState) {
        self.metrics.acme_failures.set(i64::from(state.failures));
        if let Ok(mut g) = self.deps.acme.lock() {
            *g = Some(state);
        }
    }

    /// Records when the served certificate expires (health item and metric).
    pub fn report_tls(&self, not_after: Option<SystemTime>) {
        if let Ok(mut g) = self.deps.tls_not_after.lock() {
            *g = not_after;
        }
        let secs = not_after
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.metrics.tls_not_after.set(secs);
    }

    /// Records the data dir's disk use (share used, bytes free) and the process's resident memory.
    pub fn report_system(&self, disk: Option<(f64, u64)>, rss_bytes: Option<u64>) {
        if let (Some(d), Ok(mut g)) = (disk, self.deps.disk.lock()) {
            *g = Some(d);
        }
        if let Some(rss) = rss_bytes {
            self.deps
                .rss
                .store(rss, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
