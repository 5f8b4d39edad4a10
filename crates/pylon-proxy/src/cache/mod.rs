//! The exact response cache: chat completions and embeddings, in process (L1, moka TinyLFU,
//! bounded in bytes) and optionally in Redis (L2, shared by instances), with request coalescing.
//!
//! Entries hold the OpenAI-shaped non-stream answer; a streaming request is served by replaying
//! it as a well-formed stream, and a stream that completed is assembled into one. Only complete,
//! successful answers are stored.

mod flight;
pub(crate) mod judge;
pub(crate) mod key;
pub(crate) mod reply;
pub(crate) mod semantic;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pylon_config::Namespace;
use pylon_state::RedisState;
use pylon_telemetry::Metrics;
use pylon_types::openai::Usage;
use serde::{Deserialize, Serialize};

pub(crate) use flight::{FlightGuard, Join, Live};
pub use semantic::VectorIndex;

/// Per-model cache policy, resolved from `[cache]` and the model's overrides.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub ttl: Duration,
    pub any_temperature: bool,
    /// Similar questions are answered too (chat only, needs `[cache.semantic]`).
    pub semantic: bool,
}

/// Who stored an entry and what it answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Unix ms on the cache's clock.
    pub created_ms: i64,
    pub ttl_ms: i64,
    pub namespace: String,
    pub model: String,
    pub key_id: Option<String>,
    pub provider: String,
    pub served_model: String,
    pub usage: Usage,
}

/// One cached answer: the OpenAI-shaped JSON body and what it is.
#[derive(Debug)]
pub(crate) struct Entry {
    pub meta: Meta,
    pub body: Bytes,
}

impl Entry {
    fn weight(&self) -> u32 {
        (self.body.len() + 256 + self.meta.namespace.len() + self.meta.model.len())
            .try_into()
            .unwrap_or(u32::MAX)
    }

    /// Meta as one JSON line, then the body: the L2 value.
    fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.meta).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        let split = memchr::memchr(b'\n', bytes)?;
        let meta = serde_json::from_slice(&bytes[..split]).ok()?;
        Some(Entry {
            meta,
            body: Bytes::copy_from_slice(&bytes[split + 1..]),
        })
    }
}

/// The cache shared by every request of a gateway.
pub(crate) struct ResponseCache {
    l1: moka::future::Cache<String, Arc<Entry>>,
    l2: Option<RedisState>,
    /// Unix ms before which L2 is not tried again after a failure.
    l2_retry_at: AtomicI64,
    flights: Mutex<HashMap<String, (flight::Receiver, Arc<flight::Live>)>>,
    /// Added to the wall clock; tests move it forward to expire entries.
    clock_offset_ms: AtomicI64,
    pub namespace: Namespace,
    pub max_temperature: f64,
    pub coalesce: bool,
    pub(crate) semantic: Option<semantic::Semantic>,
    metrics: Arc<Metrics>,
    /// Background L2 writes, drained at shutdown.
    tasks: tokio_util::task::TaskTracker,
}

