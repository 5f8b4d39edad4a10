//! OpenAI wire: the fields the gateway reads from a body it otherwise passes through untouched.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use pylon_types::openai::{StreamOptions, Usage};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::TranslateError;

/// The fields of a chat request the gateway needs, borrowed from the body.
#[derive(Debug, Deserialize)]
pub struct ChatHead<'a> {
    #[serde(borrow)]
    pub model: &'a RawValue,
    #[serde(borrow)]
    pub messages: Vec<MessageHead<'a>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// The end user the application names (OpenAI's `user`).
    #[serde(default, borrow)]
    pub user: Option<Cow<'a, str>>,
}

/// Each message must at least say who speaks; its content is only measured.
#[derive(Debug, Deserialize)]
pub struct MessageHead<'a> {
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    #[serde(borrow, default)]
    pub content: Option<&'a RawValue>,
}

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A validated request head: model name and where it sits in the body.
#[derive(Debug)]
pub struct Head<'a> {
    pub model: Cow<'a, str>,
    pub model_span: Range<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// Number of messages (0 for embeddings).
    pub messages: usize,
    /// Size in bytes of the largest message content, as JSON.
    pub largest_message: usize,
    /// The request's `user` field (chat), if any.
    pub user: Option<Cow<'a, str>>,
}

/// Reads and checks the head of a chat-completions body.
pub fn chat_head(body: &[u8]) -> Result<Head<'_>, TranslateError> {
    let head: ChatHead<'_> =
        serde_json::from_slice(body).map_err(TranslateError::json("chat request"))?;
    if head.messages.is_empty() {
        return Err(TranslateError::Unsupported(
            "`messages` must contain at least one message".into(),
        ));
    }
    if let Some(bad) = head
        .messages
        .iter()
        .find(|m| !ROLES.contains(&m.role.as_ref()))
    {
        return Err(TranslateError::Unsupported(format!(
            "message role `{}` is not one of {}",
            bad.role,
            ROLES.join(", ")
        )));
    }
    Ok(Head {
        model: model_name(head.model)?,
        model_span: span_of(body, head.model),
        stream: head.stream.unwrap_or(false),
        include_usage: head.stream_options.is_some_and(|o| o.include_usage),
        messages: head.messages.len(),
        largest_message: head
            .messages
            .iter()
            .map(|m| m.content.map_or(0, |c| c.get().len()))
            .max()
            .unwrap_or(0),
        user: head.user,
    })
}

/// The fields of a legacy completions request the gateway needs.
#[derive(Debug, Deserialize)]
struct CompletionsHead<'a> {
    #[serde(borrow)]
    model: &'a RawValue,
    prompt: serde::de::IgnoredAny,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default, borrow)]
    user: Option<Cow<'a, str>>,
}

/// Reads and checks the head of a legacy completions body (`prompt` is required).
pub fn completions_head(body: &[u8]) -> Result<Head<'_>, TranslateError> {
    let head: CompletionsHead<'_> =
        serde_json::from_slice(body).map_err(TranslateError::json("completions request"))?;
    let _ = head.prompt;
    Ok(Head {
        model: model_name(head.model)?,
        model_span: span_of(body, head.model),
        stream: head.stream.unwrap_or(false),
        include_usage: head.stream_options.is_some_and(|o| o.include_usage),
        messages: 0,
        largest_message: 0,
        user: head.user,
    })
}

/// Reads and checks the head of an embeddings body.
pub fn embeddings_head(body: &[u8]) -> Result<Head<'_>, TranslateError> {
    let head: pylon_types::openai::EmbeddingsHead<'_> =
        serde_json::from_slice(body).map_err(TranslateError::json("embeddings request"))?;
    Ok(Head {
        model: model_name(head.model)?,
        model_span: span_of(body, head.model),
        stream: false,
        include_usage: false,
        messages: 0,
        largest_message: 0,
        user: None,
    })
}

#[derive(Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow)]
    model: &'a RawValue,
}

/// The `model` of any JSON body and its byte range, for pass-through with the model replaced.
pub fn model_field(body: &[u8]) -> Result<(Cow<'_, str>, Range<usize>), TranslateError> {
    let head: ModelOnly<'_> =
        serde_json::from_slice(body).map_err(TranslateError::json("request"))?;
    Ok((model_name(head.model)?, span_of(body, head.model)))
}

fn model_name(raw: &RawValue) -> Result<Cow<'_, str>, TranslateError> {
    let name: Cow<'_, str> = serde_json::from_str(raw.get())
        .map_err(|_| TranslateError::Unsupported("`model` must be a string".into()))?;
    if name.is_empty() {
        return Err(TranslateError::Unsupported(
            "`model` must not be empty".into(),
        ));
    }
    Ok(name)
}

/// Byte range of a borrowed raw value inside the body it was parsed from.
fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + raw.get().len()
}

/// The body with the model value replaced, every other byte as the client sent it.
pub fn with_model(body: &[u8], span: Range<usize>, model: &str) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + model.len() + 2);
    out.extend_from_slice(&body[..span.start]);
    push_json_string(&mut out, model);
    out.extend_from_slice(&body[span.end..]);
    Bytes::from(out)
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.extend_from_slice(quoted.as_bytes()),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<UsageWithDetails>,
}

