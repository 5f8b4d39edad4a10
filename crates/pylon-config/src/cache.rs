//! `[cache]` and the per-model `cache` overrides: the response cache.

use std::time::Duration;

use serde::Deserialize;

/// `[cache]`: exact response caching of chat completions and embeddings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// Off unless enabled: a cached answer is a behaviour change clients must expect.
    #[serde(default)]
    pub enabled: bool,
    /// How long an answer is served from the cache.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Bytes held in memory (L1); least valuable entries go first (TinyLFU).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Whose answers may be shared: `key` (default), `team` (keys without a team: per key) or
    /// `global`.
    #[serde(default)]
    pub namespace: Namespace,
    /// Requests with a higher temperature are not cached (a missing temperature counts as 1.0).
    #[serde(default = "default_max_temperature")]
    pub max_temperature: f64,
    /// Share answers through `[data] redis_url` (L2) when it is set.
    #[serde(default = "yes")]
    pub redis: bool,
    /// Identical concurrent misses wait for one upstream call.
    #[serde(default = "yes")]
    pub coalesce: bool,
    /// Semantic caching, for models that opt in with `cache = { semantic = true }`.
    #[serde(default)]
    pub semantic: Semantic,
}

/// `[cache.semantic]`: answers to similar questions, found by embedding similarity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Semantic {
    /// A configured model name whose provider computes the embeddings.
    #[serde(default)]
    pub embedding_model: Option<String>,
    /// Cosine similarity a cached question must reach to answer (0.0 to 1.0).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// What is embedded: the last user turn (the rest of the conversation must match exactly)
    /// or the whole conversation.
    #[serde(default)]
    pub scope: SemanticScope,
    /// Vectors kept per context; a full index starts over.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Contexts (model, parameters, system prompt, earlier turns…) with an index; the least
    /// used are forgotten beyond this, and any unused for an hour.
    #[serde(default = "default_max_contexts")]
    pub max_contexts: u64,
    /// Refuse a similar question whose numbers, units, dates, negation, opposites, direction or
    /// names differ from the one asked (on by default; off only to measure the bare threshold).
    #[serde(default = "yes")]
    pub guards: bool,
    /// Longer questions (in characters) are answered by the exact cache only: an embedding
    /// model reads a bounded prefix, so a long question's vector does not describe all of it.
    #[serde(default = "default_max_question_chars")]
    pub max_question_chars: usize,
    /// A chat model asked whether the question and a guarded candidate have the same answer.
    #[serde(default)]
    pub verify: Option<Verify>,
}

/// `[cache.semantic.verify]`: a judge for semantic hits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// A configured chat model (small and fast is enough: it answers YES or NO).
    pub model: String,
    /// A judge slower than this counts as a refusal (the request goes to its provider).
    #[serde(default = "default_verify_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Decisions remembered per (question, candidate), so a pair is judged once.
    #[serde(default = "default_verify_memo")]
    pub memo: u64,
}

fn default_verify_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_verify_memo() -> u64 {
    100_000
}
fn default_max_question_chars() -> usize {
    2_000
}

fn default_max_contexts() -> u64 {
    10_000
}

impl Default for Semantic {
    fn default() -> Self {
        Semantic {
            embedding_model: None,
            threshold: default_threshold(),
            scope: SemanticScope::default(),
            max_entries: default_max_entries(),
            max_contexts: default_max_contexts(),
            guards: true,
            max_question_chars: default_max_question_chars(),
            verify: None,
        }
    }
}

/// What the semantic cache compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SemanticScope {
    #[default]
    LastUser,
    Conversation,
}

fn default_threshold() -> f64 {
    0.95
}
fn default_max_entries() -> usize {
    100_000
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            enabled: false,
            ttl: default_ttl(),
            max_bytes: default_max_bytes(),
            namespace: Namespace::default(),
            max_temperature: default_max_temperature(),
            redis: true,
            coalesce: true,
            semantic: Semantic::default(),
        }
    }
}

/// Who shares cached answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Namespace {
    #[default]
    Key,
    Team,
    Global,
}

/// `[[models]] cache = { … }`: overrides for one model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCache {
    /// Turn caching on or off for this model.
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Cache whatever the temperature.
    #[serde(default)]
    pub any_temperature: bool,
    /// Also answer similar questions (see `[cache.semantic]`).
    #[serde(default)]
    pub semantic: bool,
}

fn yes() -> bool {
    true
}
fn default_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_temperature() -> f64 {
    1.0
}

/// `[responses]`: responses of the Responses API kept for `GET /v1/responses/{id}` and for
/// `previous_response_id`, per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Responses {
    /// How long a stored response can be read or continued.
    #[serde(default = "default_responses_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Bytes held in memory; the least recently used go first.
    #[serde(default = "default_responses_bytes")]
    pub max_bytes: u64,
    /// Also keep them in Redis (`[data] redis_url`), so every instance can continue them.
    #[serde(default = "yes")]
    pub redis: bool,
}

fn default_responses_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_responses_bytes() -> u64 {
    128 * 1024 * 1024
}

impl Default for Responses {
    fn default() -> Self {
        Responses {
            ttl: default_responses_ttl(),
            max_bytes: default_responses_bytes(),
            redis: true,
        }
    }
}
