//! The one structured log line per request, written when the request (or its stream) ends.

use std::time::{Duration, Instant};

use pylon_types::openai::Usage;

/// What one request did; logged on drop so streams are logged when they end.
#[derive(Debug)]
pub(crate) struct Record {
    pub request_id: String,
    pub route: &'static str,
    pub model: String,
    pub key_id: Option<String>,
    pub provider: Option<String>,
    pub served_model: Option<String>,
    pub status: u16,
    pub attempts: u32,
    pub stream: bool,
    pub usage: Option<Usage>,
    pub started: Instant,
    pub ttfb: Option<Duration>,
    /// `ok`, `error`, `cancelled` (client went away) or `broken` (upstream failed mid-stream).
    pub outcome: &'static str,
    pub error: Option<String>,
}

impl Record {
    pub fn new(route: &'static str, request_id: String, started: Instant) -> Self {
        Record {
            request_id,
            route,
            model: String::new(),
            key_id: None,
            provider: None,
            served_model: None,
            status: 200,
            attempts: 0,
            stream: false,
            usage: None,
            started,
            ttfb: None,
            outcome: "ok",
            error: None,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let usage = self.usage.unwrap_or_default();
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let ttfb_ms = self.ttfb.map(|d| d.as_secs_f64() * 1000.0);
        let level_error = self.status >= 500 || self.outcome == "broken";
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "pylon::request",
                    request_id = %self.request_id,
                    route = self.route,
                    model = %self.model,
                    key_id = self.key_id.as_deref(),
                    provider = self.provider.as_deref(),
                    served_model = self.served_model.as_deref(),
                    status = self.status,
                    outcome = self.outcome,
                    stream = self.stream,
                    attempts = self.attempts,
                    latency_ms,
                    ttfb_ms,
                    input_tokens = usage.prompt_tokens,
                    output_tokens = usage.completion_tokens,
                    error = self.error.as_deref(),
                    "request"
                )
            };
        }
        if level_error {
            emit!(warn);
        } else {
            emit!(info);
        }
    }
}
