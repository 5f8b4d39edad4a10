//! The configuration's shape: the public contract of `pylon.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

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
}

/// `[server]`: the listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long `/readyz` answers 503 while requests are still accepted, so load
    /// balancers stop routing here before the listener closes.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Most messages one chat request may carry.
    #[serde(default = "default_max_messages")]
    pub max_messages: usize,
    /// Largest single message (its JSON content, in bytes).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Origins allowed to call Pylon from a browser (CORS); empty: no cross-origin access.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Terminate TLS on `listen` (TLS 1.2 and 1.3 only).
    #[serde(default)]
    pub tls: Option<Tls>,
    /// A client must send a request's headers (and finish a TLS handshake) within this.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client must send a whole request body within this (408 otherwise).
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Open client connections; more get one 503 with `Retry-After` and are closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// AI requests in progress (open streams included); more get 503 with `Retry-After`.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// Concurrent streams one HTTP/2 client connection may open.
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: u32,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    20_000
}
fn default_max_requests() -> usize {
    10_000
}
fn default_http2_max_streams() -> u32 {
    256
}

/// `[server.tls]`: certificate files, re-read on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Also listen here in plain HTTP and redirect every request to HTTPS.
    #[serde(default)]
    pub redirect_http: Option<SocketAddr>,
}

fn default_max_messages() -> usize {
    2_000
}
fn default_max_message_bytes() -> usize {
    2 * 1024 * 1024
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    8 * 1024 * 1024
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            shutdown_grace: default_grace(),
            shutdown_delay: Duration::ZERO,
            max_messages: default_max_messages(),
            max_message_bytes: default_max_message_bytes(),
            cors_origins: Vec::new(),
            tls: None,
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_connections: default_max_connections(),
            max_requests: default_max_requests(),
            http2_max_streams: default_http2_max_streams(),
        }
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

/// `[[providers]]`: an upstream model API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: Spanned<String>,
    pub kind: ProviderKind,
    /// Defaults to the kind's public API.
    #[serde(default)]
    pub base_url: Option<Spanned<String>>,
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Clients may address `name/model` directly (off by default: such a model has no
    /// configured limits, and is priced only if the price table knows its name).
    #[serde(default)]
    pub direct: bool,
    /// Extra PEM CA certificates to trust for this provider (a corporate CA or a private
    /// gateway), besides the public roots.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Speak HTTP/2 to this provider over `connections` connections (each multiplexes streams
    /// up to the server's limit). Off: an HTTP/1.1 connection pool that grows with load.
    #[serde(default)]
    pub http2: bool,
    /// HTTP/2 connections kept to this provider; a request takes the least busy one.
    #[serde(default = "default_connections")]
    pub connections: u32,
    /// An HTTP CONNECT proxy for this provider (`http://user:pass@host:port`); unset: the
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` environment.
    #[serde(default)]
    pub proxy: Option<Secret>,
    /// Client headers forwarded to this provider besides the request id, the trace context and
    /// `anthropic-version` (e.g. `anthropic-beta`, which can change what a request costs).
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

fn default_connections() -> u32 {
    8
}

impl Provider {
    /// The base URL, or the kind's public default.
    pub fn base_url(&self) -> &str {
        self.base_url
            .as_ref()
            .map_or(self.kind.default_base_url(), |u| u.get_ref())
    }
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server (Ollama, vLLM, …).
    Openai,
    Anthropic,
    Gemini,
}

impl ProviderKind {
    /// The public API base URL of this kind.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Openai => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Gemini => "https://generativelanguage.googleapis.com/v1beta",
        }
    }
}

/// Upstream timeouts; unset fields take the defaults of where they are used.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default, with = "humantime_serde")]
    pub connect: Option<Duration>,
    /// Until the response headers (and, for streams, the first chunk) arrive.
    #[serde(default, with = "humantime_serde")]
    pub first_byte: Option<Duration>,
    /// Longest silence between two chunks of a body.
    #[serde(default, with = "humantime_serde")]
    pub idle: Option<Duration>,
    /// The whole exchange.
    #[serde(default, with = "humantime_serde")]
    pub total: Option<Duration>,
    /// A non-stream answer, from sending the request to its last byte. Its headers come only
    /// when generation is done, so this, not `first_byte`, bounds it (providers only).
    #[serde(default, with = "humantime_serde")]
    pub response: Option<Duration>,
}

/// Timeouts with every field resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedTimeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    /// `None`: no bound (long-lived app connections such as WebSockets).
    pub total: Option<Duration>,
    /// A whole non-stream answer (providers).
    pub response: Duration,
}

impl Timeouts {
    /// Defaults for model providers: 2s connect, 30s first byte and idle (streams), 600s total
    /// and 600s for a whole non-stream answer.
    pub fn for_provider(&self) -> ResolvedTimeouts {
        let total = self.total.unwrap_or(Duration::from_secs(600));
        ResolvedTimeouts {
            connect: self.connect.unwrap_or(Duration::from_secs(2)),
            first_byte: self.first_byte.unwrap_or(Duration::from_secs(30)),
            idle: self.idle.unwrap_or(Duration::from_secs(30)),
            total: Some(total),
            response: self.response.unwrap_or(total),
        }
    }

    /// Defaults for app routes: 2s connect, 60s first byte, 300s idle, no total (SSE, WebSockets).
    pub fn for_route(&self) -> ResolvedTimeouts {
        ResolvedTimeouts {
            connect: self.connect.unwrap_or(Duration::from_secs(2)),
            first_byte: self.first_byte.unwrap_or(Duration::from_secs(60)),
            idle: self.idle.unwrap_or(Duration::from_secs(300)),
            total: self.total,
            response: self.total.unwrap_or(Duration::MAX),
        }
    }
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
