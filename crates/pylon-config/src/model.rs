//! The configuration's shape: the public contract of `pylon.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::provider::default_connections;
use crate::{Provider, ProviderKind, Server, Timeouts};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub data: Data,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub secrets: Secrets,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub resilience: Resilience,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub budgets: Budgets,
    #[serde(default)]
    pub prices: Vec<Price>,
    #[serde(default)]
    pub providers: Vec<Provider>,
    #[serde(default)]
    pub models: Vec<Model>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub metrics: crate::Metrics,
    #[serde(default)]
    pub tracing: crate::Tracing,
    #[serde(default)]
    pub request_log: crate::RequestLog,
    #[serde(default)]
    pub health: crate::Health,
    #[serde(default)]
    pub cache: crate::Cache,
    #[serde(default)]
    pub responses: crate::Responses,
    #[serde(default)]
    pub rollouts: Vec<crate::Rollout>,
    #[serde(default)]
    pub flags: crate::Flags,
    #[serde(default)]
    pub alerting: crate::Alerting,
    #[serde(default)]
    pub alerts: Vec<crate::Alert>,
    #[serde(default)]
    pub alert_receivers: Vec<crate::AlertReceiver>,
    #[serde(default)]
    pub alert_routing: crate::AlertRoute,
    #[serde(default)]
    pub alert_escalations: Vec<crate::Escalation>,
    #[serde(default)]
    pub backup: Backup,
}

/// `[backup]`: scheduled backups of the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// How often to back up; none when unset (`pylon backup create` and the admin API still
    /// work).
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Backups kept in `dir`; older ones are deleted after each new one.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Where backups go; default `<data dir>/backups`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

fn default_keep() -> usize {
    7
}

impl Default for Backup {
    fn default() -> Self {
        Backup {
            every: None,
            keep: default_keep(),
            dir: None,
        }
    }
}

impl Backup {
    /// The backup directory for a data dir.
    pub fn dir_in(&self, data_dir: &std::path::Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("backups"))
    }
}

/// `[data]`: where durable state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// `postgres://…` to share state between instances; default: SQLite under `dir`.
    #[serde(default)]
    pub store_url: Option<Secret>,
    /// `redis://…` to share rate limits, concurrency and spend counters between instances.
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// CPU priority of the SQLite connection that writes the request log and usage in batches
    /// (no effect with `store_url`: PostgreSQL writes in its own processes).
    #[serde(default)]
    pub writer_priority: WriterPriority,
}

/// `[data] writer_priority`: how the SQLite batch writer shares the CPU with requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriterPriority {
    /// The same priority as requests.
    #[default]
    Normal,
    /// Linux `SCHED_IDLE`: a batch never holds a core a request is waiting for (it cut the
    /// p99.9 at concurrency 1 in half), but while requests or other programs keep every core
    /// busy the writer barely runs: request-log rows past the queue's bound are dropped and
    /// counted, and a crash then loses more than the `flush` window (usage is kept in memory,
    /// summed per key and model, and written when the CPU frees up).
    Idle,
}

fn default_dir() -> PathBuf {
    PathBuf::from("./pylon-data")
}

impl Default for Data {
    fn default() -> Self {
        Data {
            dir: default_dir(),
            store_url: None,
            redis_url: None,
            writer_priority: WriterPriority::default(),
        }
    }
}

/// `[auth]`: who may call the data plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub mode: AuthMode,
    /// How often each instance reloads keys from the store (changes made through this
    /// instance's admin API apply at once).
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(5)
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            mode: AuthMode::default(),
            refresh: default_refresh(),
        }
    }
}

/// How clients authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Virtual keys (`pk-…`) created through the admin API.
    #[default]
    Keys,
    /// No authentication: the gateway is open to whoever can reach it.
    None,
}

/// `[admin]`: the admin API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// A file holding the admin token; otherwise `PYLON_ADMIN_TOKEN`. Without either the admin
    /// API answers 503.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Serve the admin API (and docs) on this address instead of the main listener.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// A `tracing` filter, e.g. `info` or `pylon=debug,info`.
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
    /// Share of successful request lines written (0.0 to 1.0); errors are always written.
    #[serde(default = "default_sample")]
    pub success_sample: f64,
}

fn default_sample() -> f64 {
    1.0
}

fn default_level() -> String {
    "info".to_owned()
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: default_level(),
            format: LogFormat::default(),
            success_sample: 1.0,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// JSON, or pretty when stdout is a terminal.
    #[default]
    Auto,
    Json,
    Pretty,
}

