//! The config file in force, and reloading it while serving: checked first, then put in force
//! whole (requests in flight finish on the config they started with), or refused with the
//! running config kept.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pylon_config::Loaded;
use serde::Serialize;

use crate::keys::unix_now_ms as now_ms;
use crate::Control;

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("Pylon was started without a config file (built-in defaults and the environment): there is nothing to reload; start it with --config to use reloads")]
    NoFile,
    #[error("the new config was refused and the running one kept:\n{0}")]
    Invalid(String),
    #[error("the new config could not be put in force and the running one was kept: {0}")]
    Build(#[from] pylon_proxy::BuildError),
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    /// `applied`, or `unchanged` when the file says what the running config says.
    pub result: &'static str,
    /// SHA-256 of the config now in force (after `${ENV}` expansion).
    pub sha256: String,
    /// Settings that changed and are now in force (`section.key`, `providers.<name>`…).
    pub applied: Vec<String>,
    /// Settings that changed but are read only at start: they take effect at the next start
    /// (or `pylon upgrade`).
    pub restart_required: Vec<String>,
}

/// A reload that was refused.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Failure {
    /// Unix milliseconds.
    pub at: u64,
    pub error: String,
}

/// The config in force, as `GET /admin/v1/config` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConfigStatus {
    /// The file it was read from; `null` for built-in defaults and the environment.
    pub source: Option<String>,
    pub sha256: Option<String>,
    /// Unix milliseconds when the config in force was loaded.
    pub loaded_at: u64,
    /// Reloads applied since start.
    pub reloads: u64,
    /// Settings changed by reloads that wait for a restart.
    pub restart_required: Vec<String>,
    pub last_failure: Option<Failure>,
    /// The config in force, secrets redacted.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

struct Active {
    path: Option<PathBuf>,
    loaded: Option<Loaded>,
    loaded_at: u64,
    reloads: u64,
    restart_required: Vec<String>,
    last_failure: Option<Failure>,
}

/// The config file in force and the record of reloads.
pub(crate) struct ConfigState {
    active: Mutex<Active>,
    /// One reload at a time (SIGHUP and the admin API may race).
    reloading: tokio::sync::Mutex<()>,
}

impl Default for ConfigState {
    fn default() -> ConfigState {
        ConfigState {
            active: Mutex::new(Active {
                path: None,
                loaded: None,
                loaded_at: now_ms(),
                reloads: 0,
                restart_required: Vec::new(),
                last_failure: None,
            }),
            reloading: tokio::sync::Mutex::new(()),
        }
    }
}

impl ConfigState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Keys whose values are credentials or may carry them (webhook URLs, connection strings).
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "key", "token", "secret", "password", "url", "proxy", "headers",
    ]
    .iter()
    .any(|s| k.contains(s))
        && !matches!(
            k.as_str(),
            "base_url" | "key_file" | "token_file" | "master_key_file"
        )
}