/// `usage` with its fields spelled out: `#[serde(flatten)]` buffered every field into a map
/// first, a third of the cost of reading a response's usage.
#[derive(Deserialize)]
struct UsageWithDetails {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

/// The `usage` of a response body or stream chunk, if it carries one (with the prompt tokens
/// read from the provider's cache).
pub fn usage_of(json: &[u8]) -> Option<Usage> {
    let u = match crate::json::top_level_value(json, b"usage") {
        Some(value) => {
            let mut de = serde_json::Deserializer::from_slice(value);
            Option::<UsageWithDetails>::deserialize(&mut de).ok()?
        }
        None => serde_json::from_slice::<UsageOnly>(json).ok()?.usage,
    }?;
    let cached = u.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
    let usage = Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.total_tokens,
        ..Usage::default()
    };
    Some(usage.with_cache(cached, 0))
}

/// The body with `stream_options.include_usage` set, so the provider reports a stream's usage
/// even when the client did not ask (most clients don't). `None` if it is not a JSON object.
pub fn with_stream_usage(body: &[u8]) -> Option<Bytes> {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
    if memchr::memmem::find(body, b"\"stream_options\"").is_none() {
        // Spliced in after the opening brace: the rest of the body stays byte for byte.
        let at = body.iter().position(|b| !b.is_ascii_whitespace())?;
        if body[at] != b'{' {
            return None;
        }
        let mut out = Vec::with_capacity(body.len() + FIELD.len());
        out.extend_from_slice(&body[..=at]);
        out.extend_from_slice(FIELD);
        out.extend_from_slice(&body[at + 1..]);
        return Some(Bytes::from(out));
    }
    // Rare: the client sent stream_options without include_usage; rewrite that field only.
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let opts = v.as_object_mut()?.entry("stream_options");
    let opts = opts.or_insert_with(|| serde_json::json!({}));
    if !opts.is_object() {
        *opts = serde_json::json!({});
    }
    opts.as_object_mut()?
        .insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// Whether a stream event is the usage-only chunk (`"choices":[]` with `usage`) that
/// `include_usage` adds at the end.
pub fn is_usage_chunk(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        choices: Option<Vec<serde::de::IgnoredAny>>,
        #[serde(default)]
        usage: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(data)
        .is_ok_and(|p| p.usage.is_some() && p.choices.is_some_and(|c| c.is_empty()))
}

/// The message of a provider error body; OpenAI, Anthropic and Gemini all use `error.message`.
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("error")?.get("message")?.as_str().map(str::to_owned)
}

/// An Azure OpenAI error body in OpenAI's shape: `{"error": {message, type, param, code}}`
/// (Azure adds `status` and `innererror`, and leaves `type` null; its content filter is
/// `code: "content_filter"` with `param: "prompt"`, as OpenAI's SDKs expect).
pub fn azure_error(body: &[u8]) -> Option<Bytes> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let inner = e
        .pointer("/innererror/code")
        .and_then(serde_json::Value::as_str);
    let code = e
        .get("code")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .or_else(|| e.get("code").map(ToString::to_string));
    let filtered =
        code.as_deref() == Some("content_filter") || inner == Some("ResponsibleAIPolicyViolation");
    let out = serde_json::json!({"error": {
        "message": e.get("message").and_then(serde_json::Value::as_str).unwrap_or("Azure OpenAI error"),
        "type": e.get("type").and_then(serde_json::Value::as_str).unwrap_or("invalid_request_error"),
        "param": if filtered { serde_json::json!("prompt") } else { e.get("param").cloned().unwrap_or_default() },
        "code": if filtered { Some("content_filter".to_owned()) } else { code },
    }});
    serde_json::to_vec(&out).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_usage_is_asked_for_without_touching_the_rest() {
        let body = br#" {"model":"m","stream":true,"messages":[]}"#;
        let out = with_stream_usage(body).unwrap();
        assert_eq!(
            &out[..],
            br#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        let body = br#"{"model":"m","stream_options":{"include_usage":false},"messages":[]}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&with_stream_usage(body).unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        assert!(with_stream_usage(b"[1]").is_none());
        assert!(is_usage_chunk(
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(!is_usage_chunk(
            br#"{"id":"x","choices":[{"index":0}],"usage":null}"#
        ));
        assert!(!is_usage_chunk(br#"{"id":"x","choices":[]}"#));
    }

    #[test]
    fn model_is_replaced_and_nothing_else_changes() {
        let body = br#"{ "messages":[{"role":"user","content":"hi"}], "model" : "chat", "x":{"y":[1,2.50]}}"#;
        let head = chat_head(body).unwrap();
        assert_eq!(head.model, "chat");
        let out = with_model(body, head.model_span, "gpt-4o\"mini");
        assert_eq!(
            &out[..],
            br#"{ "messages":[{"role":"user","content":"hi"}], "model" : "gpt-4o\"mini", "x":{"y":[1,2.50]}}"#
        );
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let body = br#"{"model":"a\/b","messages":[{"role":"user"}]}"#;
        assert_eq!(chat_head(body).unwrap().model, "a/b");
    }

    #[test]
    fn bad_heads_are_rejected() {
        assert!(chat_head(b"{").is_err());
        assert!(chat_head(br#"{"model":"m","messages":[]}"#).is_err());
        assert!(chat_head(br#"{"model":"m"}"#).is_err());
        assert!(chat_head(br#"{"model":3,"messages":[{"role":"user"}]}"#).is_err());
        assert!(chat_head(br#"{"model":"m","messages":[{"role":"wizard"}]}"#).is_err());
        assert!(chat_head(br#"{"model":"m","messages":[{"content":"x"}]}"#).is_err());
    }
}
