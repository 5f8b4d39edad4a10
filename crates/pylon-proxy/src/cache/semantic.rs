//! The semantic cache: a question is embedded (through Pylon's own providers) and answered by
//! the cached answer to the most similar earlier question — but only one asked in exactly the
//! same context (model, parameters, system prompt, tools and, for `last-user` scope, the rest of
//! the conversation), so multi-turn and tool-calling traffic never gets an answer meant for
//! another context. Vectors point at exact-cache entries; the answers live there.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pylon_policy::guard::Facets;

use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::prelude::Distance;
use pylon_config::SemanticScope;
use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// An approximate nearest-neighbour index (HNSW, cosine) from vectors to items.
pub struct VectorIndex<T> {
    hnsw: Hnsw<'static, f32, UnitCosine>,
    items: RwLock<Vec<T>>,
}

impl<T: Clone> VectorIndex<T> {
    /// An empty index sized for about `capacity` vectors.
    pub fn new(capacity: usize) -> VectorIndex<T> {
        VectorIndex {
            hnsw: Hnsw::new(16, capacity.max(16), 16, 100, UnitCosine),
            items: RwLock::new(Vec::new()),
        }
    }

    /// Adds a vector that answers with `item`.
    pub fn insert(&self, vector: &[f32], item: T) {
        let id = match self.items.write() {
            Ok(mut items) => {
                items.push(item);
                items.len() - 1
            }
            Err(_) => return,
        };
        self.hnsw.insert((&unit(vector), id));
    }

