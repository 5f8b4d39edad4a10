//! Provider wire formats and translation to and from OpenAI chat, the gateway's canonical shape.
//!
//! `openai` bodies are passed through as bytes; `anthropic` and `gemini` are translated both ways,
//! streams included. `mock` is a deterministic provider that speaks all three formats.

pub mod anthropic;
pub mod assemble;
pub mod gemini;
pub mod mock;
pub mod openai;
pub mod responses;
pub mod sse;
pub mod stream;

/// Why a body could not be translated.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The body is not the JSON the format requires.
    #[error("malformed {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    /// The body is JSON but cannot be expressed in the other format.
    #[error("{0}")]
    Unsupported(String),
    /// The provider reported an error inside a stream.
    #[error("provider error in stream: {0}")]
    Upstream(String),
}

impl TranslateError {
    fn json(what: &'static str) -> impl FnOnce(serde_json::Error) -> TranslateError {
        move |source| TranslateError::Json { what, source }
    }
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
