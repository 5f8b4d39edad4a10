//! One event per finished AI request, handed to the control plane (usage ledger and request
//! log) through a bounded queue.
//!
//! The request path never waits: when the queue is full the event's request-log row is dropped
//! and counted (`pylon_request_log_dropped_total`), but its usage — what budgets and bills are
//! made of — is added to a small aggregate per (day, key, model) that the ledger takes next.

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
    /// What a semantic cache hit matched (boxed: most requests have none).
    pub semantic: Option<Box<SemanticAudit>>,
}

/// The audit of one semantic cache hit.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticAudit {
    /// Cosine similarity between the question and the one it matched.
    pub similarity: f32,
    /// The matched question (truncated).
    pub matched: String,
    /// The cache entry that answered.
    pub entry: String,
    /// The asked question's id in the cache (a hash, never the text).
    pub question: String,
}

/// Usage of requests whose events did not fit in the queue, summed per hour, key, team, model
/// and provider (what the daily usage and the hourly rollups are made of).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageTotal {
    /// Unix milliseconds of the latest request in the group.
    pub at_ms: i64,
    pub key_id: String,
    pub team_id: Option<String>,
    pub model: String,
    pub provider: Option<String>,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms_sum: f64,
}

/// The group of an overflowed event: hour, key, team, model, provider.
type Group = (i64, String, Option<String>, String, Option<String>);

/// Most (day, key, model) groups held beside a full queue; beyond, usage is lost (and logged).
const MAX_OVERFLOW_GROUPS: usize = 50_000;

/// The sending side of the request queue.
#[derive(Debug)]
pub(crate) struct Sink {
    tx: std::sync::OnceLock<mpsc::Sender<RequestEvent>>,
    dropped: AtomicU64,
    dropped_metric: pylon_telemetry::prometheus::IntCounter,
    /// Usage of events that did not fit, keyed by (day number, key, model).
    overflow: std::sync::Mutex<std::collections::HashMap<Group, UsageTotal>>,
}

impl Sink {
    pub fn new(dropped_metric: pylon_telemetry::prometheus::IntCounter) -> Sink {
        Sink {
            tx: std::sync::OnceLock::new(),
            dropped: AtomicU64::new(0),
            dropped_metric,
            overflow: std::sync::Mutex::default(),
        }
    }

    /// Connects the queue (once, at start-up).
    pub fn connect(&self, tx: mpsc::Sender<RequestEvent>) {
        let _ = self.tx.set(tx);
    }

    /// Hands an event over without waiting.
    pub fn send(&self, e: RequestEvent) {
        let Some(tx) = self.tx.get() else { return };
        let Err(mpsc::error::TrySendError::Full(e)) = tx.try_send(e) else {
            return;
        };
        self.dropped_metric.inc();
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(target: "pylon::usage", dropped = n, "request queue full: request-log rows dropped, usage kept in aggregate (the store is too slow)");
        }
        let Ok(mut groups) = self.overflow.lock() else {
            return;
        };
        let failed = e.status >= 400 || e.outcome == "broken";
        let group = (
            e.at_ms.div_euclid(3_600_000),
            e.key_id,
            e.team_id,
            e.model,
            e.provider,
        );
        if groups.len() >= MAX_OVERFLOW_GROUPS && !groups.contains_key(&group) {
            tracing::warn!(target: "pylon::usage", "usage overflow full: usage of a request lost");
            return;
        }
        let t = groups
            .entry(group)
            .or_insert_with_key(|(_, key, team, model, provider)| UsageTotal {
                at_ms: e.at_ms,
                key_id: key.clone(),
                team_id: team.clone(),
                model: model.clone(),
                provider: provider.clone(),
                requests: 0,
                errors: 0,
                input_tokens: 0,
                output_tokens: 0,
                cost_usd: 0.0,
                latency_ms_sum: 0.0,
            });
        t.at_ms = t.at_ms.max(e.at_ms);
        t.requests += 1;
        t.errors += u64::from(failed);
        t.input_tokens += e.input_tokens;
        t.output_tokens += e.output_tokens;
        t.cost_usd += e.cost_usd;
        t.latency_ms_sum += e.latency_ms;
    }

    /// Takes the usage that did not fit in the queue.
    pub fn take_overflow(&self) -> Vec<UsageTotal> {
        self.overflow
            .lock()
            .map(|mut g| g.drain().map(|(_, v)| v).collect())
            .unwrap_or_default()
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
