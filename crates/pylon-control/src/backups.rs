//! Scheduled backups of the store, with retention, and the admin API's view of them.
//!
//! With a shared store, the instance holding the `backup` lease takes each scheduled backup,
//! into its own backup dir. A backup is written by the control plane's runtime, never on the
//! data plane's threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pylon_proxy::{BackupState, Gateway};
use pylon_store::backup::{self, BackupError};
use pylon_store::Store;
use serde::Serialize;

const LEASE: &str = "backup";

/// One backup in the backup dir.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackupFile {
    pub name: String,
    pub bytes: u64,
    /// Unix milliseconds of the file's last change.
    pub modified_at: u64,
}

/// A backup just taken.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Taken {
    pub name: String,
    pub bytes: u64,
    pub rows: u64,
    pub schema_version: i64,
    pub took_ms: u64,
}

/// Scheduled and on-demand backups into one directory.
pub struct Backups {
    dir: PathBuf,
    every: Option<Duration>,
    keep: usize,
    store: Store,
    gateway: Arc<Gateway>,
    instance: String,
    /// One backup at a time.
    running: tokio::sync::Mutex<()>,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `name` is a file this module writes (and so may be listed, served or deleted).
pub fn is_backup_name(name: &str) -> bool {
    name.starts_with("pylon-")
        && name.ends_with(".tar.gz")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl Backups {
    /// Backups of `store` as `[backup]` of `config` says.
    pub fn new(config: &pylon_config::Config, store: Store, gateway: Arc<Gateway>) -> Backups {
        Backups {
            dir: config.backup.dir_in(&config.data.dir),
            every: config.backup.every,
            keep: config.backup.keep.max(1),
            store,
            gateway,
            instance: uuid::Uuid::new_v4().to_string(),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The backup dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backups in the dir, newest first.
    pub fn list(&self) -> Vec<BackupFile> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<BackupFile> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let meta = e.metadata().ok()?;
                (is_backup_name(&name) && meta.is_file()).then(|| BackupFile {
                    name,
                    bytes: meta.len(),
                    modified_at: meta.modified().map(ms).unwrap_or(0),
                })
            })
            .collect();
        // Names sort by time (`pylon-YYYYMMDDTHHMMSS.mmmZ`).
        files.sort_by(|a, b| b.name.cmp(&a.name));
        files
    }

    /// The path of a listed backup.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        is_backup_name(name)
            .then(|| self.dir.join(name))
            .filter(|p| p.is_file())
    }

    /// Takes a backup now, then deletes the oldest beyond `keep`.
    pub async fn take(&self) -> Result<Taken, BackupError> {
        let _one = self.running.lock().await;
        let started = std::time::Instant::now();
        std::fs::create_dir_all(&self.dir).map_err(|source| BackupError::Io {
            path: self.dir.display().to_string(),
            source,
        })?;
        let name = backup::file_name(ms(SystemTime::now()) as i64);
        let path = self.dir.join(&name);
        let metrics = self.gateway.metrics();
        match self.store.backup(&path).await {
            Ok(m) => {
                metrics.backups.with_label_values(&["ok"]).inc();
                self.report(Some(SystemTime::now()), None);
                for old in self.list().into_iter().skip(self.keep) {
                    if let Err(e) = std::fs::remove_file(self.dir.join(&old.name)) {
                        tracing::warn!(target: "pylon::backup", file = %old.name, error = %e, "cannot delete an old backup");
                    }
                }
                let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
                let took_ms = started.elapsed().as_millis() as u64;
                tracing::info!(target: "pylon::backup", file = %path.display(), rows = m.rows(), bytes, took_ms, "backup written");
                Ok(Taken {
                    name,
                    bytes,
                    rows: m.rows(),
                    schema_version: m.schema_version,
                    took_ms,
                })
            }
            Err(e) => {
                metrics.backups.with_label_values(&["error"]).inc();
                tracing::error!(target: "pylon::backup", error = %e, "backup failed");
                let last = self.last_ok();
                self.report(last, Some(e.to_string()));
                Err(e)
            }
        }
    }

    fn last_ok(&self) -> Option<SystemTime> {
        let newest = self.list().into_iter().next()?;
        std::fs::metadata(self.dir.join(newest.name))
            .and_then(|m| m.modified())
            .ok()
    }

    fn report(&self, last_ok: Option<SystemTime>, error: Option<String>) {
        if let Some(every) = self.every {
            self.gateway.report_backup(BackupState {
                last_ok,
                every,
                error,
            });
        }
    }

    /// Runs the schedule until aborted (nothing without `[backup] every`): the first backup is
    /// due one period after the newest one in the dir, so restarts do not add backups.
    pub async fn run(self: Arc<Self>) {
        let Some(every) = self.every else {
            return;
        };
        self.report(self.last_ok(), None);
        loop {
            let since = self
                .last_ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            let wait = since.map_or(Duration::ZERO, |s| every.saturating_sub(s));
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
            let now = ms(SystemTime::now()) as i64;
            let lease = (every.as_millis() as i64).max(60_000);
            match self
                .store
                .take_lease(LEASE, &self.instance, now, lease)
                .await
            {
                Ok(true) => {
                    let _ = self.take().await;
                }
                // Another instance takes them; check again in a period.
                Ok(false) => tokio::time::sleep(every).await,
                Err(e) => {
                    tracing::warn!(target: "pylon::backup", error = %e, "cannot take the backup lease; retrying");
                    tokio::time::sleep(Duration::from_secs(5).min(every)).await;
                }
            }
        }
    }
}
