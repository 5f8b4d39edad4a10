//! Prometheus metrics: one registry per gateway (so tests and embedded gateways never share
//! counters), names in base units with the `pylon_` prefix, and only bounded label sets.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod features;

pub use features::{RolloutMetrics, SemanticMetrics};

/// Idle upstream connections closed because a pool already held its bound of them, process-wide
/// (the pools are built with the config, where no registry is at hand); reported as
/// `pylon_bounded_drops_total{what="upstream_idle_connection"}`.
pub static IDLE_CONNECTIONS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Latency buckets for whole requests and upstream calls (seconds).
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Buckets for Pylon's own overhead: tens of microseconds to tens of milliseconds.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];
/// Buckets for gaps between streamed tokens.
const TOKEN_GAP_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Buckets for store and Redis round trips.
const DEPENDENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Every metric Pylon exports. Handles are cheap to clone and safe to use from any thread.
pub struct Metrics {
    registry: Registry,
    /// Request series found once and kept (see [`Metrics::request_series`]).
    pub(crate) series: crate::series::SeriesCache,
    /// Requests by route, model, provider and status class (`2xx`, `4xx`, `5xx`).
    pub requests: IntCounterVec,
    /// End-to-end request duration by route and model.
    pub request_duration: HistogramVec,
    /// Duration of each upstream attempt by provider, target and outcome.
    pub upstream_duration: HistogramVec,
    /// Time to first token (first streamed event) by model and provider.
    pub time_to_first_token: HistogramVec,
    /// Gap between consecutive streamed events by model and provider.
    pub inter_token_latency: HistogramVec,
    /// Pylon's own share of a request: total minus time spent waiting on providers.
    pub overhead: HistogramVec,
    /// Tokens by model, provider and type (`input`, `output`).
    pub tokens: IntCounterVec,
    /// Spend in US dollars by model and provider.
    pub cost: CounterVec,
    /// Requests, tokens and spend per team (teams are made by admins: a bounded set; `-` is
    /// traffic of keys without a team), the series team alert rules read.
    pub team_requests: IntCounterVec,
    pub team_tokens: IntCounterVec,
    pub team_cost: CounterVec,
    /// Requests and spend per key and team, only when `[metrics] per_key = true`.
    pub key_requests: Option<IntCounterVec>,
    pub key_cost: Option<CounterVec>,
    /// Requests refused before reaching a provider, by reason and scope.
    pub rejected: IntCounterVec,
    /// Requests whose credential did not authenticate (counted here, not in the request log).
    pub auth_failures: IntCounter,
    /// Connections and requests refused by load shedding, by what was full.
    pub shed: IntCounterVec,
    /// Connections closed because their PROXY protocol header was missing or malformed.
    pub proxy_protocol_errors: IntCounter,
    /// When the served TLS certificate expires (unix seconds; 0: no TLS or unreadable).
    pub tls_not_after: IntGauge,
    /// ACME orders by result (`ok`, `error`).
    pub acme_orders: IntCounterVec,
    /// Consecutive failed ACME orders (0 once one succeeds).
    pub acme_failures: IntGauge,
    /// App-route edge cache lookups by route and result (`hit`, `revalidated`, `miss`,
    /// `stored`, `bypass`, `too_large`, `evicted`).
    pub edge_cache: IntCounterVec,
    /// Things a bound made Pylon drop or cut short, by what (`sse_event`, `response_body`,
    /// `semantic_context`, `stalled_client`, …).
    pub bounded_drops: IntCounterVec,
    /// Attempts after the first within one model, by model and target.
    pub retries: IntCounterVec,
    /// Requests that moved on to a fallback model, by model and fallback.
    pub fallbacks: IntCounterVec,
    /// Breaker state per target: 0 closed, 1 half-open, 2 open. Set at scrape time.
    pub breaker_state: IntGaugeVec,
    /// Requests being served, by route.
    pub in_flight: IntGaugeVec,
    /// Streams being relayed.
    pub open_streams: IntGauge,
    /// Store operations by operation, and their failures.
    pub store_duration: HistogramVec,
    pub store_errors: IntCounterVec,
    /// Redis round trips by operation, and their failures.
    pub redis_duration: HistogramVec,
    pub redis_errors: IntCounterVec,
    /// 1 while shared limits run on local state because Redis is unreachable.
    pub limits_degraded: IntGauge,
    /// Reloads of configuration parts (TLS certificate, log level) by what and result.
    pub config_reloads: IntCounterVec,
    /// Request-log rows dropped because the writer's queue was full.
    pub request_log_dropped: IntCounter,
    /// Request-log rows waiting to be written.
    pub request_log_pending: IntGauge,
    /// Seconds since the last good scheduled (or admin-triggered) backup.
    pub backup_age: prometheus::Gauge,
    /// Backups by result (`ok`, `error`).
    pub backups: IntCounterVec,
    /// Response-cache lookups by result (`hit`, `miss`, `bypass`).
    pub cache_requests: IntCounterVec,
    /// Requests that waited for an identical in-flight call instead of calling the provider.
    pub cache_coalesced: IntCounter,
    /// Entries evicted to stay within `max_bytes`.
    pub cache_evictions: IntCounter,
    /// Bytes and entries held in the in-process cache. Set at scrape time.
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
    /// Tokens and spend that cache hits did not send to a provider.
    pub cache_tokens_saved: IntCounter,
    pub cache_cost_saved: prometheus::Counter,
    /// The semantic cache's decisions.
    pub semantic: SemanticMetrics,
    /// Per rollout and arm.
    pub rollout: RolloutMetrics,
    /// Flag evaluations by flag, variant and reason (flags are the operator's, so the labels
    /// are bounded); failures by error code only.
    pub flag_evaluations: IntCounterVec,
    pub flag_errors: IntCounterVec,
    /// Open OFREP change streams.
    pub flag_streams: IntGauge,
    /// Whether each dependency passed its last check (1) or not (0): store, redis, disk,
    /// `probe:<provider>`.
    pub dependency_up: IntGaugeVec,
    /// Alerts firing (1) by rule and severity.
    pub alerts_firing: IntGaugeVec,
    /// Notification deliveries by receiver and outcome (`ok`, `failed`).
    pub alert_deliveries: IntCounterVec,
    /// Time to evaluate every rule once.
    pub alert_evaluation: prometheus::Histogram,
}

