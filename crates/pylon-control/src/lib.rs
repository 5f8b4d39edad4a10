//! The control plane: the admin API under `/admin/v1/`, its OpenAPI document and docs page, and
//! keeping the data plane's key index in step with the store.

pub mod acme;
mod admin;
pub mod alerts;
pub mod backups;
pub mod config;
mod dashboard;
pub mod flags;
mod health;
mod keys;
mod ledger;
mod notify;
pub mod rollouts;
pub mod secrets;

use std::sync::Arc;

use pylon_proxy::{Gateway, KeyIndex};
use pylon_store::Store;

pub use admin::{openapi, router};
pub use health::disk as disk_usage;
pub use keys::{generate, KEY_PREFIX};

/// Secrets that come from the environment, not the config file.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `PYLON_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `PYLON_MASTER_KEY`: encrypts provider credentials stored through the admin API.
    pub master_key: Option<String>,
    /// `PYLON_MASTER_KEY_PREVIOUS`: older master keys still accepted for reading (rotation).
    pub master_key_previous: Option<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            admin_token: var("PYLON_ADMIN_TOKEN"),
            master_key: var("PYLON_MASTER_KEY"),
            master_key_previous: var("PYLON_MASTER_KEY_PREVIOUS"),
        }
    }
}

/// Shared state of the control plane.
pub struct Control {
    pub store: Store,
    pub gateway: Arc<Gateway>,
    /// SHA-256 of the admin token; `None` disables the admin API.
    admin_token: Option<[u8; 32]>,
    keyring: secrets::Keyring,
    /// Serializes refreshes: a refresh that read the store before an admin write must not
    /// publish its older index after the one that read it afterwards (a revoked key would
    /// come back, a new one vanish).
    refreshing: tokio::sync::Mutex<()>,
    notifier: notify::Notifier,
    /// Set at shutdown: the ledger writes what is queued and stops.
    stop: tokio::sync::watch::Sender<bool>,
    /// The ledger and the background checks, stopped at shutdown.
    tasks: std::sync::Mutex<Tasks>,
    /// Rollouts: applied here, judged here when this instance holds the lease.
    pub rollouts: Arc<rollouts::Rollouts>,
    /// Feature flags: the file and the store, kept current in the gateway.
    pub flags: Arc<flags::Flags>,
    /// Alert rules: evaluated here when this instance holds the lease.
    pub alerts: Arc<alerts::Alerts>,
    /// Scheduled and on-demand backups.
    pub backups: Arc<backups::Backups>,
    /// Dashboard sessions (cookie → CSRF token).
    sessions: dashboard::Sessions,
    /// The dashboard's store-backed figures, shared by every viewer.
    executive: dashboard::Executive,
    /// The run-time log filter, when the binary installed one.
    log_level: std::sync::OnceLock<Arc<pylon_telemetry::LogLevel>>,
    /// The config file in force and the record of reloads.
    config: config::ConfigState,
    /// The TLS certificate, re-read by reloads.
    tls: std::sync::OnceLock<pylon_proxy::tls::Tls>,
}

/// The control loops the admin API drives: rollouts, flags, alerts.
pub(crate) struct Loops {
    rollouts: Arc<rollouts::Rollouts>,
    flags: Arc<flags::Flags>,
    alerts: Arc<alerts::Alerts>,
    backups: Arc<backups::Backups>,
}

/// Background tasks owned by the control plane.
#[derive(Default)]
struct Tasks {
    ledger: Option<tokio::task::JoinHandle<()>>,
    others: Vec<tokio::task::JoinHandle<()>>,
}

impl Control {
    /// A control plane over `store` that keeps `gateway`'s keys and credentials current.
    pub(crate) fn new(
        store: Store,
        gateway: Arc<Gateway>,
        admin_token: Option<String>,
        keyring: secrets::Keyring,
        budgets: &pylon_config::Budgets,
        loops: Loops,
    ) -> Arc<Control> {
        let Loops {
            rollouts,
            flags,
            alerts,
            backups,
        } = loops;
        let notifier = notify::Notifier::new(budgets);
        let admin_token = admin_token
            .filter(|t| !t.is_empty())
            .map(|t| pylon_proxy::hash_key(&t));
        Arc::new(Control {
            store,
            gateway,
            admin_token,
            keyring,
            refreshing: tokio::sync::Mutex::new(()),
            notifier,
            stop: tokio::sync::watch::channel(false).0,
            tasks: std::sync::Mutex::new(Tasks::default()),
            log_level: std::sync::OnceLock::new(),
            rollouts,
            flags,
            alerts,
            backups,
            sessions: dashboard::Sessions::default(),
            executive: dashboard::Executive::default(),
            config: config::ConfigState::default(),
            tls: std::sync::OnceLock::new(),
        })
    }

    /// Lets the admin API read and change the log filter.
    pub fn set_log_level(&self, level: Arc<pylon_telemetry::LogLevel>) {
        let _ = self.log_level.set(level);
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        if let Ok(mut t) = self.tasks.lock() {
            t.others.push(handle);
        }
    }

