//! Usage: one event per finished request, handed to the control plane through a bounded queue.
//!
//! The request path never waits: when the queue is full the event is dropped and counted.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

/// What one finished request used.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    /// Unix seconds when it finished.
    pub at: i64,
    /// `-` when auth is off.
    pub key_id: String,
    pub team_id: Option<String>,
    /// The model name the client asked for.
    pub model: String,
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// US dollars; 0 when the model's price is unknown.
    pub cost_usd: f64,
}

/// The sending side of the usage queue.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    tx: std::sync::OnceLock<mpsc::Sender<UsageEvent>>,
    dropped: AtomicU64,
}

impl Sink {
    /// Connects the queue (once, at start-up).
    pub fn connect(&self, tx: mpsc::Sender<UsageEvent>) {
        let _ = self.tx.set(tx);
    }

    /// Hands an event over without waiting.
    pub fn send(&self, e: UsageEvent) {
        if let Some(tx) = self.tx.get() {
            if tx.try_send(e).is_err() {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(target: "pylon::usage", dropped = n, "usage queue full: events dropped (the store is too slow)");
                }
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