/// `[resilience]`: retries, backoff and circuit breakers for every model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resilience {
    /// Consecutive failures that open a target's breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker stays open before one probe is let through.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// First backoff before retrying a target already tried; doubled each time, with full jitter.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// Upper bound of one backoff.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this takes the target out of rotation instead of waiting.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_cooldown() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff() -> Duration {
    Duration::from_millis(50)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(2)
}
fn default_max_retry_after() -> Duration {
    Duration::from_secs(10)
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            breaker_failures: default_breaker_failures(),
            breaker_cooldown: default_cooldown(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            max_retry_after: default_max_retry_after(),
        }
    }
}

/// `[secrets]`: the master key that encrypts provider credentials stored through the admin API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// A file holding the base64 master key; otherwise `PYLON_MASTER_KEY`.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
}

/// `[limits]`: admission limits that apply besides each key's and team's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute per client IP on `/v1/*`, checked before auth; 0 turns it off.
    /// Unset: 100 with `auth.mode = "none"`, off for keyed traffic (clients behind one load
    /// balancer or NAT share an address).
    #[serde(default)]
    pub ip_rpm: Option<u64>,
    /// With keys and no `ip_rpm`: failed authentications per minute per client IP before the
    /// address gets 429 instead of 401; 0 turns it off.
    #[serde(default = "default_failed_auth_rpm")]
    pub failed_auth_rpm: u64,
    /// Requests per minute per user (keys that name a user); 0 turns it off.
    #[serde(default = "default_user_rpm")]
    pub user_rpm: u64,
    /// With `data.redis_url`: what to do while Redis is unreachable.
    #[serde(default)]
    pub on_redis_failure: RedisFailure,
    /// Proxies whose `X-Forwarded-For` is believed (IPs or CIDRs, e.g. `10.0.0.0/8`); the
    /// client IP is the first address not in this list, counting from the right.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// The per-IP limit when none is configured and auth is off (the seed's default).
pub const DEFAULT_OPEN_IP_RPM: u64 = 100;

fn default_failed_auth_rpm() -> u64 {
    30
}
fn default_user_rpm() -> u64 {
    10
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ip_rpm: None,
            failed_auth_rpm: default_failed_auth_rpm(),
            user_rpm: default_user_rpm(),
            on_redis_failure: RedisFailure::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[budgets]`: soft thresholds and where their notifications go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// Shares of a budget that trigger a notification, once each per period.
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<f64>,
    /// URLs that receive a JSON `budget.threshold` event (POST).
    #[serde(default)]
    pub webhooks: Vec<String>,
}

fn default_thresholds() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            thresholds: default_thresholds(),
            webhooks: Vec::new(),
        }
    }
}

/// What to do while Redis is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedisFailure {
    /// Enforce limits per instance and say so in the logs.
    #[default]
    Local,
    /// Refuse requests (503) until Redis answers.
    Reject,
}

/// `[[prices]]`: what a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// The upstream model name, exactly (its dated snapshots and `-latest` match too), or a
    /// pattern where `*` stands for any characters (`llama3.2:*`; `*` alone: every model).
    pub model: String,
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// Input tokens read from the provider's prompt cache; default: a tenth of the input price
    /// for Claude models, half for others.
    #[serde(default)]
    pub cache_read_per_million: Option<f64>,
    /// Input tokens written to the provider's prompt cache; default: 1.25 × the input price.
    #[serde(default)]
    pub cache_write_per_million: Option<f64>,
}

/// `[[models]]`: a name clients send as `model`, and where it goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub name: Spanned<String>,
    #[serde(default)]
    pub strategy: Strategy,
    pub targets: Spanned<Vec<Target>>,
    /// Other model names, tried in order once every target of this one failed.
    #[serde(default)]
    pub fallbacks: Vec<Spanned<String>>,
    /// Extra attempts after the first, across this model's targets.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Requests per minute for this model, across all callers.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per minute for this model, across all callers.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Write prompts and completions into the log lines of this model's requests.
    #[serde(default)]
    pub log_bodies: bool,
    /// Response-cache overrides for this model.
    #[serde(default)]
    pub cache: crate::ModelCache,
    /// Bound on a whole non-stream answer for this model (overrides its providers'
    /// `timeouts.response`; reasoning models may need many minutes).
    #[serde(default, with = "humantime_serde")]
    pub response_timeout: Option<Duration>,
    /// Re-send a request to the next target after it timed out upstream. Off by default: the
    /// provider may have processed (and billed) it, so a re-send can cost twice.
    #[serde(default)]
    pub resend_on_timeout: bool,
    /// What a translation does with a parameter the chosen provider cannot express: `refuse`
    /// (a 400 naming it, the default) or `drop` (leave it out).
    #[serde(default)]
    pub unsupported_params: UnsupportedParams,
}

/// What a translation does with a parameter the provider cannot express.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsupportedParams {
    /// Answer 400, naming the parameter.
    #[default]
    Refuse,
    /// Leave it out and serve the request.
    Drop,
}

fn default_retries() -> u32 {
    2
}

/// How a model picks among its targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Random in proportion to weight.
    #[default]
    Weighted,
    /// In the order listed.
    Priority,
    /// Lowest recent time to first byte.
    LeastLatency,
    /// Fewest requests in flight.
    LeastBusy,
}

/// One provider model a model alias can use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub provider: Spanned<String>,
    pub model: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Output cap sent when a client sets none and the provider requires one (Anthropic);
    /// default: the model's own limit.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
}

fn default_weight() -> u32 {
    1
}

/// `[[routes]]`: a plain reverse-proxy route to the application.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub prefix: Spanned<String>,
    pub upstream: Spanned<String>,
    /// Remove the prefix before forwarding (`/app/x` → `/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Speak HTTP/2 (prior knowledge) to the upstream.
    #[serde(default)]
    pub http2: bool,
    /// Requests per minute per client IP on this route (the app's own `limit_req`).
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Compress the application's answers (gzip, brotli or zstd, as the client accepts) when
    /// they are not already compressed, not event streams, and larger than 1 KiB.
    #[serde(default)]
    pub compress: bool,
    /// Client IPs (addresses or CIDRs) allowed on this route; empty: everyone not denied.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Client IPs (addresses or CIDRs) refused on this route (403), checked before `allow`.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Largest request body on this route (413 over it); unset: `[server] max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Requests in progress on this route at once (WebSocket tunnels included); more get 503
    /// with `Retry-After`. Unset: no cap of the route's own.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Send the client's `Host` to the application instead of the upstream's address.
    #[serde(default)]
    pub preserve_host: bool,
    /// Also send the standard `Forwarded` header (RFC 7239) with `for`, `host` and `proto`.
    #[serde(default)]
    pub forwarded: bool,
    /// Response headers added when the application did not send them (`Cache-Control`,
    /// security headers); the application's own value wins.
    #[serde(default)]
    pub response_headers: std::collections::BTreeMap<String, String>,
    /// Response headers removed from the application's answers (before `response_headers`
    /// are added, so naming a header in both forces Pylon's value).
    #[serde(default)]
    pub hide_headers: Vec<String>,
    /// An in-memory cache for `GET` answers the application marks cacheable.
    #[serde(default)]
    pub cache: Option<EdgeCache>,
}