impl ResponseCache {
    /// A cache per `[cache]`; `redis_url` makes Redis the second tier.
    pub fn new(
        cfg: &pylon_config::Cache,
        redis_url: Option<&str>,
        metrics: Arc<Metrics>,
        tasks: tokio_util::task::TaskTracker,
    ) -> Result<ResponseCache, pylon_state::StateError> {
        let evictions = metrics.cache_evictions.clone();
        let l1 = moka::future::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|_k: &String, e: &Arc<Entry>| e.weight())
            .expire_after(PerEntryTtl)
            .support_invalidation_closures()
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        let l2 = match redis_url.filter(|_| cfg.redis) {
            Some(url) => Some(RedisState::new(url, "pylon:")?),
            None => None,
        };
        Ok(ResponseCache {
            tasks,
            l1,
            l2,
            l2_retry_at: AtomicI64::new(0),
            flights: Mutex::new(HashMap::new()),
            clock_offset_ms: AtomicI64::new(0),
            namespace: cfg.namespace,
            max_temperature: cfg.max_temperature,
            coalesce: cfg.coalesce,
            semantic: semantic::Semantic::new(
                &cfg.semantic,
                metrics
                    .bounded_drops
                    .with_label_values(&["semantic_context"]),
            ),
            metrics,
        })
    }

    /// Unix ms on the cache's clock.
    pub fn now_ms(&self) -> i64 {
        crate::auth::unix_now_ms() + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    /// Moves the cache's clock forward (tests of expiry).
    pub fn advance(&self, d: Duration) {
        self.clock_offset_ms
            .fetch_add(d.as_millis() as i64, Ordering::Relaxed);
    }

    /// The namespace a caller's entries live in.
    pub fn namespace_of(&self, key_id: Option<&str>, team_id: Option<&str>) -> String {
        let key = key_id.unwrap_or("-");
        match (self.namespace, team_id) {
            (Namespace::Global, _) => "g".to_owned(),
            (Namespace::Team, Some(team)) => format!("t:{team}"),
            _ => format!("k:{key}"),
        }
    }

    fn fresh(&self, e: &Entry) -> bool {
        self.now_ms() < e.meta.created_ms + e.meta.ttl_ms
    }

    fn l2(&self) -> Option<&RedisState> {
        let r = self.l2.as_ref()?;
        (crate::auth::unix_now_ms() >= self.l2_retry_at.load(Ordering::Relaxed)).then_some(r)
    }

    fn l2_failed(&self, e: &pylon_state::StateError) {
        let was = self
            .l2_retry_at
            .swap(crate::auth::unix_now_ms() + 1000, Ordering::Relaxed);
        if was == 0 {
            tracing::warn!(target: "pylon::cache", error = %e, "redis unreachable: caching in process only until it returns");
        }
    }

    /// A fresh entry from L1, else L2 (then kept in L1 too).
    pub async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        if let Some(e) = self.l1.get(key).await {
            if self.fresh(&e) {
                return Some(e);
            }
            self.l1.invalidate(key).await;
        }
        let r = self.l2()?;
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(
            Duration::from_millis(250),
            r.get_bytes(&format!("cache:{key}")),
        )
        .await;
        self.observe_l2("cache_get", started, got.as_ref().is_ok_and(Result::is_ok));
        match got {
            Ok(Ok(Some(bytes))) => {
                let e = Arc::new(Entry::decode(&bytes)?);
                if !self.fresh(&e) {
                    return None;
                }
                self.l1.insert(key.to_owned(), e.clone()).await;
                Some(e)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                self.l2_failed(&e);
                None
            }
            Err(_) => {
                self.l2_failed(&pylon_state::StateError::Unavailable);
                None
            }
        }
    }

    fn observe_l2(&self, op: &'static str, started: std::time::Instant, ok: bool) {
        self.metrics
            .redis_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if !ok {
            self.metrics.redis_errors.with_label_values(&[op]).inc();
        }
    }

    /// Stores an entry in L1 now and in L2 in the background.
    pub async fn put(self: &Arc<Self>, key: String, entry: Arc<Entry>) {
        if self.l2().is_some() {
            let me = self.clone();
            let (k, value, ttl) = (
                format!("cache:{key}"),
                entry.encode(),
                Duration::from_millis(entry.meta.ttl_ms.max(1) as u64),
            );
            self.tasks.spawn(async move {
                if let Some(r) = me.l2() {
                    let started = std::time::Instant::now();
                    let result = r.set_bytes(&k, &value, ttl).await;
                    me.observe_l2("cache_set", started, result.is_ok());
                    if let Err(e) = result {
                        me.l2_failed(&e);
                    }
                }
            });
        }
        self.l1.insert(key, entry).await;
    }

    /// Whether `entry` was reported a wrong answer to `question`, here or (through Redis) on
    /// another instance.
    pub async fn blocked(&self, question: &str, entry: &str) -> bool {
        let Some(sem) = &self.semantic else {
            return false;
        };
        if sem.is_blocked(question, entry) {
            return true;
        }
        let Some(r) = self.l2() else {
            return false;
        };
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(
            Duration::from_millis(250),
            r.get_bytes(&block_key(question, entry)),
        )
        .await;
        self.observe_l2("cache_get", started, got.as_ref().is_ok_and(Result::is_ok));
        match got {
            Ok(Ok(Some(_))) => {
                sem.block(question, entry).await;
                true
            }
            Ok(Ok(None)) => false,
            // Unknown: refuse the candidate rather than risk serving a reported-wrong answer.
            Ok(Err(e)) => {
                self.l2_failed(&e);
                true
            }
            Err(_) => {
                self.l2_failed(&pylon_state::StateError::Unavailable);
                true
            }
        }
    }

    /// A semantic hit was wrong: the entry goes (here and in Redis) and the pair is blocked.
    /// Returns whether this instance still held the entry.
    pub async fn report_wrong(&self, question: &str, entry: &str) -> bool {
        self.metrics.semantic.wrong.inc();
        let held = self.l1.contains_key(entry);
        self.l1.invalidate(entry).await;
        if let Some(sem) = &self.semantic {
            sem.block(question, entry).await;
        }
        if let Some(r) = &self.l2 {
            let gone = r.delete(&format!("cache:{entry}")).await.map(drop);
            let kept = r
                .set_bytes(&block_key(question, entry), b"1", semantic::BLOCK_TTL)
                .await;
            if let Err(e) = gone.and(kept) {
                tracing::warn!(target: "pylon::cache", error = %e, "wrong-hit report not shared through redis: other instances may serve the pair until it expires");
            }
        }
        held
    }

    /// Joins the in-flight call for `key`, or becomes the one others wait for.
    pub fn join(self: &Arc<Self>, key: &str) -> Join {
        flight::join(self, key)
    }

    /// Deletes entries matching every given filter; returns how many left L1 (and L2).
    pub async fn purge(
        &self,
        namespace: Option<&str>,
        model: Option<&str>,
        key_id: Option<&str>,
    ) -> u64 {
        let matches = |e: &Entry| {
            namespace.is_none_or(|n| e.meta.namespace == n)
                && model.is_none_or(|m| e.meta.model == m)
                && key_id.is_none_or(|k| e.meta.key_id.as_deref() == Some(k))
        };
        let doomed: Vec<Arc<String>> = self
            .l1
            .iter()
            .filter(|(_, e)| matches(e))
            .map(|(k, _)| k)
            .collect();
        let mut n = doomed.len() as u64;
        for k in doomed {
            self.l1.invalidate(k.as_str()).await;
        }
        if let Some(r) = self.l2() {
            // Redis keys name the namespace and model; a key filter maps to its namespace.
            let ns = match (namespace, key_id) {
                (Some(n), _) => glob_escape(n),
                (None, Some(k)) => format!("k:{}", glob_escape(k)),
                (None, None) => "*".to_owned(),
            };
            let model = model.map_or("*".to_owned(), glob_escape);
            match r.delete_matching(&format!("cache:{ns}:{model}:*")).await {
                Ok(d) => n = n.max(d),
                Err(e) => self.l2_failed(&e),
            }
        }
        n
    }

    /// Applies pending bookkeeping (moka updates sizes lazily) so the next read is exact.
    pub async fn sync(&self) {
        self.l1.run_pending_tasks().await;
    }

    /// Bytes and entries in L1, for the metrics.
    pub fn usage(&self) -> (u64, u64) {
        (self.l1.weighted_size(), self.l1.entry_count())
    }
}

