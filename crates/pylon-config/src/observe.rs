//! Sections about what Pylon tells operators: metrics, traces, the request log, health checks.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// `[metrics]`: Prometheus exposition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Serve `GET /metrics`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A separate listener for `/metrics` (then it is not served on the main one).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Add per-key and per-team request and spend series (one series per key: mind cardinality).
    #[serde(default)]
    pub per_key: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            listen: None,
            per_key: false,
        }
    }
}

/// `[tracing]`: OpenTelemetry spans exported over OTLP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    #[serde(default)]
    pub enabled: bool,
    /// The collector: `http://host:4318` for HTTP, `http://host:4317` for gRPC.
    #[serde(default = "default_otlp_endpoint")]
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Share of new traces sampled (0.0 to 1.0); a client's sampled flag is respected.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// How often finished spans are sent to the collector.
    #[serde(default = "default_export_every", with = "humantime_serde")]
    pub export_every: Duration,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            enabled: false,
            endpoint: default_otlp_endpoint(),
            protocol: OtlpProtocol::default(),
            sample_ratio: 1.0,
            service_name: default_service_name(),
            export_every: default_export_every(),
        }
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies.
    #[default]
    Http,
    /// OTLP/gRPC.
    Grpc,
}

/// `[request_log]`: one row per AI request in the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLog {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often queued rows are written: the most a crash can lose.
    #[serde(default = "default_flush", with = "humantime_serde")]
    pub flush: Duration,
    /// Rows held in memory while waiting to be written; beyond that they are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Rows older than this are deleted.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// At most this many rows are kept (the oldest go first).
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            enabled: true,
            flush: default_flush(),
            queue: default_queue(),
            retention: default_retention(),
            max_rows: default_max_rows(),
        }
    }
}

/// `[health]`: dependency checks behind `/readyz` and `/health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// How often the store and Redis are pinged.
    #[serde(default = "default_check_every", with = "humantime_serde")]
    pub check_every: Duration,
    /// A ping slower than this counts as a failure.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Actively probe each provider (`GET /models`) this often; off when unset.
    #[serde(default, with = "humantime_serde")]
    pub probe_every: Option<Duration>,
    /// `/health` warns when the data dir's disk is fuller than this share.
    #[serde(default = "default_disk_warn")]
    pub disk_warn: f64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            check_every: default_check_every(),
            check_timeout: default_check_timeout(),
            probe_every: None,
            disk_warn: default_disk_warn(),
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_otlp_endpoint() -> String {
    "http://127.0.0.1:4318".to_owned()
}
fn default_export_every() -> Duration {
    Duration::from_secs(5)
}
fn default_service_name() -> String {
    "pylon".to_owned()
}
fn default_flush() -> Duration {
    Duration::from_secs(1)
}
fn default_queue() -> usize {
    65_536
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_max_rows() -> u64 {
    10_000_000
}
fn default_check_every() -> Duration {
    Duration::from_secs(2)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_disk_warn() -> f64 {
    0.9
}
