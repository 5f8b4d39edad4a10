//! Provider wire formats and translation to and from OpenAI chat, the gateway's canonical shape.
//!
//! `openai` bodies are passed through as bytes; `anthropic` and `gemini` are translated both ways,
//! streams included. `mock` is a deterministic provider that speaks all three formats.

pub mod anthropic;
pub mod assemble;
pub mod bedrock;
pub mod embeddings;
pub mod gemini;
mod json;
pub mod mock;
pub mod openai;
#[cfg(test)]
mod params_tests;
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

/// How a translation treats what the provider cannot express, and the target's output cap.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Leave out parameters the provider cannot express instead of refusing the request.
    pub drop_unsupported: bool,
    /// The output cap sent when the client sets none (Anthropic requires one).
    pub max_output_tokens: Option<u32>,
}

impl Options {
    /// `Ok(false)`: leave `param` out (configured to drop); `Err`: refuse, naming it.
    pub fn unsupported(&self, param: &str, provider: &str) -> Result<bool, TranslateError> {
        if self.drop_unsupported {
            return Ok(false);
        }
        Err(TranslateError::Unsupported(format!(
            "`{param}` cannot be expressed for {provider} providers; leave it out, route the model to a provider that has it, or set unsupported_params = \"drop\" on the model"
        )))
    }

    /// Refuses (or drops) `n` > 1, `seed` and `logprobs`, which `provider` has no place for.
    pub fn no_sampling_extras(
        &self,
        req: &pylon_types::openai::ChatRequest,
        provider: &str,
    ) -> Result<(), TranslateError> {
        if req.n.is_some_and(|n| n > 1) {
            self.unsupported("n", provider)?;
        }
        if req.seed.is_some() {
            self.unsupported("seed", provider)?;
        }
        if req.logprobs == Some(true) || req.top_logprobs.is_some() {
            self.unsupported("logprobs", provider)?;
        }
        Ok(())
    }
}

/// A tool call's JSON arguments as a value (`{}` when empty), or a 400 naming the call.
pub fn tool_arguments(
    call: &pylon_types::openai::ToolCall,
) -> Result<serde_json::Value, TranslateError> {
    if call.function.arguments.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_str(&call.function.arguments).map_err(|_| {
        TranslateError::Unsupported(format!(
            "tool call `{}` has arguments that are not valid JSON",
            call.id
        ))
    })
}

/// Thinking budget for an OpenAI `reasoning_effort`.
pub fn thinking_budget(effort: &str) -> Option<u32> {
    match effort {
        "minimal" => Some(1024),
        "low" => Some(2048),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

impl TranslateError {
    fn json(what: &'static str) -> impl FnOnce(serde_json::Error) -> TranslateError {
        move |source| TranslateError::Json { what, source }
    }
}

/// `s` as one URL path segment: every byte but letters, digits and `-._~` percent-encoded, so
/// a model or deployment name can never add a path segment, a query or a fragment to a URL.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
