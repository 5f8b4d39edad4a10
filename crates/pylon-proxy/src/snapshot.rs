//! The immutable runtime view of the config that every request reads: providers with their
//! HTTP clients and credentials, models with their targets' health, app routes.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use pylon_config::{AuthMode, Config, ProviderKind, Resilience, ResolvedTimeouts, Strategy};

use crate::auth::KeyIndex;
use crate::breaker::{Health, Policy};
use crate::error::BuildError;
use crate::price::Prices;
use crate::usage::Sink;
use crate::ProxyError;
use pylon_providers::TranslateError;
use pylon_state::{Limiter, OnRedisFailure, RedisState};

/// Size limits of a chat request beyond the body limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Validation {
    pub max_messages: usize,
    pub max_message_bytes: usize,
}

impl Validation {
    pub fn check(&self, messages: usize, largest: usize) -> Result<(), ProxyError> {
        if messages > self.max_messages {
            return Err(TranslateError::Unsupported(format!(
                "{messages} messages is more than the limit of {} (server.max_messages)",
                self.max_messages
            ))
            .into());
        }
        if largest > self.max_message_bytes {
            return Err(TranslateError::Unsupported(format!(
                "a message of {largest} bytes is larger than the limit of {} (server.max_message_bytes)",
                self.max_message_bytes
            ))
            .into());
        }
        Ok(())
    }
}

/// A configured provider, ready to call.
pub(crate) struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL without trailing slash.
    pub base: String,
    /// The credential header, marked sensitive so it never shows in debug output.
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub timeouts: ResolvedTimeouts,
    pub client: crate::client::Pool,
    /// Clients may address `name/model` directly.
    pub direct: bool,
    /// Client headers forwarded besides the built-in ones (config `forward_headers`).
    pub forward: Vec<HeaderName>,
    /// Health used when a client addresses `provider/model` directly.
    pub direct_health: Arc<Health>,
    /// A credential stored (encrypted) through the admin API; wins over `auth` when set.
    pub stored_auth: arc_swap::ArcSwapOption<(HeaderName, HeaderValue)>,
}

/// The credential header a provider kind expects, marked sensitive.
fn auth_header(kind: ProviderKind, key: &str) -> Option<(HeaderName, HeaderValue)> {
    let (header, value) = match kind {
        ProviderKind::Openai => ("authorization", format!("Bearer {key}")),
        ProviderKind::Anthropic => ("x-api-key", key.to_owned()),
        ProviderKind::Gemini => ("x-goog-api-key", key.to_owned()),
    };
    let mut v = HeaderValue::from_str(&value).ok()?;
    v.set_sensitive(true);
    Some((HeaderName::from_static(header), v))
}

/// One provider model behind a model name.
#[derive(Clone)]
pub(crate) struct Target {
    pub provider: Arc<Provider>,
    pub model: String,
    /// `provider/model`, the target's label in metrics and health checks.
    pub label: String,
    pub weight: u32,
    pub health: Arc<Health>,
}

/// A model name clients can send.
pub(crate) struct Model {
    pub name: String,
    pub strategy: Strategy,
    pub targets: Vec<Target>,
    pub fallbacks: Vec<String>,
    pub retries: u32,
    /// Requests and tokens per minute across all callers.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Prompts and completions may appear in this model's log lines.
    pub log_bodies: bool,
    /// Response caching for this model; `None`: off.
    pub cache: Option<crate::cache::Policy>,
    /// The model's label in metrics: its name, or `provider/*` when addressed directly (so
    /// clients cannot create series).
    pub metric_name: String,
    /// Bound on a whole non-stream answer; `None`: each provider's `timeouts.response`.
    pub response_timeout: Option<std::time::Duration>,
    /// A request that timed out upstream may be re-sent to the next target.
    pub resend_on_timeout: bool,
}

/// An app route (plain reverse proxy).
pub(crate) struct AppRoute {
    pub prefix: String,
    /// Upstream scheme + authority, and path prefix without trailing slash.
    pub upstream: http::Uri,
    pub strip_prefix: bool,
    pub http2: bool,
    pub rpm: Option<u64>,
    pub timeouts: ResolvedTimeouts,
    pub client: crate::worker::PerWorker<crate::client::HttpsClient<axum::body::Body>>,
}

/// Limits of the listener itself (what nginx's timeouts and connection caps gave).
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub header_read_timeout: std::time::Duration,
    pub body_read_timeout: std::time::Duration,
    pub max_connections: usize,
    pub max_requests: usize,
    pub http2_max_streams: u32,
    /// Data-plane worker threads (resolved: at least one).
    pub workers: usize,
}

