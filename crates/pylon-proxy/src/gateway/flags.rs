//! The flag set in force: replaced whole when the file or the store changes; every change bumps
//! a version that SSE subscribers (OFREP change push) are woken by.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pylon_policy::flags::FlagSet;

/// A flag set and what identifies it.
#[derive(Debug, Default)]
pub struct LoadedFlags {
    pub set: FlagSet,
    /// Changes whenever any definition changes (a hash of them all).
    pub etag: String,
    /// Counts installs that changed something.
    pub version: u64,
    /// When it was installed (Unix seconds).
    pub changed_at: u64,
}

/// The current flags and the change signal.
pub(crate) struct FlagState {
    current: ArcSwap<LoadedFlags>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for FlagState {
    fn default() -> Self {
        FlagState {
            current: ArcSwap::from_pointee(LoadedFlags::default()),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl FlagState {
    pub fn current(&self) -> Arc<LoadedFlags> {
        self.current.load_full()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Installs `set` unless it is the one in force; whether it changed.
    pub fn install(&self, set: FlagSet, etag: String) -> bool {
        let old = self.current.load();
        if old.etag == etag {
            return false;
        }
        let version = old.version + 1;
        let changed_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.current.store(Arc::new(LoadedFlags {
            set,
            etag,
            version,
            changed_at,
        }));
        self.changes.send_replace(version);
        true
    }
}
