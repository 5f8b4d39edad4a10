//! What one request did, reported when it ends (a stream ends with its last event): limits and
//! spend settled, metrics, the trace span, one structured log line, one request-log row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pylon_state::{Rate, Settlement};
use pylon_telemetry::trace::Attribute;
use pylon_telemetry::{status_class, SpanHandle};
use pylon_types::openai::Usage;

use crate::gateway::Gateway;
use crate::RequestEvent;

/// What admission took, to be settled when the request ends.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    pub release: Vec<String>,
    pub token_buckets: Vec<(String, Rate)>,
    pub estimated_tokens: u64,
    pub caps: Vec<(String, Duration)>,
    /// `x-ratelimit-*` headers for the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Where the admission was taken; the settlement goes there too.
    pub origin: pylon_state::Origin,
}

/// What admission took; settled when the request ends.
pub(crate) struct Accounting {
    pub admitted: Admitted,
    /// A rough input size, for streams cancelled before the provider reported usage.
    pub input_estimate: u64,
}

/// What one request did; reported on drop so streams are reported when they end.
pub(crate) struct Record {
    pub gw: Arc<Gateway>,
    pub request_id: String,
    pub route: &'static str,
    /// The model name the client sent.
    pub model: String,
    /// The model's metrics label (`-` until the model resolved).
    pub metric_model: String,
    pub key_id: Option<String>,
    pub user: Option<String>,
    pub team_id: Option<String>,
    pub provider: Option<String>,
    pub served_model: Option<String>,
    /// The fallback model that served, when the asked-for one could not.
    pub fallback: Option<String>,
    pub status: u16,
    pub attempts: u32,
    pub stream: bool,
    pub usage: Option<Usage>,
    pub started: Instant,
    pub ttfb: Option<Duration>,
    /// Time spent waiting on providers, summed over attempts.
    pub upstream: Duration,
    /// `ok`, `error`, `cancelled` (client went away) or `broken` (upstream failed mid-stream).
    pub outcome: &'static str,
    /// A stable error class (`rate_limited`, `upstream`, …) for grouping.
    pub error_class: Option<&'static str>,
    pub error: Option<String>,
    /// Content events relayed, the output estimate when a stream ends without usage.
    pub streamed_events: u64,
    pub acct: Option<Accounting>,
    pub trace: Option<SpanHandle>,
    /// The client's body, kept only for models with `log_bodies`.
    pub prompt: Option<Bytes>,
    pub completion: Option<Bytes>,
    /// `hit`, `miss` or `bypass` when the model is cached.
    pub cache: Option<&'static str>,
    /// Whether the request becomes a request-log row (failed authentications do not).
    pub log_row: bool,
    /// The rollout arm that served the request, counted for the judge when it ends.
    pub arm: Option<(Arc<crate::gateway::ArmState>, crate::gateway::Arm)>,
    /// A shadow copy: counted for its rollout only, never billed, logged or stored.
    pub shadow: bool,
    /// What a semantic cache hit matched.
    pub semantic: Option<Box<crate::usage::SemanticAudit>>,
    /// The route's in-flight gauge, looked up once.
    in_flight: pylon_telemetry::prometheus::IntGauge,
}

impl Record {
    pub fn new(
        gw: Arc<Gateway>,
        route: &'static str,
        request_id: String,
        started: Instant,
    ) -> Self {
        let in_flight = gw.metrics.in_flight.with_label_values(&[route]);
        in_flight.inc();
        gw.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Record {
            gw,
            request_id,
            route,
            model: String::new(),
            metric_model: "-".to_owned(),
            key_id: None,
            user: None,
            team_id: None,
            provider: None,
            served_model: None,
            fallback: None,
            // Until a response is made the request counts as cancelled: a request that ends any
            // other way (client gone, a panic unwinding) is never recorded as a success.
            status: 499,
            attempts: 0,
            stream: false,
            usage: None,
            started,
            ttfb: None,
            upstream: Duration::ZERO,
            outcome: "cancelled",
            error_class: None,
            error: None,
            streamed_events: 0,
            acct: None,
            trace: None,
            prompt: None,
            completion: None,
            cache: None,
            log_row: true,
            arm: None,
            shadow: false,
            semantic: None,
            in_flight,
        }
    }