    /// Stops background work: queued request-log rows and usage are written (within `grace`),
    /// checks stop, buffered spans are exported.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        let _ = self.stop.send(true);
        let (ledger, others) = match self.tasks.lock() {
            Ok(mut t) => (t.ledger.take(), std::mem::take(&mut t.others)),
            Err(_) => (None, Vec::new()),
        };
        for t in others {
            t.abort();
        }
        self.rollouts.release().await;
        self.alerts.release().await;
        // Settlements, cache writes and webhook sends a request left behind finish first.
        if !self.gateway.drain(grace).await {
            tracing::warn!(target: "pylon::control", "background work did not finish within the grace period");
        }
        if let Some(ledger) = ledger {
            if tokio::time::timeout(grace, ledger).await.is_err() {
                tracing::warn!(target: "pylon::usage", "the request log was not written within the grace period");
            }
        }
        if let Some(t) = self.gateway.tracer() {
            t.shutdown();
        }
    }

    /// Decrypts stored provider credentials into the data plane.
    async fn load_credentials(&self) -> Result<(), pylon_store::StoreError> {
        for c in self.store.credentials().await? {
            match self.keyring.open(&c) {
                Ok(secret) => {
                    if !self.gateway.set_credential(&c.provider, Some(&secret)) {
                        tracing::warn!(target: "pylon::control", provider = %c.provider, "stored credential for a provider that is not configured");
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "pylon::control", error = %e, "cannot use a stored credential")
                }
            }
        }
        Ok(())
    }

    /// Re-encrypts every stored credential under the current master key; returns how many.
    pub(crate) async fn rotate_master(&self) -> Result<usize, admin::AdminError> {
        let Some(current) = self.keyring.current_id() else {
            return Err(admin::AdminError::from_secrets(
                secrets::SecretsError::NoMasterKey,
            ));
        };
        let mut n = 0;
        for c in self.store.credentials().await? {
            if c.master_key_id == current {
                continue;
            }
            let secret = self
                .keyring
                .open(&c)
                .map_err(admin::AdminError::from_secrets)?;
            let sealed = self
                .keyring
                .seal(&c.provider, &secret, keys::unix_now())
                .map_err(admin::AdminError::from_secrets)?;
            self.store.put_credential(&sealed).await?;
            n += 1;
        }
        n += self.rotate_acme(current).await?;
        Ok(n)
    }

    /// Reloads active keys from the store into the data plane's index, and raises budget
    /// counters to what the store has recorded (after a restart, or a Redis without the data).
    pub async fn refresh_keys(&self) -> Result<usize, pylon_store::StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let now = keys::unix_now();
        let keys = self.store.active_keys(now).await?;
        let teams: std::collections::HashMap<String, pylon_store::Team> = self
            .store
            .list_teams()
            .await?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let index = KeyIndex::new(
            keys.iter()
                .filter_map(|k| keys::principal(k, k.team_id.as_ref().and_then(|t| teams.get(t)))),
        );
        let n = index.len();
        self.gateway.set_keys(index);
        self.load_credentials().await?;
        let budgets = keys
            .iter()
            .filter_map(|k| {
                Some((
                    "key",
                    format!("k:{}", k.id),
                    k.id.as_str(),
                    k.name.as_str(),
                    k.budget?,
                ))
            })
            .chain(teams.values().filter_map(|t| {
                Some((
                    "team",
                    format!("t:{}", t.id),
                    t.id.as_str(),
                    t.name.as_str(),
                    t.budget?,
                ))
            }));
        // One query per (scope, period start), however many keys have budgets.
        let mut spends: std::collections::HashMap<
            (bool, String),
            std::collections::HashMap<String, f64>,
        > = std::collections::HashMap::new();
        for (scope, owner, id, name, budget) in budgets {
            let period = keys::budget_period(budget.period);
            let since = match budget.period {
                pylon_store::Period::Daily => pylon_types::day::civil_day(now),
                pylon_store::Period::Monthly => {
                    format!("{}-01", pylon_types::day::civil_month(now))
                }
                pylon_store::Period::Total => "0000-00-00".to_owned(),
            };
            let team = scope == "team";
            let by_owner = match spends.entry((team, since)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let all = crate::ledger::timed(
                        self.gateway.metrics(),
                        "spend_since_all",
                        self.store.spend_since_all(team, &e.key().1),
                    )
                    .await?;
                    e.insert(all)
                }
            };
            let spent = by_owner.get(id).copied().unwrap_or(0.0);
            let (key, ttl) = pylon_proxy::spend_key(&owner, period, now);
            // Nothing recorded: nothing to raise (and no round trip to Redis).
            if spent > 0.0 {
                self.gateway.seed_spend(&key, spent, ttl).await;
            }
            let check = notify::Check {
                scope,
                id,
                name,
                owner: &owner,
                period: budget.period.as_str(),
                period_tag: key.rsplit(':').next().unwrap_or_default(),
                budget_usd: budget.amount_usd,
                spent_usd: spent,
            };
            self.notifier
                .check(&self.store, &self.gateway, check, now)
                .await?;
        }
        Ok(n)
    }

    /// Reloads keys every `every`, logging (not failing) when the store is unreachable.
    pub async fn refresh_loop(self: Arc<Self>, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh_keys().await {
                tracing::warn!(target: "pylon::control", error = %e, "could not refresh keys; serving the last known set");
            }
            // Token files and AWS web identities (cheap unless a credential is due).
            self.gateway.refresh_credentials().await;
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] pylon_store::StoreError),
    #[error(transparent)]
    Build(#[from] pylon_proxy::BuildError),
    #[error("cannot read the secret file {path}: {source}")]
    SecretFile {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error("flags: {0}")]
    Flags(#[from] flags::FlagError),
}

/// A secret from its file when one is configured, else from the environment.
fn secret(
    file: Option<&std::path::Path>,
    from_env: Option<String>,
) -> Result<Option<String>, StartError> {
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|source| StartError::SecretFile {
                path: path.display().to_string(),
                source,
            }),
        None => Ok(from_env),
    }
}

