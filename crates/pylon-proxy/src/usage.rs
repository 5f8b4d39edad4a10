//! One event per finished AI request, handed to the control plane (usage ledger and request
//! log) through a bounded queue.
//!
//! The request path never waits: when the queue is full the event is dropped and counted
//! (`pylon_request_log_dropped_total`), never queued without bound.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

/// What one finished request did: a request-log row and the input of the usage aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestEvent {
    /// Unix milliseconds when it finished.
    pub at_ms: i64,
    pub request_id: String,
    /// `-` when auth is off or the key did not authenticate.
    pub key_id: String,
    pub user: Option<String>,
    pub team_id: Option<String>,
    /// The endpoint, e.g. `/v1/chat/completions`.
    pub route: &'static str,
    /// The model name the client asked for.
    pub model: String,
    /// The provider's model that answered.
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub status: u16,
    /// `ok`, `error`, `cancelled` or `broken`.
    pub outcome: &'static str,
    pub error_class: Option<&'static str>,
    pub error: Option<String>,
    pub latency_ms: f64,
    /// Time to the first byte (non-stream) or first event (stream) of the answering attempt.
    pub ttft_ms: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// US dollars; 0 when the model's price is unknown.
    pub cost_usd: f64,
    /// `hit`, `miss` or `bypass` once a response cache is in front; `None` without one.
    pub cache: Option<&'static str>,
    pub attempts: u32,
    /// The fallback model that served, if the asked-for one could not.
    pub fallback: Option<String>,
    pub stream: bool,
    pub trace_id: Option<String>,
}

/// The sending side of the request queue.
#[derive(Debug)]
pub(crate) struct Sink {
    tx: std::sync::OnceLock<mpsc::Sender<RequestEvent>>,
    dropped: AtomicU64,
    dropped_metric: pylon_telemetry::prometheus::IntCounter,
}

impl Sink {
    pub fn new(dropped_metric: pylon_telemetry::prometheus::IntCounter) -> Sink {
        Sink {
            tx: std::sync::OnceLock::new(),
            dropped: AtomicU64::new(0),
            dropped_metric,
        }
    }

    /// Connects the queue (once, at start-up).
    pub fn connect(&self, tx: mpsc::Sender<RequestEvent>) {
        let _ = self.tx.set(tx);
    }

    /// Hands an event over without waiting.
    pub fn send(&self, e: RequestEvent) {
        if let Some(tx) = self.tx.get() {
            if tx.try_send(e).is_err() {
                self.dropped_metric.inc();
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(target: "pylon::usage", dropped = n, "request queue full: request-log rows and usage dropped (the store is too slow)");
                }
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting in the queue.
    pub fn pending(&self) -> usize {
        self.tx
            .get()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }
}
