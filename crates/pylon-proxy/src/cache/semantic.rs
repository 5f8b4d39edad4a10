//! The semantic cache: a question is embedded (through Pylon's own providers) and answered by
//! the cached answer to the most similar earlier question — but only one asked in exactly the
//! same context (model, parameters, system prompt, tools and, for `last-user` scope, the rest of
//! the conversation), so multi-turn and tool-calling traffic never gets an answer meant for
//! another context. Vectors point at exact-cache entries; the answers live there.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::prelude::Distance;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use pylon_config::SemanticScope;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::snapshot::Gateway;

/// Cosine distance between unit vectors: one pass of multiply-adds in eight lanes (the
/// compiler vectorizes it), clamped so rounding never yields a negative distance.
#[derive(Debug, Default, Clone, Copy)]
struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ca.zip(cb) {
            for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
                *l += x * y;
            }
        }
        (1.0 - (lanes.iter().sum::<f32>() + tail)).max(0.0)
    }
}

/// A copy of `v` scaled to unit length.
fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter().map(|x| x / norm).collect()
}

/// An approximate nearest-neighbour index (HNSW, cosine) from vectors to cache keys.
pub struct VectorIndex {
    hnsw: Hnsw<'static, f32, UnitCosine>,
    keys: RwLock<Vec<String>>,
}

impl VectorIndex {
    /// An empty index sized for about `capacity` vectors.
    pub fn new(capacity: usize) -> VectorIndex {
        VectorIndex {
            hnsw: Hnsw::new(16, capacity.max(16), 16, 100, UnitCosine),
            keys: RwLock::new(Vec::new()),
        }
    }

    /// Adds a vector that answers with `key`.
    pub fn insert(&self, vector: &[f32], key: String) {
        let id = match self.keys.write() {
            Ok(mut keys) => {
                keys.push(key);
                keys.len() - 1
            }
            Err(_) => return,
        };
        self.hnsw.insert((&unit(vector), id));
    }