/// Registering a metric failed: a programming error (duplicate or malformed name).
#[derive(Debug, thiserror::Error)]
#[error("metric registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Builds and registers every metric, plus the process collector on Linux.
    pub fn new(per_key: bool) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let r = &registry;
        let m = Metrics {
            requests: counter(
                r,
                "pylon_requests_total",
                "AI requests handled.",
                &["route", "model", "provider", "status_class"],
            )?,
            request_duration: histogram(
                r,
                "pylon_request_duration_seconds",
                "End-to-end request duration, until the last byte of a stream.",
                &["route", "model"],
                REQUEST_BUCKETS,
            )?,
            upstream_duration: histogram(
                r,
                "pylon_upstream_duration_seconds",
                "Duration of each upstream attempt.",
                &["provider", "target", "outcome"],
                REQUEST_BUCKETS,
            )?,
            time_to_first_token: histogram(
                r,
                "pylon_time_to_first_token_seconds",
                "Time from the upstream call to the first streamed event.",
                &["model", "provider"],
                REQUEST_BUCKETS,
            )?,
            inter_token_latency: histogram(
                r,
                "pylon_inter_token_latency_seconds",
                "Gap between consecutive streamed events.",
                &["model", "provider"],
                TOKEN_GAP_BUCKETS,
            )?,
            overhead: histogram(
                r,
                "pylon_overhead_seconds",
                "Pylon's own time per request: total minus time waiting on providers.",
                &["route"],
                OVERHEAD_BUCKETS,
            )?,
            tokens: counter(
                r,
                "pylon_tokens_total",
                "Tokens processed.",
                &["model", "provider", "type"],
            )?,
            cost: float_counter(
                r,
                "pylon_cost_usd_total",
                "Spend in US dollars at configured prices.",
                &["model", "provider"],
            )?,
            team_requests: counter(
                r,
                "pylon_team_requests_total",
                "AI requests per team, by status class.",
                &["team", "status_class"],
            )?,
            team_tokens: counter(
                r,
                "pylon_team_tokens_total",
                "Tokens per team, input and output.",
                &["team"],
            )?,
            team_cost: float_counter(
                r,
                "pylon_team_cost_usd_total",
                "Spend per team in US dollars.",
                &["team"],
            )?,
            key_requests: per_key
                .then(|| {
                    counter(
                        r,
                        "pylon_key_requests_total",
                        "AI requests per virtual key.",
                        &["key", "team"],
                    )
                })
                .transpose()?,
            key_cost: per_key
                .then(|| {
                    float_counter(
                        r,
                        "pylon_key_cost_usd_total",
                        "Spend per virtual key in US dollars.",
                        &["key", "team"],
                    )
                })
                .transpose()?,
            rejected: counter(
                r,
                "pylon_rejected_requests_total",
                "Requests refused before reaching a provider.",
                &["reason", "scope"],
            )?,
            auth_failures: single_counter(
                r,
                "pylon_auth_failures_total",
                "Requests whose key did not authenticate.",
            )?,
            shed: counter(
                r,
                "pylon_shed_total",
                "Connections and requests refused because a server limit was reached.",
                &["what"],
            )?,
            tls_not_after: single_gauge(
                r,
                "pylon_tls_certificate_not_after_seconds",
                "When the served TLS certificate expires, in unix seconds (0 without TLS).",
            )?,
            acme_orders: counter(
                r,
                "pylon_acme_orders_total",
                "ACME certificate orders placed by this instance, by result.",
                &["result"],
            )?,
            acme_failures: single_gauge(
                r,
                "pylon_acme_renewal_failures",
                "Consecutive failed ACME orders (0 once one succeeds).",
            )?,
            proxy_protocol_errors: single_counter(
                r,
                "pylon_proxy_protocol_errors_total",
                "Connections closed because their PROXY protocol header was missing or malformed.",
            )?,
            edge_cache: counter(
                r,
                "pylon_edge_cache_total",
                "App-route edge cache lookups and stores, by route and result.",
                &["route", "result"],
            )?,
            bounded_drops: counter(
                r,
                "pylon_bounded_drops_total",
                "Work dropped or cut short by a memory or time bound.",
                &["what"],
            )?,
            retries: counter(
                r,
                "pylon_retries_total",
                "Upstream attempts after the first within a model.",
                &["model", "target"],
            )?,
            fallbacks: counter(
                r,
                "pylon_fallbacks_total",
                "Requests served by trying a fallback model.",
                &["model", "fallback"],
            )?,
            breaker_state: gauge(
                r,
                "pylon_circuit_breaker_state",
                "Circuit breaker per target: 0 closed, 1 half-open, 2 open.",
                &["model", "target"],
            )?,
            in_flight: gauge(
                r,
                "pylon_in_flight_requests",
                "Requests being served.",
                &["route"],
            )?,
            open_streams: single_gauge(
                r,
                "pylon_open_streams",
                "Streams being relayed to clients.",
            )?,
            store_duration: histogram(
                r,
                "pylon_store_operation_duration_seconds",
                "Store operations.",
                &["operation"],
                DEPENDENCY_BUCKETS,
            )?,
            store_errors: counter(
                r,
                "pylon_store_errors_total",
                "Failed store operations.",
                &["operation"],
            )?,
            redis_duration: histogram(
                r,
                "pylon_redis_operation_duration_seconds",
                "Redis round trips.",
                &["operation"],
                DEPENDENCY_BUCKETS,
            )?,
            redis_errors: counter(
                r,
                "pylon_redis_errors_total",
                "Failed Redis round trips.",
                &["operation"],
            )?,
            limits_degraded: single_gauge(
                r,
                "pylon_limits_degraded",
                "1 while shared limits run on local state because Redis is unreachable.",
            )?,
            config_reloads: counter(
                r,
                "pylon_config_reloads_total",
                "Reloads of configuration parts.",
                &["what", "result"],
            )?,
            request_log_dropped: {
                let c = IntCounter::new(
                    "pylon_request_log_dropped_total",
                    "Request-log rows dropped because the writer's queue was full.",
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            request_log_pending: single_gauge(
                r,
                "pylon_request_log_pending",
                "Request-log rows waiting to be written.",
            )?,
            backup_age: {
                let g = prometheus::Gauge::new(
                    "pylon_backup_age_seconds",
                    "Seconds since the last good backup of the store.",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            backups: counter(
                r,
                "pylon_backups_total",
                "Backups of the store by result.",
                &["result"],
            )?,
            cache_requests: counter(
                r,
                "pylon_cache_requests_total",
                "Response-cache lookups by result.",
                &["result"],
            )?,
            cache_coalesced: single_counter(
                r,
                "pylon_cache_coalesced_total",
                "Requests that waited for an identical in-flight call.",
            )?,
            cache_evictions: single_counter(
                r,
                "pylon_cache_evictions_total",
                "Cache entries evicted to stay within max_bytes.",
            )?,
            cache_bytes: single_gauge(
                r,
                "pylon_cache_bytes",
                "Bytes held in the in-process response cache.",
            )?,
            cache_entries: single_gauge(
                r,
                "pylon_cache_entries",
                "Entries in the in-process response cache.",
            )?,
            cache_tokens_saved: single_counter(
                r,
                "pylon_cache_tokens_saved_total",
                "Tokens served from the cache instead of a provider.",
            )?,
            cache_cost_saved: {
                let c = prometheus::Counter::new(
                    "pylon_cache_cost_saved_usd_total",
                    "Spend avoided by cache hits, in US dollars.",
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            semantic: SemanticMetrics::new(r)?,
            rollout: RolloutMetrics::new(r)?,
            flag_evaluations: counter(
                r,
                "pylon_flag_evaluations_total",
                "Flag evaluations over OFREP.",
                &["flag", "variant", "reason"],
            )?,
            flag_errors: counter(
                r,
                "pylon_flag_errors_total",
                "Flag evaluations that failed, by OpenFeature error code.",
                &["code"],
            )?,
            flag_streams: single_gauge(
                r,
                "pylon_flag_streams",
                "Open OFREP change-notification streams.",
            )?,
            dependency_up: gauge(
                r,
                "pylon_dependency_up",
                "Whether each dependency passed its last check (1) or not (0).",
                &["dependency"],
            )?,
            alerts_firing: gauge(
                r,
                "pylon_alerts_firing",
                "Alerts firing (1) by rule and severity.",
                &["alertname", "severity"],
            )?,
            alert_deliveries: counter(
                r,
                "pylon_alert_deliveries_total",
                "Alert notification deliveries by receiver and outcome.",
                &["receiver", "outcome"],
            )?,
            alert_evaluation: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "pylon_alert_evaluation_seconds",
                        "Time to evaluate every alert rule once.",
                    )
                    .buckets(OVERHEAD_BUCKETS.to_vec()),
                )?;
                r.register(Box::new(h.clone()))?;
                h
            },
            registry,
            series: Default::default(),
        };
        let build = gauge(
            &m.registry,
            "pylon_build_info",
            "Pylon's version; always 1.",
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Every metric family's current values (the alert evaluator reads its series from these).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.sync_process_drops();
        self.registry.gather()
    }

    /// Brings the process-wide drop counters into this registry's `pylon_bounded_drops_total`.
    fn sync_process_drops(&self) {
        let process = [
            ("log_line", &crate::logs::DROPPED_LINES),
            ("upstream_idle_connection", &IDLE_CONNECTIONS_DROPPED),
        ];
        for (what, n) in process {
            let c = self.bounded_drops.with_label_values(&[what]);
            c.inc_by(n.load(Ordering::Relaxed).saturating_sub(c.get()));
        }
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> String {
        self.sync_process_drops();
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec fails only on malformed metrics, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `2xx`, `4xx`, … for the status label.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn float_counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<CounterVec, prometheus::Error> {
    let c = CounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn single_counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn single_gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_with_build_info() {
        let m = Metrics::new(true).expect("metrics");
        m.requests
            .with_label_values(&["/v1/chat/completions", "gpt", "openai", "2xx"])
            .inc();
        let text = m.render();
        assert!(
            text.contains("pylon_requests_total{model=\"gpt\""),
            "{text}"
        );
        assert!(text.contains("pylon_build_info{version="), "{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