/// Opens the store, builds the gateway, loads keys and credentials. `env` carries the secrets
/// from the environment (passed in so tests need no process globals).
pub async fn bootstrap(
    config: &pylon_config::Config,
    env: Env,
) -> Result<(Arc<Gateway>, Arc<Control>), StartError> {
    let master_key = secret(config.secrets.master_key_file.as_deref(), env.master_key)?;
    let keyring = secrets::Keyring::new(master_key.as_deref(), env.master_key_previous.as_deref())?;
    let idle_writer = config.data.writer_priority == pylon_config::WriterPriority::Idle;
    let url = config.data.store_url.as_ref().map(|u| u.expose());
    let store = Store::open(url, &config.data.dir, idle_writer).await?;
    if idle_writer && store.backend() == pylon_store::Backend::Sqlite && !store.writer_idle() {
        tracing::warn!(target: "pylon::control", "the SQLite batch writer could not be set to the idle CPU policy; it runs at normal priority");
    }
    let token = secret(config.admin.token_file.as_deref(), env.admin_token)?;
    let gateway = Gateway::new(config)?;
    // Before the first request: Azure token files, AWS credentials from a web identity.
    gateway.refresh_credentials().await;
    let rollouts = Arc::new(rollouts::Rollouts::new(
        config,
        store.clone(),
        gateway.clone(),
    ));
    let alerts = Arc::new(alerts::Alerts::new(
        config,
        store.clone(),
        gateway.clone(),
        rollouts.clone(),
    ));
    let control = Control::new(
        store.clone(),
        gateway.clone(),
        token,
        keyring,
        &config.budgets,
        Loops {
            rollouts,
            flags: Arc::new(flags::Flags::new(
                &config.flags,
                store.clone(),
                gateway.clone(),
            )),
            alerts,
            backups: Arc::new(backups::Backups::new(
                config,
                store.clone(),
                gateway.clone(),
            )),
        },
    );
    control.flags.reload().await?;
    control.spawn(control.backups.clone().run());
    control.spawn(control.flags.clone().run());
    // Bounded: if the store falls far behind, events are dropped and counted, never queued
    // without limit.
    let rl = &config.request_log;
    let (tx, rx) = tokio::sync::mpsc::channel(rl.queue);
    gateway.connect_usage(tx);
    let settings = ledger::Settings {
        rows: rl.enabled,
        flush: rl.flush,
        max_rows: rl.queue,
    };
    let metrics = gateway.metrics().clone();
    let ledger = tokio::spawn(ledger::run(
        store.clone(),
        gateway.clone(),
        rx,
        settings,
        metrics.clone(),
        control.stop.subscribe(),
    ));
    if let Ok(mut t) = control.tasks.lock() {
        t.ledger = Some(ledger);
    }
    if rl.enabled {
        control.spawn(ledger::prune_loop(
            store.clone(),
            rl.clone(),
            metrics.clone(),
        ));
    }
    health::check_store(&store, &gateway, &metrics, config.health.check_timeout).await;
    control.spawn(health::check_loop(
        store,
        gateway.clone(),
        config.health.clone(),
        config.data.dir.clone(),
    ));
    // Always running: a rollout may be made through the admin API at any time.
    control.spawn(control.rollouts.clone().run());
    // Always running: a rule may be made through the admin API at any time.
    control.spawn(control.alerts.clone().run());
    if let Some(every) = config.health.probe_every {
        control.spawn(health::probe_loop(gateway.clone(), every));
    }
    let keys = control.refresh_keys().await?;
    tracing::info!(target: "pylon::control", keys, backend = ?control.store.backend(), "store ready");
    if control.admin_token.is_none() {
        tracing::warn!(target: "pylon::control", "no admin token (PYLON_ADMIN_TOKEN or [admin] token_file): the admin API is disabled");
    }
    Ok((gateway, control))
}