    /// Up to `k` nearest keys with their cosine similarity, most similar first.
    pub fn nearest(&self, vector: &[f32], k: usize) -> Vec<(String, f32)> {
        let found = self.hnsw.search(&unit(vector), k, 32.max(k));
        let Ok(keys) = self.keys.read() else {
            return Vec::new();
        };
        let mut out: Vec<(String, f32)> = found
            .into_iter()
            .filter_map(|n| Some((keys.get(n.d_id)?.clone(), 1.0 - n.distance)))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.keys.read().map_or(0, |k| k.len())
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a chat request is, for the semantic cache.
pub(crate) struct Question {
    /// Hash of everything that must match exactly.
    pub context: String,
    /// The text that is compared by meaning.
    pub text: String,
}

/// Splits a chat body into context and question; `None` when the last message is not a user
/// turn (a tool result, say): such requests are never answered by similarity.
pub(crate) fn question(model: &str, body: &[u8], scope: SemanticScope) -> Option<Question> {
    let Value::Object(mut map) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    for f in ["user", "stream", "stream_options", "model"] {
        map.remove(f);
    }
    let Value::Array(messages) = map.remove("messages")? else {
        return None;
    };
    let (last, earlier) = messages.split_last()?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let (context_messages, text) = match scope {
        SemanticScope::LastUser => (earlier.to_vec(), text_of(last)),
        SemanticScope::Conversation => {
            let system: Vec<Value> = messages
                .iter()
                .filter(|m| m.get("role").and_then(Value::as_str) == Some("system"))
                .cloned()
                .collect();
            let text = messages
                .iter()
                .filter(|m| m.get("role").and_then(Value::as_str) != Some("system"))
                .map(|m| {
                    format!(
                        "{}: {}",
                        m.get("role").and_then(Value::as_str).unwrap_or(""),
                        text_of(m)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            (system, text)
        }
    };
    if text.trim().is_empty() {
        return None;
    }
    map.insert("messages".into(), Value::Array(context_messages));
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(&map).ok()?);
    let context = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Some(Question { context, text })
}

fn text_of(m: &Value) -> String {
    match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The semantic layer of a gateway's cache.
pub(crate) struct Semantic {
    pub embedding_model: String,
    pub threshold: f32,
    pub scope: SemanticScope,
    max_entries: usize,
    /// One index per context, bounded in number (least used and idle ones are evicted, and
    /// counted in `pylon_bounded_drops_total{what="semantic_context"}`).
    indexes: moka::sync::Cache<String, Arc<VectorIndex>>,
    /// Serializes "full → start over" so two inserts never race to replace one index.
    replacing: Mutex<()>,
    /// Embeddings of texts already seen, so repeated questions cost no embedding call.
    embeddings: moka::future::Cache<String, Arc<Vec<f32>>>,
}

impl Semantic {
    pub fn new(
        cfg: &pylon_config::Semantic,
        evicted: pylon_telemetry::prometheus::IntCounter,
    ) -> Option<Semantic> {
        Some(Semantic {
            embedding_model: cfg.embedding_model.clone()?,
            threshold: cfg.threshold as f32,
            scope: cfg.scope,
            max_entries: cfg.max_entries.max(1),
            indexes: moka::sync::Cache::builder()
                .max_capacity(cfg.max_contexts.max(1))
                .time_to_idle(Duration::from_secs(3600))
                .eviction_listener(move |_k, _v, cause| {
                    if cause.was_evicted() {
                        evicted.inc();
                    }
                })
                .build(),
            replacing: Mutex::new(()),
            embeddings: moka::future::Cache::builder()
                .max_capacity(64 * 1024 * 1024)
                .weigher(|k: &String, v: &Arc<Vec<f32>>| (k.len() + v.len() * 4) as u32)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        })
    }

    fn index(&self, context: &str) -> Option<Arc<VectorIndex>> {
        self.indexes.get(context)
    }

    /// Contexts with an index now.
    #[cfg(test)]
    pub fn contexts(&self) -> u64 {
        self.indexes.run_pending_tasks();
        self.indexes.entry_count()
    }

    /// Cached keys similar enough to `vector` in `context`, most similar first.
    pub fn similar(&self, context: &str, vector: &[f32]) -> Vec<(String, f32)> {
        let Some(index) = self.index(context) else {
            return Vec::new();
        };
        index
            .nearest(vector, 4)
            .into_iter()
            .filter(|(_, sim)| *sim >= self.threshold)
            .collect()
    }

    /// Remembers that `key` answers `vector` in `context`, off the request path (an HNSW insert
    /// costs milliseconds at scale). A full index starts over, which bounds memory (vectors
    /// cannot be deleted from HNSW one by one).
    pub fn remember(&self, context: &str, vector: Arc<Vec<f32>>, key: String) {
        let index = {
            let Ok(_one) = self.replacing.lock() else {
                return;
            };
            match self.indexes.get(context) {
                Some(i) if i.len() < self.max_entries => i,
                _ => {
                    let fresh = Arc::new(VectorIndex::new(1024));
                    self.indexes.insert(context.to_owned(), fresh.clone());
                    fresh
                }
            }
        };
        // Small indexes insert in microseconds: inline, so the next identical question hits.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if index.len() >= 1024 => {
                rt.spawn_blocking(move || index.insert(&vector, key));
            }
            _ => index.insert(&vector, key),
        }
    }

    /// The embedding of `text`, from the memo or the embedding model's provider.
    pub async fn embed(&self, gw: &Gateway, text: &str) -> Result<Arc<Vec<f32>>, String> {
        let memo_key = format!("{:x}", Sha256::digest(text.as_bytes()));
        if let Some(v) = self.embeddings.get(&memo_key).await {
            return Ok(v);
        }
        let v = Arc::new(call_embeddings(gw, &self.embedding_model, text).await?);
        self.embeddings.insert(memo_key, v.clone()).await;
        Ok(v)
    }
}

/// One embeddings call to the first usable target of `model`.
async fn call_embeddings(gw: &Gateway, model: &str, text: &str) -> Result<Vec<f32>, String> {
    let m = gw
        .snap
        .resolve(model)
        .ok_or_else(|| format!("embedding model `{model}` is not configured"))?;
    let now = std::time::Instant::now();
    let target = m
        .targets
        .iter()
        .find(|t| t.health.breaker(now) != crate::breaker::Breaker::Open)
        .ok_or_else(|| format!("every target of `{model}` is unavailable"))?;
    let p = &target.provider;
    let body = serde_json::json!({"model": target.model, "input": text});
    let mut req = Request::post(format!("{}/embeddings", p.base))
        .header(http::header::CONTENT_TYPE, "application/json");
    let stored = p.stored_auth.load();
    if let Some((name, value)) = stored.as_deref().or(p.auth.as_ref()) {
        req = req.header(name, value.clone());
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(p.timeouts.first_byte, p.client.client().request(req))
        .await
        .map_err(|_| "the embedding call timed out".to_owned())?
        .map_err(|e| format!("the embedding call failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("the embedding call answered {}", resp.status()));
    }
    let bytes = tokio::time::timeout(
        p.timeouts.idle,
        Limited::new(resp.into_body(), 4 << 20).collect(),
    )
    .await
    .map_err(|_| "the embedding answer timed out".to_owned())?
    .map_err(|e| e.to_string())?
    .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    v["data"][0]["embedding"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Vec<f32>>()
        })
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "the embedding answer has no vector".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_excludes_the_last_user_turn_and_includes_the_rest() {
        let q = |body: &str| question("m", body.as_bytes(), SemanticScope::LastUser).unwrap();
        let a = q(
            r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"capital of France?"}]}"#,
        );
        let b = q(
            r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"France's capital?"}]}"#,
        );
        let c = q(
            r#"{"messages":[{"role":"system","content":"be verbose"},{"role":"user","content":"capital of France?"}]}"#,
        );
        assert_eq!(a.context, b.context);
        assert_ne!(
            a.context, c.context,
            "another system prompt is another context"
        );
        assert_eq!(a.text, "capital of France?");
        let tool_result = r#"{"messages":[{"role":"user","content":"x"},{"role":"tool","tool_call_id":"1","content":"42"}]}"#;
        assert!(question("m", tool_result.as_bytes(), SemanticScope::LastUser).is_none());
    }

    #[test]
    fn nearest_finds_the_closest_vector() {
        let index = VectorIndex::new(100);
        index.insert(&[1.0, 0.0, 0.0], "x".into());
        index.insert(&[0.0, 1.0, 0.0], "y".into());
        let found = index.nearest(&[0.9, 0.1, 0.0], 2);
        assert_eq!(found[0].0, "x");
        assert!(found[0].1 > 0.9 && found[1].1 < 0.2, "{found:?}");
    }

    #[test]
    fn contexts_are_bounded_and_evictions_counted() {
        let evicted = pylon_telemetry::prometheus::IntCounter::new("e", "e").unwrap();
        let cfg = pylon_config::Semantic {
            embedding_model: Some("embed".into()),
            max_contexts: 5,
            ..pylon_config::Semantic::default()
        };
        let sem = Semantic::new(&cfg, evicted.clone()).unwrap();
        // One conversation prefix each: without a bound every one would keep an index.
        for i in 0..200 {
            sem.remember(
                &format!("ctx-{i}"),
                Arc::new(vec![1.0, 0.0, 0.0]),
                format!("k{i}"),
            );
        }
        assert!(sem.contexts() <= 5, "{} contexts", sem.contexts());
        assert!(evicted.get() >= 195, "{} evictions counted", evicted.get());
        // A context that is still there answers.
        let kept = (0..200)
            .find(|i| sem.index(&format!("ctx-{i}")).is_some())
            .unwrap();
        let found = sem.similar(&format!("ctx-{kept}"), &[1.0, 0.0, 0.0]);
        assert_eq!(found[0].0, format!("k{kept}"));
    }
}
