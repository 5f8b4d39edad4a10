//! Responses API responses kept for `GET /v1/responses/{id}` and `previous_response_id`: in
//! memory (bounded in bytes, with a time to live) and, with Redis, shared by every instance.
//!
//! Pylon keeps them itself, whichever provider answered, so a conversation continues across
//! providers and fallbacks: a continued request is sent with the whole conversation as its input.

use std::sync::Arc;
use std::time::Duration;

use pylon_state::RedisState;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::quote;
use crate::ProxyError;

/// One stored response: who may read it, what it was given and what it answered.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// The key id that made it (`-` with auth off).
    pub owner: String,
    /// The whole conversation it was given (earlier turns included).
    pub input: Vec<Value>,
    /// The response object as the client received it.
    pub response: Value,
    /// Its size as JSON, what it weighs in memory.
    #[serde(skip)]
    pub size: u32,
}

/// The response store.
pub(crate) struct ResponseStore {
    local: moka::sync::Cache<String, Arc<Stored>>,
    redis: Option<Arc<RedisState>>,
    ttl: Duration,
    tasks: tokio_util::task::TaskTracker,
    metrics: Arc<pylon_telemetry::Metrics>,
}

/// Redis keys live under `pylon:resp:`.
const PREFIX: &str = "resp:";

impl ResponseStore {
    /// A store per `[responses]`; `redis_url` shares it between instances.
    pub fn new(
        cfg: &pylon_config::Responses,
        redis_url: Option<&str>,
        metrics: Arc<pylon_telemetry::Metrics>,
        tasks: tokio_util::task::TaskTracker,
    ) -> Result<ResponseStore, pylon_state::StateError> {
        let dropped = metrics
            .bounded_drops
            .with_label_values(&["stored_response"]);
        let local = moka::sync::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|_k: &String, v: &Arc<Stored>| v.size)
            .time_to_live(cfg.ttl)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    dropped.inc();
                }
            })
            .build();
        let redis = match redis_url.filter(|_| cfg.redis) {
            Some(url) => Some(Arc::new(RedisState::new(url, "pylon:")?)),
            None => None,
        };
        Ok(ResponseStore {
            local,
            redis,
            ttl: cfg.ttl,
            tasks,
            metrics,
        })
    }

    /// Keeps a response: in memory at once, in Redis on a tracked task (never on the
    /// request's path).
    pub fn put(&self, id: String, mut stored: Stored) {
        // Serialized once: its length is the weight, its bytes what Redis keeps.
        let bytes = serde_json::to_vec(&stored).unwrap_or_default();
        stored.size = u32::try_from(bytes.len() + id.len()).unwrap_or(u32::MAX);
        let stored = Arc::new(stored);
        if let Some(r) = &self.redis {
            let (r, key, ttl, errors) = (
                r.clone(),
                format!("{PREFIX}{id}"),
                self.ttl,
                self.metrics
                    .redis_errors
                    .with_label_values(&["response_put"]),
            );
            self.tasks.spawn(async move {
                if r.set_bytes(&key, &bytes, ttl).await.is_err() {
                    errors.inc();
                }
            });
        }
        self.local.insert(id, stored);
    }

    /// The response `id`, if it exists and `owner` made it.
    pub async fn get(&self, id: &str, owner: &str) -> Result<Arc<Stored>, ProxyError> {
        let missing = || ProxyError::NoResponse(quote(id));
        let found = match self.local.get(id) {
            Some(s) => Some(s),
            None => self.read_redis(id).await,
        };
        found.filter(|s| s.owner == owner).ok_or_else(missing)
    }

    async fn read_redis(&self, id: &str) -> Option<Arc<Stored>> {
        let r = self.redis.as_ref()?;
        let bytes = match r.get_bytes(&format!("{PREFIX}{id}")).await {
            Ok(b) => b?,
            Err(_) => {
                self.metrics
                    .redis_errors
                    .with_label_values(&["response_get"])
                    .inc();
                return None;
            }
        };
        let mut stored: Stored = serde_json::from_slice(&bytes).ok()?;
        stored.size = u32::try_from(bytes.len() + id.len()).unwrap_or(u32::MAX);
        let stored = Arc::new(stored);
        self.local.insert(id.to_owned(), stored.clone());
        Some(stored)
    }

    /// Deletes the response `id` if `owner` made it.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<(), ProxyError> {
        self.get(id, owner).await?;
        self.local.invalidate(id);
        if let Some(r) = &self.redis {
            r.delete(&format!("{PREFIX}{id}")).await.map_err(|e| {
                ProxyError::Overloaded(format!(
                    "the response could not be deleted from Redis ({e}); retry"
                ))
            })?;
        }
        Ok(())
    }
}
