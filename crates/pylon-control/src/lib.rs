//! The control plane: the admin API under `/admin/v1/`, its OpenAPI document and docs page, and
//! keeping the data plane's key index in step with the store.

mod admin;
mod keys;

use std::sync::Arc;

use pylon_proxy::{Gateway, KeyIndex};
use pylon_store::Store;

pub use admin::{openapi, router};
pub use keys::{generate, KEY_PREFIX};

/// Shared state of the control plane.
pub struct Control {
    pub store: Store,
    pub gateway: Arc<Gateway>,
    /// SHA-256 of the admin token; `None` disables the admin API.
    admin_token: Option<[u8; 32]>,
}

impl Control {
    /// A control plane over `store` that keeps `gateway`'s keys current.
    pub fn new(store: Store, gateway: Arc<Gateway>, admin_token: Option<String>) -> Arc<Control> {
        let admin_token = admin_token
            .filter(|t| !t.is_empty())
            .map(|t| pylon_proxy::hash_key(&t));
        Arc::new(Control {
            store,
            gateway,
            admin_token,
        })
    }

    /// Reloads active keys from the store into the data plane's index.
    pub async fn refresh_keys(&self) -> Result<usize, pylon_store::StoreError> {
        let now = keys::unix_now();
        let keys = self.store.active_keys(now).await?;
        let index = KeyIndex::new(keys.iter().filter_map(keys::principal));
        let n = index.len();
        self.gateway.set_keys(index);
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
    #[error("cannot read the admin token file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
}

/// Opens the store, builds the gateway, loads keys and returns the control-plane routes.
/// `admin_token_env` is the value of `PYLON_ADMIN_TOKEN` (passed in so tests need no globals).
pub async fn bootstrap(
    config: &pylon_config::Config,
    admin_token_env: Option<String>,
) -> Result<(Arc<Gateway>, Arc<Control>), StartError> {
    let store = match &config.data.store_url {
        Some(url) => Store::connect(url.expose()).await?,
        None => Store::open_sqlite(&config.data.dir).await?,
    };
    let token = match &config.admin.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| StartError::TokenFile {
                    path: path.display().to_string(),
                    source,
                })?
                .trim()
                .to_owned(),
        ),
        None => admin_token_env,
    };
    let gateway = Gateway::new(config)?;
    let control = Control::new(store, gateway.clone(), token);
    let keys = control.refresh_keys().await?;
    tracing::info!(target: "pylon::control", keys, backend = ?control.store.backend(), "store ready");
    if control.admin_token.is_none() {
        tracing::warn!(target: "pylon::control", "no admin token (PYLON_ADMIN_TOKEN or [admin] token_file): the admin API is disabled");
    }
    Ok((gateway, control))
}