fn redact(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| {
                    let shown = if secret_key(k) && !v.is_table() && !v.is_array() {
                        serde_json::Value::from("[redacted]")
                    } else {
                        redact(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        toml::Value::Array(a) => a.iter().map(redact).collect(),
        toml::Value::String(s) => s.clone().into(),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Float(f) => (*f).into(),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Datetime(d) => d.to_string().into(),
    }
}

impl Control {
    /// Records the file the running config came from, so reloads can read it again.
    pub fn track_config(&self, path: Option<PathBuf>, loaded: Option<Loaded>) {
        let mut a = self.config.lock();
        a.path = path;
        a.loaded = loaded;
        a.loaded_at = now_ms();
    }

    /// Lets reloads re-read the TLS certificate too; its expiry goes to health and metrics.
    pub fn set_tls(&self, tls: pylon_proxy::tls::Tls) {
        self.gateway.report_tls(tls.not_after());
        let _ = self.tls.set(tls);
    }

    /// The config in force and the record of reloads.
    pub fn config_status(&self) -> ConfigStatus {
        let a = self.config.lock();
        ConfigStatus {
            source: a.path.as_ref().map(|p| p.display().to_string()),
            sha256: a.loaded.as_ref().map(|l| l.sha256.clone()),
            loaded_at: a.loaded_at,
            reloads: a.reloads,
            restart_required: a.restart_required.clone(),
            last_failure: a.last_failure.clone(),
            config: a.loaded.as_ref().map_or(serde_json::Value::Null, |l| {
                redact(&toml::Value::Table(l.table.clone()))
            }),
        }
    }

    /// Reloads the config file whenever it changes (its modification time or size, checked
    /// every second; a Kubernetes ConfigMap's symlink swap counts), until the task is aborted.
    pub async fn watch_config(self: Arc<Self>) {
        let Some(path) = self.config.lock().path.clone() else {
            return;
        };
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut seen = stamp(&path);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now.is_some() && now != seen {
                seen = now;
                // The outcome is logged, counted and shown by `config_status`.
                let _ = self.reload_config().await;
            }
        }
    }

    /// Reads the config file again and puts what changed in force: checked first (the same
    /// file:line diagnostics as `pylon config check`), then swapped whole. Providers that did not
    /// change keep their connections, credentials and breakers. A refused file leaves the
    /// running config in force, and is counted, logged and shown by [`Control::config_status`].
    pub async fn reload_config(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.config.reloading.lock().await;
        let reloads = &self.gateway.metrics().config_reloads;
        let result = self.reload_locked().await;
        match &result {
            Ok(r) => {
                reloads.with_label_values(&["config", "ok"]).inc();
                tracing::info!(target: "pylon::control", sha256 = %r.sha256, applied = ?r.applied, restart_required = ?r.restart_required, "config reloaded");
            }
            Err(e) => {
                reloads.with_label_values(&["config", "error"]).inc();
                tracing::warn!(target: "pylon::control", error = %e, "config reload refused; the running config is kept");
                self.config.lock().last_failure = Some(Failure {
                    at: now_ms(),
                    error: e.to_string(),
                });
            }
        }
        if let Some(tls) = self.tls.get() {
            let reloaded = tls.reload();
            self.gateway.report_tls(tls.not_after());
            match reloaded {
                Ok(()) => reloads.with_label_values(&["tls", "ok"]).inc(),
                Err(e) => {
                    reloads.with_label_values(&["tls", "error"]).inc();
                    tracing::warn!(target: "pylon::control", error = %e, "TLS reload failed; keeping the current certificate");
                }
            }
        }
        result
    }

    async fn reload_locked(&self) -> Result<Reloaded, ReloadError> {
        let (path, before) = {
            let a = self.config.lock();
            (a.path.clone(), a.loaded.clone())
        };
        let (Some(path), Some(before)) = (path, before) else {
            return Err(ReloadError::NoFile);
        };
        let read = path.clone();
        let loaded = tokio::task::spawn_blocking(move || pylon_config::load_file(&read))
            .await
            .map_err(|e| ReloadError::Invalid(e.to_string()))?
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let changed = pylon_config::changes(&before.table, &loaded.table);
        let (restart_required, applied): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|c| pylon_config::needs_restart(c));
        let cache_built = before.config.cache.enabled;
        let (restart_required, applied): (Vec<String>, Vec<String>) = if cache_built {
            (restart_required, applied)
        } else {
            // Without a cache built at start, turning it on needs one.
            let (later, now) = applied
                .into_iter()
                .partition(|c| c == "cache.enabled" && loaded.config.cache.enabled);
            (restart_required.into_iter().chain(later).collect(), now)
        };
        if !applied.is_empty() {
            let unchanged = |name: &str| !applied.iter().any(|c| c == &format!("providers.{name}"));
            let gateway = &self.gateway;
            self.rollouts
                .reconfigure(&loaded.config, |all| gateway.reconfigure(all, &unchanged))
                .await?;
            self.alerts.reconfigure(&loaded.config).await;
            if applied.iter().any(|c| c == "log.level") {
                if let Some(level) = self.log_level.get() {
                    if let Err(e) = level.set(&loaded.config.log.level) {
                        tracing::warn!(target: "pylon::control", error = %e, "the reloaded log level is not a filter; keeping the current one");
                    }
                }
            }
            // Rebuilt providers start from the file's credentials: put the stored ones back.
            if let Err(e) = self.load_credentials().await {
                tracing::warn!(target: "pylon::control", error = %e, "could not reload stored credentials after a config reload");
            }
            self.gateway.refresh_credentials().await;
        }
        let result = if applied.is_empty() && restart_required.is_empty() {
            "unchanged"
        } else {
            "applied"
        };
        let out = Reloaded {
            result,
            sha256: loaded.sha256.clone(),
            applied,
            restart_required,
        };
        let mut a = self.config.lock();
        for r in &out.restart_required {
            if !a.restart_required.contains(r) {
                a.restart_required.push(r.clone());
            }
        }
        if result == "applied" {
            a.reloads += 1;
            a.loaded_at = now_ms();
        }
        // The table of what is in force: settings read at start keep their running values
        // only in effect, but the next reload compares with this file.
        a.loaded = Some(loaded);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_the_rest_shown() {
        let t: toml::Table = "[data]\nstore_url = \"postgres://u:p@h/db\"\ndir = \"/d\"\n\
             [[providers]]\nname = \"o\"\napi_key = \"sk-1\"\nbase_url = \"http://x\"\n"
            .parse()
            .unwrap_or_default();
        let shown = redact(&toml::Value::Table(t)).to_string();
        assert!(!shown.contains("sk-1") && !shown.contains("u:p"), "{shown}");
        assert!(
            shown.contains("http://x") && shown.contains("/d"),
            "{shown}"
        );
    }
}