/// `[routes.cache]`: the edge cache of one app route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeCache {
    /// Bytes of answers (bodies and headers) kept; the least recently used go first.
    #[serde(default = "default_edge_cache_bytes")]
    pub max_bytes: u64,
    /// Largest single answer kept; bigger ones are passed through uncached.
    #[serde(default = "default_edge_entry_bytes")]
    pub max_entry_bytes: u64,
}

fn default_edge_cache_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_edge_entry_bytes() -> u64 {
    1024 * 1024
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Config {
    /// The configuration used when no file is given: defaults plus providers found in the
    /// environment (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GEMINI_API_KEY`, `OLLAMA_HOST`).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Config {
        let mut config = Config::default();
        let mut add =
            |name: &str, kind: ProviderKind, base: Option<String>, key: Option<String>| {
                config.providers.push(Provider {
                    name: Spanned::new(0..0, name.to_owned()),
                    kind,
                    base_url: base.map(|b| Spanned::new(0..0, b)),
                    api_key: key.map(Secret),
                    timeouts: Timeouts::default(),
                    // Without a config file, `provider/model` is the only way to name a model.
                    direct: true,
                    ca_file: None,
                    proxy: None,
                    http2: false,
                    connections: default_connections(),
                    forward_headers: Vec::new(),
                    api_version: None,
                    token_file: None,
                    aws: None,
                    responses_api: true,
                });
            };
        let set = |k: &str| env(k).filter(|v| !v.is_empty());
        if let Some(key) = set("OPENAI_API_KEY") {
            add("openai", ProviderKind::Openai, None, Some(key));
        }
        if let Some(key) = set("ANTHROPIC_API_KEY") {
            add("anthropic", ProviderKind::Anthropic, None, Some(key));
        }
        if let Some(key) = set("GEMINI_API_KEY") {
            add("gemini", ProviderKind::Gemini, None, Some(key));
        }
        if let Some(host) = set("OLLAMA_HOST") {
            let host = host.trim_end_matches('/');
            let base = if host.contains("://") {
                format!("{host}/v1")
            } else {
                format!("http://{host}/v1")
            };
            add("ollama", ProviderKind::Openai, Some(base), None);
        }
        config
    }

    /// The provider with this name.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name.get_ref() == name)
    }
}