/// Everything a request needs, immutable once built.
pub struct Snapshot {
    pub(crate) providers: HashMap<String, Arc<Provider>>,
    pub(crate) models: HashMap<String, Arc<Model>>,
    /// Model names in config order, for `/v1/models`.
    pub(crate) model_names: Vec<String>,
    /// Longest prefix first.
    pub(crate) routes: Vec<AppRoute>,
    pub(crate) max_body_bytes: usize,
    pub(crate) resilience: Resilience,
    /// Client headers some provider is configured to receive (`forward_headers`).
    pub(crate) forwardable: Vec<HeaderName>,
}

/// The gateway: the current snapshot plus process-wide state.
pub struct Gateway {
    pub(crate) snap: Arc<Snapshot>,
    /// Active virtual keys, swapped whole by the control plane; readers never block.
    pub(crate) keys: ArcSwap<KeyIndex>,
    pub(crate) auth: AuthMode,
    /// Rate limits, concurrency and spend: in-process or in Redis.
    pub(crate) limiter: Limiter,
    pub(crate) limits: pylon_config::Limits,
    /// The per-IP request limit in force (configured, or the default with auth off).
    pub(crate) ip_rpm: Option<u64>,
    pub(crate) trusted_proxies: Vec<(std::net::IpAddr, u8)>,
    pub(crate) prices: Prices,
    pub(crate) usage: Sink,
    pub(crate) validation: Validation,
    /// Browser origins allowed by CORS.
    pub(crate) cors_origins: Vec<String>,
    /// Served over TLS: responses carry HSTS.
    pub(crate) hsts: bool,
    /// Set when shutdown begins; `/readyz` answers 503 from then on.
    pub(crate) draining: AtomicBool,
    pub(crate) metrics: Arc<pylon_telemetry::Metrics>,
    /// `None` unless `[tracing] enabled`: then no tracing work happens at all.
    pub(crate) tracer: Option<pylon_telemetry::Tracer>,
    /// Share of successful request lines logged.
    pub(crate) success_sample: f64,
    /// `/metrics` is served on the main listener (enabled, no separate listener).
    pub(crate) metrics_on_main: bool,
    pub(crate) deps: crate::health::Dependencies,
    /// The response cache, when `[cache] enabled`.
    pub(crate) cache: Option<Arc<crate::cache::ResponseCache>>,
    pub(crate) edge: Edge,
    /// AI requests in progress (streams until they end), against `edge.max_requests`.
    pub(crate) active: std::sync::atomic::AtomicUsize,
    /// Work a request leaves behind (settlements, cache writes, notifications), drained at
    /// shutdown so a stop loses none of it.
    pub(crate) tasks: tokio_util::task::TaskTracker,
}

impl Gateway {
    /// Builds a gateway from a validated config.
    pub fn new(config: &Config) -> Result<Arc<Gateway>, BuildError> {
        let redis = match &config.data.redis_url {
            Some(url) => Some(
                RedisState::new(url.expose(), "pylon:")
                    .map_err(|e| BuildError::Redis(e.to_string()))?,
            ),
            None => None,
        };
        let on_failure = match config.limits.on_redis_failure {
            pylon_config::RedisFailure::Local => OnRedisFailure::Local,
            pylon_config::RedisFailure::Reject => OnRedisFailure::Reject,
        };
        let metrics = Arc::new(pylon_telemetry::Metrics::new(config.metrics.per_key)?);
        let observed = metrics.clone();
        let limiter = Limiter::new(redis, on_failure).observed(Box::new(move |op, took, ok| {
            observed
                .redis_duration
                .with_label_values(&[op])
                .observe(took.as_secs_f64());
            if !ok {
                observed.redis_errors.with_label_values(&[op]).inc();
            }
        }));
        let tracer = if config.tracing.enabled {
            Some(pylon_telemetry::Tracer::new(&config.tracing)?)
        } else {
            None
        };
        let tasks = tokio_util::task::TaskTracker::new();
        let cache = if config.cache.enabled {
            let url = config.data.redis_url.as_ref().map(|u| u.expose());
            Some(Arc::new(
                crate::cache::ResponseCache::new(
                    &config.cache,
                    url,
                    metrics.clone(),
                    tasks.clone(),
                )
                .map_err(|e| BuildError::Redis(e.to_string()))?,
            ))
        } else {
            None
        };
        Ok(Arc::new(Gateway {
            snap: Arc::new(Snapshot::build(config)?),
            keys: ArcSwap::from_pointee(KeyIndex::default()),
            auth: config.auth.mode,
            limiter,
            limits: config.limits.clone(),
            ip_rpm: effective_ip_rpm(config),
            trusted_proxies: config
                .limits
                .trusted_proxies
                .iter()
                .filter_map(|p| pylon_config::parse_cidr(p))
                .collect(),
            prices: Prices::new(&config.prices),
            usage: Sink::new(metrics.request_log_dropped.clone()),
            validation: Validation {
                max_messages: config.server.max_messages,
                max_message_bytes: config.server.max_message_bytes,
            },
            cors_origins: config.server.cors_origins.clone(),
            hsts: config.server.tls.is_some(),
            draining: AtomicBool::new(false),
            metrics,
            tracer,
            success_sample: config.log.success_sample,
            metrics_on_main: config.metrics.enabled && config.metrics.listen.is_none(),
            deps: crate::health::Dependencies {
                disk_warn: config.health.disk_warn,
                ..Default::default()
            },
            cache,
            edge: Edge {
                header_read_timeout: config.server.header_read_timeout,
                body_read_timeout: config.server.body_read_timeout,
                max_connections: config.server.max_connections.max(1),
                max_requests: config.server.max_requests.max(1),
                http2_max_streams: config.server.http2_max_streams.max(1),
                workers: crate::worker::count(config.server.workers),
            },
            active: std::sync::atomic::AtomicUsize::new(0),
            tasks,
        }))
    }