    /// Up to `k` nearest items with their cosine similarity, most similar first.
    pub fn nearest(&self, vector: &[f32], k: usize) -> Vec<(T, f32)> {
        let found = self.hnsw.search(&unit(vector), k, 32.max(k));
        let Ok(items) = self.items.read() else {
            return Vec::new();
        };
        let mut out: Vec<(T, f32)> = found
            .into_iter()
            .filter_map(|n| Some((items.get(n.d_id)?.clone(), 1.0 - n.distance)))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.items.read().map_or(0, |k| k.len())
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Characters of a question kept beside its vector for the audit (request log, feedback).
const AUDIT_CHARS: usize = 500;

/// A question as stored beside its vector: where its answer is, what the guards compare, and
/// (shortened) what it said.
pub(crate) struct Stored {
    pub entry: String,
    pub text: Box<str>,
    pub facets: Facets,
}

/// What a miss carries so its answer can be found by similar questions later.
pub(crate) struct Pending {
    pub context: String,
    pub vector: Arc<Vec<f32>>,
    pub text: Box<str>,
    pub facets: Facets,
}

impl Pending {
    /// The stored form, once the answer's entry exists.
    pub fn stored(self, entry: String) -> (String, Arc<Vec<f32>>, Arc<Stored>) {
        let stored = Stored {
            entry,
            text: self.text,
            facets: self.facets,
        };
        (self.context, self.vector, Arc::new(stored))
    }
}

/// The first `AUDIT_CHARS` characters of `text`.
pub(crate) fn shortened(text: &str) -> Box<str> {
    match text.char_indices().nth(AUDIT_CHARS) {
        Some((at, _)) => text[..at].into(),
        None => text.into(),
    }
}

/// What a chat request is, for the semantic cache.
pub(crate) struct Question {
    /// Hash of everything that must match exactly.
    pub context: String,
    /// The text that is compared by meaning.
    pub text: String,
    /// A hash of context and text: the question's id in blocks, the judge's memory and the
    /// request log (which never holds the text itself).
    pub id: String,
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
    let context: String = hex(&h.finalize());
    let id = hex(&Sha256::new()
        .chain_update(context.as_bytes())
        .chain_update([0])
        .chain_update(text.as_bytes())
        .finalize()[..16]);
    Some(Question { context, text, id })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// How long a pair reported wrong stays blocked (longer than any sensible cache TTL).
pub(crate) const BLOCK_TTL: Duration = Duration::from_secs(30 * 86_400);

/// The semantic layer of a gateway's cache.
pub(crate) struct Semantic {
    pub embedding_model: String,
    pub threshold: f32,
    pub scope: SemanticScope,
    /// Compare facets (numbers, negation, …) before serving a similar question's answer.
    pub guards: bool,
    /// Longer questions are not compared by meaning.
    pub max_chars: usize,
    pub judge: Option<super::judge::Judge>,
    /// (question id, entry) pairs reported wrong: never served again.
    blocked: moka::sync::Cache<(String, String), ()>,
    max_entries: usize,
    /// One index per context, bounded in number (least used and idle ones are evicted, and
    /// counted in `pylon_bounded_drops_total{what="semantic_context"}`).
    indexes: moka::sync::Cache<String, Arc<VectorIndex<Arc<Stored>>>>,
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
            guards: cfg.guards,
            max_chars: cfg.max_question_chars,
            judge: cfg.verify.as_ref().map(super::judge::Judge::new),
            blocked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(BLOCK_TTL)
                .build(),
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

    fn index(&self, context: &str) -> Option<Arc<VectorIndex<Arc<Stored>>>> {
        self.indexes.get(context)
    }

    /// Whether this instance knows the pair was reported wrong.
    pub fn is_blocked(&self, question: &str, entry: &str) -> bool {
        self.blocked
            .contains_key(&(question.to_owned(), entry.to_owned()))
    }

    /// Never serve `entry` to `question` again (on this instance; Redis carries it to others).
    pub async fn block(&self, question: &str, entry: &str) {
        self.blocked
            .insert((question.to_owned(), entry.to_owned()), ());
        if let Some(j) = &self.judge {
            j.forget(question, entry).await;
        }
    }

    /// Contexts with an index now.
    #[cfg(test)]
    pub fn contexts(&self) -> u64 {
        self.indexes.run_pending_tasks();
        self.indexes.entry_count()
    }

    /// Stored questions similar enough to `vector` in `context`, most similar first.
    pub fn similar(&self, context: &str, vector: &[f32]) -> Vec<(Arc<Stored>, f32)> {
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
    pub fn remember(&self, context: &str, vector: Arc<Vec<f32>>, stored: Arc<Stored>) {
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
                rt.spawn_blocking(move || index.insert(&vector, stored));
            }
            _ => index.insert(&vector, stored),
        }
    }

    /// The embedding of `text`, from the memo or else from `fetch` (the embedding model's
    /// provider).
    pub async fn embed<'a, F, Fut>(&self, text: &'a str, fetch: F) -> Result<Arc<Vec<f32>>, String>
    where
        F: FnOnce(&'a str) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<f32>, String>>,
    {
        let memo_key = format!("{:x}", Sha256::digest(text.as_bytes()));
        if let Some(v) = self.embeddings.get(&memo_key).await {
            return Ok(v);
        }
        let v = Arc::new(fetch(text).await?);
        self.embeddings.insert(memo_key, v.clone()).await;
        Ok(v)
    }
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
        let index = VectorIndex::<&str>::new(100);
        index.insert(&[1.0, 0.0, 0.0], "x");
        index.insert(&[0.0, 1.0, 0.0], "y");
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
            let pending = Pending {
                context: format!("ctx-{i}"),
                vector: Arc::new(vec![1.0, 0.0, 0.0]),
                text: "q".into(),
                facets: Facets::of("q"),
            };
            let (context, vector, stored) = pending.stored(format!("k{i}"));
            sem.remember(&context, vector, stored);
        }
        assert!(sem.contexts() <= 5, "{} contexts", sem.contexts());
        assert!(evicted.get() >= 195, "{} evictions counted", evicted.get());
        // A context that is still there answers.
        let kept = (0..200)
            .find(|i| sem.index(&format!("ctx-{i}")).is_some())
            .unwrap();
        let found = sem.similar(&format!("ctx-{kept}"), &[1.0, 0.0, 0.0]);
        assert_eq!(found[0].0.entry, format!("k{kept}"));
    }
}
