//! A deterministic model provider speaking the OpenAI, Anthropic and Gemini wire formats.
//!
//! Used by tests, `pylon demo` and the benchmarks. Its behaviour (latency, time to first token,
//! delay between chunks, error status and rate, dropped connections) is steered in-process through
//! [`Mock::set`] or over HTTP with `PUT /mock/behaviour`; `GET /mock/stats` reports what it saw.

mod anthropic;
mod cloud;
mod gemini;
mod handlers;
mod script;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cloud::{AWS_ACCESS_KEY_ID, AWS_REGION, AWS_SECRET_ACCESS_KEY, FILTERED};
pub use handlers::router;

/// How the mock behaves; every field has a harmless default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Wait before the response headers.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Wait before the first chunk of a stream (and before a non-stream body).
    #[serde(with = "humantime_serde")]
    pub ttft: Duration,
    /// Wait between stream chunks.
    #[serde(with = "humantime_serde")]
    pub chunk_delay: Duration,
    /// Answer with this status instead of a completion.
    pub error_status: Option<u16>,
    /// Share of requests that get `error_status` (deterministic: spread evenly by request count).
    pub error_rate: f64,
    /// `Retry-After` seconds sent with errors.
    pub retry_after: Option<u64>,
    /// A raw `Retry-After` value sent with errors instead (providers send odd ones: `1e300`,
    /// `99999999999999999999`, HTTP dates, negative numbers).
    pub retry_after_raw: Option<String>,
    /// Break the connection after this many stream chunks (0: before the first).
    pub drop_after_chunks: Option<usize>,
    /// Reply text instead of the default echo.
    pub reply: Option<String>,
    /// Repeat the reply this many times (long streams for tests and benchmarks).
    pub repeat: usize,
    /// Anthropic answers report this many input tokens read from the prompt cache.
    pub cache_read_tokens: u64,
    /// OpenAI streams carry no usage even when asked for (as some compatible servers do).
    pub no_usage: bool,
    /// Share of requests that misbehave as providers do, each in the next way of five: a 500,
    /// a 429 with `Retry-After: 0.05`, a connection reset before the first byte, a first byte
    /// that never comes (10 s), and a stream that breaks after two chunks.
    pub chaos: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            latency: Duration::ZERO,
            ttft: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            error_status: None,
            error_rate: 1.0,
            retry_after: None,
            retry_after_raw: None,
            drop_after_chunks: None,
            reply: None,
            repeat: 1,
            cache_read_tokens: 0,
            no_usage: false,
            chaos: 0.0,
        }
    }
}

/// What the mock has seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Requests received on any model endpoint.
    pub requests: u64,
    /// Streams that ran to their end.
    pub streams_completed: u64,
    /// Streams whose client went away before the end.
    pub streams_cancelled: u64,
    /// Requests answered with an injected error.
    pub errors: u64,
    /// Faults injected by `chaos`: 500, 429, reset, stall, mid-stream drop.
    pub faults: [u64; 5],
    /// The credential header of the last request (`authorization`, `x-api-key` or `x-goog-api-key`).
    pub last_credential: Option<String>,
    /// The `x-request-id` of the last request.
    pub last_request_id: Option<String>,
    /// The `traceparent` of the last request.
    pub last_traceparent: Option<String>,
    /// The path of the last request.
    pub last_path: Option<String>,
    /// The last model request's path and query exactly as received (Azure's deployment paths).
    #[serde(default)]
    pub last_uri: Option<String>,
    /// The body of the last request.
    pub last_body: Option<serde_json::Value>,
    /// Connections accepted by [`serve_h2`].
    pub connections: u64,
    /// Every header of the last request (lower-case names; credentials included, it is a mock).
    pub last_headers: std::collections::BTreeMap<String, String>,
}

/// A mock provider's shared state.
#[derive(Debug, Default)]
pub struct Mock {
    behaviour: RwLock<Behaviour>,
    seen: Mutex<Stats>,
    counter: AtomicU64,
    chaos_counter: AtomicU64,
    faults: AtomicU64,
}

impl Mock {
    /// A mock with default behaviour.
    pub fn new() -> Arc<Self> {
        Arc::new(Mock::default())
    }

    /// Replaces the behaviour.
    pub fn set(&self, b: Behaviour) {
        if let Ok(mut guard) = self.behaviour.write() {
            *guard = b;
        }
    }

    /// The current behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.behaviour.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> Stats {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Forgets statistics and restores default behaviour.
    pub fn reset(&self) {
        self.set(Behaviour::default());
        if let Ok(mut s) = self.seen.lock() {
            *s = Stats::default();
        }
        self.counter.store(0, Ordering::Relaxed);
    }

    /// The fault request number `n` gets under `chaos`, if any: 0..5 as [`Behaviour::chaos`].
    fn chaos(&self, b: &Behaviour) -> Option<u64> {
        if b.chaos <= 0.0 {
            return None;
        }
        let n = self.chaos_counter.fetch_add(1, Ordering::Relaxed) + 1;
        let rate = b.chaos.clamp(0.0, 1.0);
        let hit = (n as f64 * rate).floor() > ((n - 1) as f64 * rate).floor();
        hit.then(|| {
            let k = self.faults.fetch_add(1, Ordering::Relaxed);
            k % 5
        })
    }

    fn record(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.seen.lock() {
            f(&mut s);
        }
    }

    /// Whether request number `n` (1-based) gets the injected error.
    fn fails(&self, b: &Behaviour) -> Option<u16> {
        let status = b.error_status?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let rate = b.error_rate.clamp(0.0, 1.0);
        let hit = (n as f64 * rate).floor() > ((n - 1) as f64 * rate).floor();
        hit.then_some(status)
    }
}

/// Serves the mock on a bound listener until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, mock: Arc<Mock>) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(mock)).await
}

/// Serves the mock over HTTP/2 only (prior knowledge, `h2c`) with at most `max_streams`
/// concurrent streams per connection, as providers behind HTTP/2 load balancers do.
pub async fn serve_h2(
    listener: tokio::net::TcpListener,
    mock: Arc<Mock>,
    max_streams: u32,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let app = router(mock.clone());
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        mock.record(|s| s.connections += 1);
        let app = app.clone();
        let svc = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut app = app.clone();
            async move {
                use tower::Service;
                app.call(req.map(axum::body::Body::new)).await
            }
        });
        tokio::spawn(async move {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.max_concurrent_streams(max_streams);
            let _ = b
                .serve_connection(
                    TokioIo::new(tcp),
                    hyper_util::service::TowerToHyperService::new(svc),
                )
                .await;
        });
    }
}
