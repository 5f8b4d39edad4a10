//! The one structured log line per request, written when the request (or its stream) ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pylon_state::Settlement;
use pylon_types::openai::Usage;

use crate::limits::Admitted;
use crate::snapshot::Gateway;
use crate::UsageEvent;

/// What admission took and where usage goes; settled when the request ends.
pub(crate) struct Accounting {
    pub gw: Arc<Gateway>,
    pub team_id: Option<String>,
    pub admitted: Admitted,
    /// A rough input size, for streams cancelled before the provider reported usage.
    pub input_estimate: u64,
}

/// What one request did; logged on drop so streams are logged when they end.
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
    /// Content events relayed, the output estimate when a stream ends without usage.
    pub streamed_events: u64,
    pub acct: Option<Accounting>,
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
            streamed_events: 0,
            acct: None,
        }
    }
}

impl Record {
    /// Settles limits and budgets and hands the usage event over.
    fn account(&mut self, acct: Accounting) {
        let usage = self.usage.or_else(|| {
            // A stream cut short: the provider still billed what it generated.
            (self.provider.is_some() && self.outcome != "error")
                .then(|| Usage::new(acct.input_estimate, self.streamed_events))
        });
        let usage = usage.unwrap_or_default();
        let priced_as = self.served_model.as_deref().unwrap_or(&self.model);
        let cost = acct.gw.prices.cost(priced_as, usage).unwrap_or(0.0);
        let micros = (cost * 1e6).round() as i64;
        let a = acct.admitted;
        let actual = usage.total_tokens as i64;
        let settlement = Settlement {
            corrections: a
                .token_buckets
                .into_iter()
                .map(|(k, r)| (k, r, actual - a.estimated_tokens as i64))
                .collect(),
            release: a.release,
            spend: if micros > 0 {
                a.caps
                    .into_iter()
                    .map(|(k, ttl)| (k, micros, ttl))
                    .collect()
            } else {
                Vec::new()
            },
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        if !acct.gw.limiter.settle_if_local(&settlement, now_ms) {
            let gw = acct.gw.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { gw.limiter.settle(&settlement, now_ms).await });
            }
        }
        acct.gw.usage.send(UsageEvent {
            at: crate::auth::unix_now(),
            key_id: self.key_id.clone().unwrap_or_else(|| "-".into()),
            team_id: acct.team_id,
            model: self.model.clone(),
            status: self.status,
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            cost_usd: cost,
        });
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some(acct) = self.acct.take() {
            self.account(acct);
        }
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