/// Each entry lives as long as its own TTL (models may override the default).
struct PerEntryTtl;

impl moka::Expiry<String, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        e: &Arc<Entry>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(e.meta.ttl_ms.max(0) as u64))
    }
}

/// The Redis key that blocks one (question, entry) pair.
fn block_key(question: &str, entry: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(entry.as_bytes());
    let e: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("cache-block:{question}:{e}")
}

fn glob_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// What a request on its way to a provider must do with the answer: store it, and release
/// the requests waiting on it.
pub(crate) struct Write {
    pub cache: Arc<ResponseCache>,
    pub key: String,
    pub namespace: String,
    pub model: String,
    pub key_id: Option<String>,
    pub ttl: Duration,
    pub flight: Option<FlightGuard>,
    /// The question, to index the answer for similar questions.
    pub semantic: Option<Box<semantic::Pending>>,
}

impl Write {
    /// Stores a complete answer and hands it to any waiting requests.
    pub async fn finish(mut self, body: Bytes, usage: Usage, provider: &str, served_model: &str) {
        let entry = Arc::new(Entry {
            meta: Meta {
                created_ms: self.cache.now_ms(),
                ttl_ms: self.ttl.as_millis() as i64,
                namespace: std::mem::take(&mut self.namespace),
                model: std::mem::take(&mut self.model),
                key_id: self.key_id.take(),
                provider: provider.to_owned(),
                served_model: served_model.to_owned(),
                usage,
            },
            body,
        });
        let key = std::mem::take(&mut self.key);
        if let (Some(sem), Some(pending)) = (&self.cache.semantic, self.semantic.take()) {
            let (context, vector, stored) = (*pending).stored(key.clone());
            sem.remember(&context, vector, stored);
        }
        self.cache.put(key, entry.clone()).await;
        if let Some(f) = self.flight.take() {
            f.complete(Some(entry));
        }
    }
}
