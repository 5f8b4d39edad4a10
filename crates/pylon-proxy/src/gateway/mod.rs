//! The gateway: the config snapshot in force (replaceable while requests run) and the state of
//! the process — keys, limits, caches, health, metrics, background work.

mod arms;
mod deps;
mod flags;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pylon_config::{AuthMode, Config, ProviderKind};
use pylon_state::{Limiter, OnRedisFailure, RedisState};

use crate::auth::KeyIndex;
use crate::error::BuildError;
use crate::price::Prices;
use crate::snapshot::{Snapshot, Validation};
use crate::usage::Sink;

pub use arms::{Arm, ArmState};
pub(crate) use deps::Dependencies;
pub use deps::{AcmeState, BackupState, Check};
pub use flags::LoadedFlags;

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
    /// Connections start with a PROXY protocol header naming the client.
    pub proxy_protocol: bool,
}

/// The gateway: the current snapshot plus process-wide state.
pub struct Gateway {
    /// The config in force; a reload swaps it whole and requests in flight keep the one they
    /// started with.
    snap: ArcSwap<Snapshot>,
    /// Active virtual keys, swapped whole by the control plane; readers never block.
    pub(crate) keys: ArcSwap<KeyIndex>,
    /// Settings a reload replaces whole (auth, limits, prices, validation, sampling).
    settings: ArcSwap<Settings>,
    /// Rate limits, concurrency and spend: in-process or in Redis.
    pub(crate) limiter: Limiter,
    pub(crate) usage: Sink,
    /// Browser origins allowed by CORS.
    pub(crate) cors_origins: Vec<String>,
    /// Served over TLS: responses carry HSTS.
    pub(crate) hsts: bool,
    /// Compress Pylon's own JSON and pages (`[server] compression`).
    pub(crate) compression: bool,
    /// Set when shutdown begins; `/readyz` answers 503 from then on.
    pub(crate) draining: AtomicBool,
    pub(crate) metrics: Arc<pylon_telemetry::Metrics>,
    /// `None` unless `[tracing] enabled`: then no tracing work happens at all.
    pub(crate) tracer: Option<pylon_telemetry::Tracer>,
    /// `/metrics` is served on the main listener (enabled, no separate listener).
    pub(crate) metrics_on_main: bool,
    pub(crate) deps: Dependencies,
    /// The response cache, when `[cache] enabled`.
    pub(crate) cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Responses API responses kept for reading and continuing.
    pub(crate) responses: Arc<crate::stored::ResponseStore>,
    pub(crate) edge: Edge,
    /// AI requests in progress (streams until they end), against `edge.max_requests`.
    pub(crate) active: std::sync::atomic::AtomicUsize,
    /// Feature flags served over OFREP.
    pub(crate) flags: flags::FlagState,
    /// Live state of each configured rollout (weights, per-arm windows), by rollout name.
    rollouts: ArcSwap<std::collections::HashMap<String, Arc<ArmState>>>,
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
        let responses = Arc::new(
            crate::stored::ResponseStore::new(
                &config.responses,
                config.data.redis_url.as_ref().map(|u| u.expose()),
                metrics.clone(),
                tasks.clone(),
            )
            .map_err(|e| BuildError::Redis(e.to_string()))?,
        );
        let rollouts = config
            .rollouts
            .iter()
            .map(|r| {
                let name = r.name.get_ref().clone();
                (name.clone(), Arc::new(ArmState::new(&name, &metrics)))
            })
            .collect();
        Ok(Arc::new(Gateway {
            snap: ArcSwap::from_pointee(Snapshot::build(config)?),
            keys: ArcSwap::from_pointee(KeyIndex::default()),
            settings: ArcSwap::from_pointee(Settings::new(config)),
            limiter,
            usage: Sink::new(metrics.request_log_dropped.clone()),
            cors_origins: config.server.cors_origins.clone(),
            hsts: config.server.tls.is_some(),
            compression: config.server.compression,
            draining: AtomicBool::new(false),
            metrics,
            tracer,
            metrics_on_main: config.metrics.enabled && config.metrics.listen.is_none(),
            deps: Dependencies {
                disk_warn: config.health.disk_warn,
                ..Default::default()
            },
            cache,
            responses,
            edge: Edge {
                header_read_timeout: config.server.header_read_timeout,
                body_read_timeout: config.server.body_read_timeout,
                max_connections: config.server.max_connections.max(1),
                max_requests: config.server.max_requests.max(1),
                http2_max_streams: config.server.http2_max_streams.max(1),
                proxy_protocol: config.server.proxy_protocol,
                workers: crate::worker::count(config.server.workers),
            },
            active: std::sync::atomic::AtomicUsize::new(0),
            flags: flags::FlagState::default(),
            rollouts: ArcSwap::from_pointee(rollouts),
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
        self.settings().ip_rpm
    }

    /// The reloadable settings in force.
    pub(crate) fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Puts a reloaded config in force for requests that start from now on: a new snapshot
    /// (providers named in `unchanged` keep their connection pools, credentials and breakers,
    /// and so do their targets' breakers) and new settings. Requests in flight finish on the
    /// config they started with.
    pub fn reconfigure(
        &self,
        config: &Config,
        unchanged: &dyn Fn(&str) -> bool,
    ) -> Result<(), BuildError> {
        let snapshot = Snapshot::rebuild(config, &self.snapshot(), unchanged)?;
        self.keep_arm_states(&config.rollouts);
        self.settings.store(Arc::new(Settings::new(config)));
        self.install(snapshot);
        Ok(())
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
        let snap = self.snap.load();
        let Some(p) = snap.providers.get(provider) else {
            return false;
        };
        match secret {
            None => p.stored_auth.store(None),
            Some(s) => match crate::snapshot::auth_header(p.kind, s) {
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
            .load()
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
        let priced_as = match self
            .snap
            .load()
            .models
            .get(model)
            .and_then(|m| m.targets.first())
        {
            Some(t) => t.model.clone(),
            None => model.split_once('/').map_or(model, |(_, m)| m).to_owned(),
        };
        let one = self.settings().prices.cost(
            &priced_as,
            pylon_types::openai::Usage::new(input_tokens, output_tokens),
        )?;
        Some((priced_as, one * requests as f64))
    }

    /// The configured model names, for the admin API.
    pub fn model_names(&self) -> Vec<String> {
        self.snap.load().model_names.clone()
    }

    /// Puts a flag set in force (identified by `etag`); whether it differed from the current one.
    pub fn install_flags(&self, set: pylon_policy::flags::FlagSet, etag: String) -> bool {
        self.flags.install(set, etag)
    }

    /// The flags in force.
    pub fn flags(&self) -> Arc<LoadedFlags> {
        self.flags.current()
    }

    /// A rollout's live state (weights, per-arm windows), for the data plane and the judge.
    pub fn rollout(&self, name: &str) -> Option<Arc<ArmState>> {
        self.rollouts.load().get(name).cloned()
    }

    /// Puts another set of rollouts in force (one made or removed through the admin API): new
    /// rollouts get live state, existing ones keep theirs, requests that start from now on see
    /// the new candidates.
    pub fn install_rollouts(&self, rollouts: &[pylon_config::Rollout]) {
        self.keep_arm_states(rollouts);
        self.install(self.snapshot().with_rollouts(rollouts));
    }

    /// Live state for each of `rollouts`: kept for those that had it, new for the others. Stored
    /// before the snapshot that names them, so a request that sees a candidate finds its weights.
    fn keep_arm_states(&self, rollouts: &[pylon_config::Rollout]) {
        let current = self.rollouts.load();
        let states = rollouts
            .iter()
            .map(|r| {
                let name = r.name.get_ref();
                let state = current
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(ArmState::new(name, &self.metrics)));
                (name.clone(), state)
            })
            .collect();
        self.rollouts.store(Arc::new(states));
    }

    /// The config snapshot in force; a request holds the one it started with to the end.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.load_full()
    }

    /// Puts a new snapshot in force for requests that start from now on.
    pub fn install(&self, snapshot: Snapshot) {
        self.snap.store(Arc::new(snapshot));
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
        self.refresh_gauges();
        self.metrics.render()
    }

    /// Every metric family with scrape-time values brought current, for the alert evaluator.
    pub fn gather_metrics(&self) -> Vec<pylon_telemetry::prometheus::proto::MetricFamily> {
        self.refresh_gauges();
        self.metrics.gather()
    }

    /// Brings the values only known when asked (breakers, degraded limits, queues) current.
    fn refresh_gauges(&self) {
        let m = &self.metrics;
        let now = std::time::Instant::now();
        let snap = self.snap.load();
        for name in &snap.model_names {
            if let Some(model) = snap.models.get(name) {
                for t in &model.targets {
                    m.breaker_state
                        .with_label_values(&[name.as_str(), t.label.as_str()])
                        .set(t.health.breaker(now).gauge());
                }
            }
        }
        m.limits_degraded.set(i64::from(self.limits_degraded()));
        let up = |name: &str, ok: bool| {
            m.dependency_up
                .with_label_values(&[name])
                .set(i64::from(ok))
        };
        for (name, check) in [("store", &self.deps.store), ("redis", &self.deps.redis)] {
            if let Some(c) = check.lock().ok().and_then(|g| g.clone()) {
                up(name, c.ok);
            }
        }
        if let Some((used, _)) = self.deps.disk.lock().ok().and_then(|g| *g) {
            up("disk", used < self.deps.disk_warn);
        }
        if let Ok(probes) = self.deps.probes.lock() {
            for (provider, c) in probes.iter() {
                up(&format!("probe:{provider}"), c.ok);
            }
        }
        if let Some(b) = self.deps.backup.lock().ok().and_then(|g| g.clone()) {
            if let Some(at) = b.last_ok {
                let age = std::time::SystemTime::now()
                    .duration_since(at)
                    .unwrap_or_default();
                m.backup_age.set(age.as_secs_f64());
            }
        }
        m.request_log_pending.set(self.usage.pending() as i64);
        if let Some(c) = &self.cache {
            let (bytes, entries) = c.usage();
            m.cache_bytes.set(bytes as i64);
            m.cache_entries.set(entries as i64);
        }
    }

    /// Marks the gateway as draining (readiness fails; requests in flight continue).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Per-request settings that a reload replaces whole.
pub(crate) struct Settings {
    pub auth: AuthMode,
    pub limits: pylon_config::Limits,
    /// The per-IP request limit in force (configured, or the default with auth off).
    pub ip_rpm: Option<u64>,
    pub trusted_proxies: Vec<(std::net::IpAddr, u8)>,
    pub prices: Prices,
    pub validation: Validation,
    /// Share of successful request lines logged.
    pub success_sample: f64,
}

impl Settings {
    fn new(config: &Config) -> Settings {
        Settings {
            auth: config.auth.mode,
            limits: config.limits.clone(),
            ip_rpm: effective_ip_rpm(config),
            trusted_proxies: config
                .limits
                .trusted_proxies
                .iter()
                .filter_map(|p| pylon_config::parse_cidr(p))
                .collect(),
            prices: Prices::new(&config.prices).resolving(
                config
                    .models
                    .iter()
                    .flat_map(|m| m.targets.get_ref().iter().map(|t| t.model.as_str())),
            ),
            validation: Validation {
                max_messages: config.server.max_messages,
                max_message_bytes: config.server.max_message_bytes,
            },
            success_sample: config.log.success_sample,
        }
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

// Cache administration through the gateway (admin API, tests).
impl Gateway {
    /// Deletes cached answers matching every given filter; `None` when caching is off.
    pub async fn purge_cache(
        &self,
        namespace: Option<&str>,
        model: Option<&str>,
        key_id: Option<&str>,
    ) -> Option<u64> {
        Some(self.cache.as_ref()?.purge(namespace, model, key_id).await)
    }

    /// Reports a semantic hit wrong: its entry is deleted and the (question, entry) pair
    /// blocked; whether this instance held the entry, `None` when caching is off.
    pub async fn report_wrong_hit(&self, question: &str, entry: &str) -> Option<bool> {
        Some(self.cache.as_ref()?.report_wrong(question, entry).await)
    }

    /// Moves the response cache's clock forward, so tests can expire entries without waiting.
    pub fn advance_cache_clock(&self, by: std::time::Duration) {
        if let Some(c) = &self.cache {
            c.advance(by);
        }
        crate::app_cache::advance(&self.snapshot().routes, by);
    }
}
