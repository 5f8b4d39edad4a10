//! Feature flags in the control plane: the `[flags] file` (flagd format) plus the flags made
//! through the admin API (in the store, shared by instances, each change audited), merged —
//! the store wins on a shared key — and installed into the gateway whenever either changes.
//! A file that stops parsing is refused and the flags in force are kept.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pylon_policy::flags::FlagSet;
use pylon_proxy::Gateway;
use pylon_store::{FlagChange, Store, StoreError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What a flag operation could not do.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("{0}")]
    Invalid(String),
    #[error("no flag named `{0}`")]
    Unknown(String),
    #[error(
        "flag `{0}` is defined in the flags file; change it there (the admin API can disable it)"
    )]
    FromFile(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Watches the file and the store and keeps the gateway's flags current.
pub struct Flags {
    file: Option<PathBuf>,
    poll: Duration,
    store: Store,
    gateway: Arc<Gateway>,
    /// What was last loaded: the file's modification time and the store's change count.
    seen: Mutex<(Option<SystemTime>, (i64, i64))>,
    /// Serializes reloads and admin changes.
    changing: tokio::sync::Mutex<()>,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl Flags {
    /// The flags of `config` over `store`, installed into `gateway`.
    pub fn new(config: &pylon_config::Flags, store: Store, gateway: Arc<Gateway>) -> Flags {
        Flags {
            file: config.file.clone(),
            poll: config.poll,
            store,
            gateway,
            seen: Mutex::new((None, (-1, -1))),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    fn file_text(&self) -> Result<Option<(String, Option<SystemTime>)>, FlagError> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| FlagError::Invalid(format!("{}: cannot read: {e}", path.display())))?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Some((text, mtime)))
    }

    /// Builds the merged set from the file and the store and installs it; whether it changed.
    pub async fn reload(&self) -> Result<bool, FlagError> {
        let _one = self.changing.lock().await;
        self.reload_locked().await
    }

    async fn reload_locked(&self) -> Result<bool, FlagError> {
        let version = self.store.flags_version().await?;
        let rows = self.store.flags().await?;
        let file = self.file_text()?;
        let mut hash = Sha256::new();
        let mut set = match &file {
            Some((text, _)) => {
                hash.update(text.as_bytes());
                let path = self
                    .file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                FlagSet::parse(text).map_err(|e| FlagError::Invalid(format!("{path}: {e}")))?
            }
            None => FlagSet::default(),
        };
        for row in &rows {
            hash.update([0]);
            hash.update(row.key.as_bytes());
            hash.update([0]);
            hash.update(row.definition.as_bytes());
            let def: Value = serde_json::from_str(&row.definition)
                .map_err(|e| FlagError::Invalid(format!("stored flag `{}`: {e}", row.key)))?;
            set.insert(&row.key, &def)
                .map_err(|e| FlagError::Invalid(e.to_string()))?;
        }
        let etag = format!("{:x}", hash.finalize());
        let n = set.len();
        let changed = self.gateway.install_flags(set, etag);
        if let Ok(mut s) = self.seen.lock() {
            *s = (file.and_then(|(_, m)| m), version);
        }
        if changed {
            tracing::info!(target: "pylon::flags", flags = n, "flags loaded");
        }
        Ok(changed)
    }

    /// Re-reads when the file or the store changed, every `poll`, until aborted.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let mtime = self
                .file
                .as_ref()
                .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
            let version = match self.store.flags_version().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(target: "pylon::flags", error = %e, "cannot read flag changes from the store; keeping the flags in force");
                    continue;
                }
            };
            let seen = self.seen.lock().map(|s| *s).unwrap_or((None, (-1, -1)));
            if seen == (mtime, version) && !failing {
                continue;
            }
            match self.reload().await {
                Ok(_) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::error!(target: "pylon::flags", error = %e, "flag definitions refused; the flags in force are kept");
                    }
                    failing = true;
                    // Don't retry the same broken input every tick.
                    if let Ok(mut s) = self.seen.lock() {
                        *s = (mtime, version);
                    }
                }
            }
        }
    }

    /// Every flag in force with its definition and where it comes from.
    pub async fn list(&self) -> Result<Vec<Value>, FlagError> {
        let stored: Vec<String> = self
            .store
            .flags()
            .await?
            .into_iter()
            .map(|r| r.key)
            .collect();
        let flags = self.gateway.flags();
        Ok(flags
            .set
            .keys()
            .map(|k| {
                json!({
                    "key": k,
                    "source": if stored.iter().any(|s| s == k) { "store" } else { "file" },
                    "definition": flags.set.definition(k),
                })
            })
            .collect())
    }

    /// Creates or replaces a flag with a flagd definition; `actor` is recorded.
    pub async fn put(&self, key: &str, definition: Value, actor: &str) -> Result<Value, FlagError> {
        if !valid_key(key) {
            return Err(FlagError::Invalid(
                "a flag key is 1 to 128 letters, digits or -_.:".into(),
            ));
        }
        // Validate before anything is stored: a definition that does not compile is refused.
        let mut check = FlagSet::default();
        check
            .insert(key, &definition)
            .map_err(|e| FlagError::Invalid(e.to_string()))?;
        let exists = self.gateway.flags().set.definition(key).is_some();
        self.change(
            key,
            if exists { "update" } else { "create" },
            Some(definition),
            actor,
        )
        .await?;
        Ok(json!({"key": key, "definition": self.gateway.flags().set.definition(key)}))
    }

    /// Turns a flag off (or on) without losing its definition.
    pub async fn set_state(
        &self,
        key: &str,
        enabled: bool,
        actor: &str,
    ) -> Result<Value, FlagError> {
        let mut def = self
            .gateway
            .flags()
            .set
            .definition(key)
            .cloned()
            .ok_or_else(|| FlagError::Unknown(key.to_owned()))?;
        def["state"] = json!(if enabled { "ENABLED" } else { "DISABLED" });
        self.change(
            key,
            if enabled { "enable" } else { "disable" },
            Some(def),
            actor,
        )
        .await?;
        Ok(json!({"key": key, "definition": self.gateway.flags().set.definition(key)}))
    }

    /// Deletes a flag made through the admin API.
    pub async fn delete(&self, key: &str, actor: &str) -> Result<(), FlagError> {
        let stored = self.store.flags().await?.iter().any(|r| r.key == key);
        if !stored {
            return Err(if self.gateway.flags().set.definition(key).is_some() {
                FlagError::FromFile(key.to_owned())
            } else {
                FlagError::Unknown(key.to_owned())
            });
        }
        self.change(key, "delete", None, actor).await
    }

    async fn change(
        &self,
        key: &str,
        action: &str,
        definition: Option<Value>,
        actor: &str,
    ) -> Result<(), FlagError> {
        let _one = self.changing.lock().await;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.store
            .change_flag(&FlagChange {
                key: key.to_owned(),
                at,
                actor: actor.to_owned(),
                action: action.to_owned(),
                definition: definition.map(|d| d.to_string()),
            })
            .await?;
        tracing::info!(target: "pylon::flags", flag = key, action, actor, "flag changed");
        self.reload_locked().await.map(drop)
    }

    /// A flag's audit trail, newest first.
    pub async fn history(&self, key: &str) -> Result<Vec<Value>, FlagError> {
        Ok(self
            .store
            .flag_history(key, 100)
            .await?
            .into_iter()
            .map(|c| {
                json!({
                    "at": c.at, "actor": c.actor, "action": c.action,
                    "definition": c.definition.and_then(|d| serde_json::from_str::<Value>(&d).ok()),
                })
            })
            .collect())
    }
}