    /// Records a finished step (auth, limits, cache) as a span, when tracing.
    pub fn step(
        &self,
        name: &'static str,
        start: Option<std::time::SystemTime>,
        error: Option<&crate::ProxyError>,
    ) {
        if let (Some(span), Some(start)) = (&self.trace, start) {
            span.step(name, start, error.map(ToString::to_string).as_deref());
        }
    }

    /// Pylon's own time so far: elapsed minus time spent waiting on providers.
    pub fn overhead(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.upstream)
    }

    /// Frees the request's Redis concurrency slots before its last bytes go out: settling on
    /// drop runs in a task the client's next request could overtake, and be refused as busy.
    /// In-process slots are settled synchronously on drop already.
    pub async fn release_slots(&mut self) {
        let Some(a) = self.acct.as_mut().map(|a| &mut a.admitted) else {
            return;
        };
        if a.release.is_empty() || a.origin != pylon_state::Origin::Redis {
            return;
        }
        let keys = std::mem::take(&mut a.release);
        // Boxed: only Redis-held slots get here, and inline its future would grow the request's.
        if !Box::pin(self.gw.limiter.release_now(&keys)).await {
            if let Some(a) = self.acct.as_mut() {
                a.admitted.release = keys;
            }
        }
    }

    /// Settles limits and budgets; returns the usage and its cost.
    fn account(&mut self, acct: Accounting) -> (Usage, f64) {
        // A hit sent nothing to a provider: no tokens or spend to settle.
        let hit = self.cache == Some("hit");
        let usage = self.usage.filter(|_| !hit).or_else(|| {
            // A stream cut short, or a request whose client left while a provider worked on it:
            // the provider still billed what it read and generated.
            let reached =
                self.provider.is_some() || (self.attempts > 0 && self.outcome == "cancelled");
            (reached && self.outcome != "error" && !hit)
                .then(|| Usage::new(acct.input_estimate, self.streamed_events))
        });
        let usage = usage.unwrap_or_default();
        let cost = self.cost(usage);
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
        let origin = a.origin;
        if !self.gw.limiter.settle_if_local(&settlement, now_ms, origin) {
            let gw = self.gw.clone();
            if tokio::runtime::Handle::try_current().is_ok() {
                self.gw.tasks.spawn(async move {
                    gw.limiter.settle(&settlement, now_ms, origin).await;
                });
            }
        }
        (usage, cost)
    }

    fn cost(&self, usage: Usage) -> f64 {
        let priced_as = self.served_model.as_deref().unwrap_or(&self.model);
        self.gw
            .settings()
            .prices
            .cost(priced_as, usage)
            .unwrap_or(0.0)
    }

    fn observe(&self, usage: Usage, cost: f64, total: Duration) {
        let m = &self.gw.metrics;
        let provider = self.provider.as_deref().unwrap_or("-");
        let model = self.metric_model.as_str();
        self.in_flight.dec();
        let series = m.request_series(self.route, model, provider);
        series.requests(m, self.status).inc();
        series.duration.observe(total.as_secs_f64());
        series
            .overhead
            .observe(total.saturating_sub(self.upstream).as_secs_f64());
        if usage.total_tokens > 0 {
            let (input, output) = series.tokens(m);
            input.inc_by(usage.prompt_tokens);
            output.inc_by(usage.completion_tokens);
        }
        if cost > 0.0 {
            series.cost(m).inc_by(cost);
        }
        if let Some(team) = self
            .team_id
            .as_deref()
            .or(self.key_id.as_ref().map(|_| "-"))
        {
            m.team_requests
                .with_label_values(&[team, status_class(self.status)])
                .inc();
            if usage.total_tokens > 0 {
                m.team_tokens
                    .with_label_values(&[team])
                    .inc_by(usage.total_tokens);
            }
            if cost > 0.0 {
                m.team_cost.with_label_values(&[team]).inc_by(cost);
            }
        }
        if let (Some(reqs), Some(key)) = (&m.key_requests, &self.key_id) {
            let team = self.team_id.as_deref().unwrap_or("-");
            reqs.with_label_values(&[key, team]).inc();
            if let Some(c) = m.key_cost.as_ref().filter(|_| cost > 0.0) {
                c.with_label_values(&[key, team]).inc_by(cost);
            }
        }
    }

    fn end_span(&self, span: &SpanHandle, usage: Usage) {
        let mut attrs = vec![
            Attribute::new("http.response.status_code", i64::from(self.status)),
            Attribute::new("pylon.attempts", i64::from(self.attempts)),
            Attribute::new("pylon.outcome", self.outcome),
            Attribute::new("gen_ai.usage.input_tokens", usage.prompt_tokens as i64),
            Attribute::new("gen_ai.usage.output_tokens", usage.completion_tokens as i64),
        ];
        if let Some(m) = &self.served_model {
            attrs.push(Attribute::new("gen_ai.response.model", m.clone()));
        }
        if let Some(p) = &self.provider {
            attrs.push(Attribute::new("gen_ai.provider.name", p.clone()));
        }
        if let Some(class) = self.error_class {
            attrs.push(Attribute::new("error.type", class));
        }
        if let Some(cache) = self.cache {
            attrs.push(Attribute::new("pylon.cache", cache));
        }
        span.set(attrs);
        if let Some(e) = &self.error {
            span.fail(e);
        }
        span.end();
    }

    fn log(&self, usage: Usage, latency_ms: f64) {
        let failed = self.status >= 400 || self.outcome == "broken";
        // Errors are always logged; successes may be sampled.
        let sample = self.gw.settings().success_sample;
        if !failed && sample < 1.0 && fastrand::f64() >= sample {
            return;
        }
        let ttfb_ms = self.ttfb.map(|d| d.as_secs_f64() * 1000.0);
        let trace_id = self.trace.as_ref().map(SpanHandle::trace_id);
        let prompt = self.prompt.as_deref().map(String::from_utf8_lossy);
        let completion = self.completion.as_deref().map(String::from_utf8_lossy);
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "pylon::request",
                    request_id = self.request_id.as_str(),
                    trace_id = trace_id.as_deref(),
                    route = self.route,
                    model = self.model.as_str(),
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
                    error_class = self.error_class,
                    cache = self.cache,
                    cache_similarity = self.semantic.as_ref().map(|s| s.similarity),
                    error = self.error.as_deref(),
                    prompt = prompt.as_deref(),
                    completion = completion.as_deref(),
                    "request"
                )
            };
        }
        if self.status >= 500 || self.outcome == "broken" {
            emit!(warn);
        } else {
            emit!(info);
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.gw
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let total = self.started.elapsed();
        let (usage, cost) = match self.acct.take() {
            Some(acct) => self.account(acct),
            None if self.cache == Some("hit") => (Usage::default(), 0.0),
            None => {
                let u = self.usage.unwrap_or_default();
                (u, self.cost(u))
            }
        };
        if let Some((state, arm)) = self.arm.take() {
            // Server-side failures only (a client's bad request says nothing of the arm); an
            // answer a fallback model had to give is the arm's failure too.
            let error = self.status >= 500 || self.outcome == "broken" || self.fallback.is_some();
            let latency = total.as_secs_f64();
            let ttft_ms = self
                .ttfb
                .filter(|_| self.stream)
                .map(|d| d.as_secs_f64() * 1000.0);
            state.observe(arm, error, latency * 1000.0, ttft_ms, cost);
        }
        if self.shadow {
            self.in_flight.dec();
            return;
        }
        self.observe(usage, cost, total);
        if let Some(span) = &self.trace {
            self.end_span(span, usage);
        }
        let latency_ms = total.as_secs_f64() * 1000.0;
        self.log(usage, latency_ms);
        if !self.log_row {
            return;
        }
        self.gw.usage.send(RequestEvent {
            at_ms: crate::auth::unix_now_ms(),
            request_id: std::mem::take(&mut self.request_id),
            key_id: self.key_id.take().unwrap_or_else(|| "-".into()),
            user: self.user.take(),
            team_id: self.team_id.take(),
            route: self.route,
            model: std::mem::take(&mut self.model),
            served_model: self.served_model.take(),
            provider: self.provider.take(),
            status: self.status,
            outcome: self.outcome,
            error_class: self.error_class,
            error: self.error.take(),
            latency_ms,
            ttft_ms: self.ttfb.map(|d| d.as_secs_f64() * 1000.0),
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            cost_usd: cost,
            cache: self.cache,
            attempts: self.attempts,
            fallback: self.fallback.take(),
            stream: self.stream,
            trace_id: self.trace.as_ref().map(SpanHandle::trace_id),
            semantic: self.semantic.take(),
        });
    }
}