    /// Runs `work` in the background, tracked so [`Gateway::drain`] waits for it.
    pub fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(work);
    }

    /// Waits up to `within` for background work (settlements, cache writes, notifications) to
    /// finish; true when all of it did.
    pub async fn drain(&self, within: std::time::Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
    }

    /// The per-IP request limit in force, for the start-up log and `/health`.
    pub fn ip_rpm(&self) -> Option<u64> {
        self.ip_rpm
    }

    /// Connects the queue that receives one [`crate::RequestEvent`] per finished request.
    pub fn connect_usage(&self, tx: tokio::sync::mpsc::Sender<crate::RequestEvent>) {
        self.usage.connect(tx);
    }

    /// Usage of requests whose events did not fit in the queue (the ledger takes it).
    pub fn take_usage_overflow(&self) -> Vec<crate::UsageTotal> {
        self.usage.take_overflow()
    }

    /// Usage events dropped because the queue was full.
    pub fn usage_dropped(&self) -> u64 {
        self.usage.dropped()
    }

    /// Raises a spend counter (see [`crate::spend_key`]) to what the store says was spent.
    pub async fn seed_spend(&self, key: &str, usd: f64, ttl: std::time::Duration) {
        self.limiter.seed_spend(key, (usd * 1e6) as i64, ttl).await;
    }

    /// Whether shared limits are configured but Redis is currently unreachable.
    pub fn limits_degraded(&self) -> bool {
        self.limiter.is_degraded()
    }

    /// Replaces the set of keys that authenticate.
    pub fn set_keys(&self, index: KeyIndex) {
        self.keys.store(Arc::new(index));
    }

    /// Uses `secret` as `provider`'s credential from now on (`None`: back to the config's).
    /// Returns false when there is no such provider or the secret cannot be a header.
    pub fn set_credential(&self, provider: &str, secret: Option<&str>) -> bool {
        let Some(p) = self.snap.providers.get(provider) else {
            return false;
        };
        match secret {
            None => p.stored_auth.store(None),
            Some(s) => match auth_header(p.kind, s) {
                Some(h) => p.stored_auth.store(Some(Arc::new(h))),
                None => return false,
            },
        }
        true
    }

    /// Providers as the admin API shows them: name, kind, base URL, whether a credential is
    /// configured in the file.
    pub fn providers(&self) -> Vec<(String, ProviderKind, String, bool)> {
        let mut v: Vec<_> = self
            .snap
            .providers
            .values()
            .map(|p| (p.name.clone(), p.kind, p.base.clone(), p.auth.is_some()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// What `requests` requests of the given size would cost on `model` (an alias is priced as
    /// its first target's upstream model): the name it was priced as, and US dollars.
    pub fn estimate_cost(
        &self,
        model: &str,
        requests: u64,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Option<(String, f64)> {
        let priced_as = match self.snap.models.get(model).and_then(|m| m.targets.first()) {
            Some(t) => t.model.clone(),
            None => model.split_once('/').map_or(model, |(_, m)| m).to_owned(),
        };
        let one = self.prices.cost(
            &priced_as,
            pylon_types::openai::Usage::new(input_tokens, output_tokens),
        )?;
        Some((priced_as, one * requests as f64))
    }

    /// The configured model names, for the admin API.
    pub fn model_names(&self) -> &[String] {
        &self.snap.model_names
    }

    /// The gateway's metrics, shared with the control plane.
    pub fn metrics(&self) -> &Arc<pylon_telemetry::Metrics> {
        &self.metrics
    }

    /// The tracer, when tracing is on (flushed at shutdown).
    pub fn tracer(&self) -> Option<&pylon_telemetry::Tracer> {
        self.tracer.as_ref()
    }

    /// The metrics text, with scrape-time values (breakers, degraded limits) brought current.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let now = std::time::Instant::now();
        for name in &self.snap.model_names {
            if let Some(model) = self.snap.models.get(name) {
                for t in &model.targets {
                    m.breaker_state
                        .with_label_values(&[name.as_str(), t.label.as_str()])
                        .set(t.health.breaker(now).gauge());
                }
            }
        }
        m.limits_degraded.set(i64::from(self.limits_degraded()));
        m.request_log_pending.set(self.usage.pending() as i64);
        if let Some(c) = &self.cache {
            let (bytes, entries) = c.usage();
            m.cache_bytes.set(bytes as i64);
            m.cache_entries.set(entries as i64);
        }
        m.render()
    }

    /// Marks the gateway as draining (readiness fails; requests in flight continue).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The per-IP limit that applies: the configured one, else the seed's default when auth is off
/// (keyed traffic is limited per key; many clients can share one address).
fn effective_ip_rpm(config: &Config) -> Option<u64> {
    let rpm = match (config.limits.ip_rpm, config.auth.mode) {
        (Some(n), _) => n,
        (None, AuthMode::None) => pylon_config::DEFAULT_OPEN_IP_RPM,
        (None, AuthMode::Keys) => 0,
    };
    (rpm > 0).then_some(rpm)
}

impl Snapshot {
    /// Builds the runtime view of a config.
    pub fn build(config: &Config) -> Result<Snapshot, BuildError> {
        let r = &config.resilience;
        let policy = Policy {
            failures: r.breaker_failures.max(1),
            cooldown: r.breaker_cooldown,
        };
        let workers = crate::worker::count(config.server.workers);
        let mut providers = HashMap::new();
        for p in &config.providers {
            let name = p.name.get_ref().clone();
            let auth = match &p.api_key {
                None => None,
                Some(key) => Some(
                    auth_header(p.kind, key.expose())
                        .ok_or_else(|| BuildError::BadCredential(name.clone()))?,
                ),
            };
            let timeouts = p.timeouts.for_provider();
            let base = p.base_url().trim_end_matches('/').to_owned();
            let proxy = crate::client::proxy_for(&base, p.proxy.as_ref().map(|s| s.expose()))?;
            let options = crate::client::Options {
                connect: timeouts.connect,
                http2: p.http2,
                http2_only: p.http2 && base.starts_with("http://"),
                ca_file: p.ca_file.as_ref().map(|f| f.get_ref().as_path()),
                proxy: proxy.as_ref().map(|(u, _)| u.clone()),
                proxy_auth: proxy.and_then(|(_, a)| a),
            };
            let connections = if p.http2 { p.connections as usize } else { 1 };
            providers.insert(
                name.clone(),
                Arc::new(Provider {
                    name,
                    kind: p.kind,
                    base,
                    auth,
                    timeouts,
                    client: crate::client::Pool::new(connections, workers, &options)?,
                    direct: p.direct,
                    forward: p
                        .forward_headers
                        .iter()
                        .filter_map(|h| {
                            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()
                        })
                        .collect(),
                    direct_health: Arc::new(Health::new(policy)),
                    stored_auth: arc_swap::ArcSwapOption::empty(),
                }),
            );
        }
        let mut models = HashMap::new();
        let mut model_names = Vec::new();
        for m in &config.models {
            let targets = m
                .targets
                .get_ref()
                .iter()
                .filter_map(|t| {
                    Some(Target {
                        provider: providers.get(t.provider.get_ref())?.clone(),
                        model: t.model.clone(),
                        label: format!("{}/{}", t.provider.get_ref(), t.model),
                        weight: t.weight,
                        health: Arc::new(Health::new(policy)),
                    })
                })
                .collect();
            let name = m.name.get_ref().clone();
            model_names.push(name.clone());
            models.insert(
                name.clone(),
                Arc::new(Model {
                    name,
                    strategy: m.strategy,
                    targets,
                    fallbacks: m.fallbacks.iter().map(|f| f.get_ref().clone()).collect(),
                    retries: m.retries,
                    rpm: m.rpm,
                    tpm: m.tpm,
                    log_bodies: m.log_bodies,
                    metric_name: m.name.get_ref().clone(),
                    response_timeout: m.response_timeout,
                    resend_on_timeout: m.resend_on_timeout,
                    cache: m.cache.enabled.unwrap_or(config.cache.enabled).then(|| {
                        crate::cache::Policy {
                            ttl: m.cache.ttl.unwrap_or(config.cache.ttl),
                            any_temperature: m.cache.any_temperature,
                            semantic: m.cache.semantic,
                        }
                    }),
                }),
            );
        }
        let mut routes = Vec::new();
        for r in &config.routes {
            let timeouts = r.timeouts.for_route();
            let Ok(upstream) = r
                .upstream
                .get_ref()
                .trim_end_matches('/')
                .parse::<http::Uri>()
            else {
                continue;
            };
            routes.push(AppRoute {
                prefix: r.prefix.get_ref().clone(),
                upstream,
                strip_prefix: r.strip_prefix,
                http2: r.http2,
                rpm: r.rpm.filter(|n| *n > 0),
                timeouts,
                client: crate::client::build(
                    &crate::client::Options {
                        connect: timeouts.connect,
                        http2: r.http2,
                        http2_only: r.http2,
                        ..Default::default()
                    },
                    workers,
                )?,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut forwardable: Vec<HeaderName> = Vec::new();
        for p in providers.values() {
            for h in &p.forward {
                if !forwardable.contains(h) {
                    forwardable.push(h.clone());
                }
            }
        }
        Ok(Snapshot {
            forwardable,
            providers,
            models,
            model_names,
            routes,
            max_body_bytes: config.server.max_body_bytes,
            resilience: config.resilience.clone(),
        })
    }

    /// A configured model by name.
    pub(crate) fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.models.get(name).cloned()
    }

    /// Resolves a client's model name: an alias, or `provider/model` addressed directly.
    pub(crate) fn resolve(&self, name: &str) -> Option<Arc<Model>> {
        if let Some(m) = self.models.get(name) {
            return Some(m.clone());
        }
        let (provider, model) = name.split_once('/')?;
        let p = self.providers.get(provider).filter(|p| p.direct)?;
        Some(Arc::new(Model {
            name: name.to_owned(),
            strategy: Strategy::Priority,
            targets: vec![Target {
                provider: p.clone(),
                model: model.to_owned(),
                label: format!("{provider}/*"),
                weight: 1,
                health: p.direct_health.clone(),
            }],
            fallbacks: Vec::new(),
            retries: 1,
            rpm: None,
            tpm: None,
            log_bodies: false,
            metric_name: format!("{provider}/*"),
            response_timeout: None,
            resend_on_timeout: false,
            cache: None,
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A weighted model with one target per weight, for routing tests.
    pub(crate) fn model_with_weights(weights: &[u32]) -> Model {
        let timeouts = pylon_config::Timeouts::default().for_provider();
        let policy = Policy {
            failures: 5,
            cooldown: std::time::Duration::from_secs(30),
        };
        let provider = Arc::new(Provider {
            name: "p".into(),
            kind: ProviderKind::Openai,
            base: "http://127.0.0.1:1".into(),
            auth: None,
            timeouts,
            client: crate::client::Pool::new(1, 1, &crate::client::Options::default()).unwrap(),
            direct: false,
            forward: Vec::new(),
            direct_health: Arc::new(Health::new(policy)),
            stored_auth: arc_swap::ArcSwapOption::empty(),
        });
        Model {
            name: "m".into(),
            strategy: Strategy::Weighted,
            targets: weights
                .iter()
                .map(|&w| Target {
                    provider: provider.clone(),
                    model: "x".into(),
                    label: "p/x".into(),
                    weight: w,
                    health: Arc::new(Health::new(policy)),
                })
                .collect(),
            fallbacks: Vec::new(),
            retries: 0,
            rpm: None,
            tpm: None,
            log_bodies: false,
            metric_name: "m".into(),
            response_timeout: None,
            resend_on_timeout: false,
            cache: None,
        }
    }
}
