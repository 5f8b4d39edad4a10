//! Gemini `generateContent` / `streamGenerateContent` ↔ OpenAI chat.

use pylon_types::openai::{
    AssistantMessage, ChatResponse, Choice, Chunk, Delta, FunctionCall, FunctionDelta, ToolCall,
    ToolCallDelta, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{sse, unix_now, TranslateError};

mod request;

pub use request::to_generate;

/// A `generateContent` request body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateRequest {
    pub contents: Vec<GContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<GContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<GTool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<Value>,
}

/// A turn: role (`user` or `model`) and parts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default)]
    pub parts: Vec<GPart>,
}

/// One part; exactly one field is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GPart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<Blob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_data: Option<FileData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<GFunctionCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_response: Option<GFunctionResponse>,
    /// The text is the model's thinking, not its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    /// Opaque state of a thinking model, to be sent back with the part it came on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
}

/// Inline bytes (base64).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    pub mime_type: String,
    pub data: String,
}

/// A file by URI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileData {
    #[serde(default)]
    pub mime_type: Option<String>,
    pub file_uri: String,
}

/// A function call made by the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GFunctionCall {
    pub name: String,
    #[serde(default)]
    pub args: Value,
}

/// A function result sent back to the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GFunctionResponse {
    pub name: String,
    pub response: Value,
}

/// Sampling settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_count: Option<u32>,
    /// `application/json` for JSON output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<String>,
    /// The JSON Schema the output must follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_json_schema: Option<Value>,
    /// `{"thinkingBudget": n, "includeThoughts": true}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<Value>,
}

/// Separates a Gemini thought signature carried inside a tool-call id.
const SIGNATURE: &str = "~ts~";

/// A tool-call id unique across rounds (`call_<response>_<n>`), carrying the call's thought
/// signature when there is one, so it comes back with the call it belongs to.
fn call_id(response: &str, n: u32, signature: Option<&str>) -> String {
    match signature {
        Some(sig) => format!("call_{response}_{n}{SIGNATURE}{sig}"),
        None => format!("call_{response}_{n}"),
    }
}

/// The thought signature a tool-call id carries, if any.
fn signature_of(id: &str) -> Option<&str> {
    id.split_once(SIGNATURE).map(|(_, sig)| sig)
}

/// An id for one response's tool calls: Gemini's response id, else the time.
fn response_key(response_id: Option<&str>) -> String {
    let raw = response_id.map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                .to_string()
        },
        str::to_owned,
    );
    raw.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect()
}

/// Tools: function declarations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GTool {
    pub function_declarations: Vec<Value>,
}

/// A `generateContent` response, or one event of a stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResponse {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
}

/// One candidate answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    #[serde(default)]
    pub content: Option<GContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub index: u32,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub candidates_token_count: u64,
    /// Thinking tokens, billed as output but not counted in `candidates_token_count`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub thoughts_token_count: u64,
    /// Prompt tokens served from Gemini's context cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_content_token_count: u64,
    #[serde(default)]
    pub total_token_count: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl UsageMetadata {
    /// As OpenAI counts it: thinking is output; cached prompt tokens are marked.
    pub fn to_openai(&self) -> Usage {
        Usage::new(
            self.prompt_token_count,
            self.candidates_token_count + self.thoughts_token_count,
        )
        .with_cache(self.cached_content_token_count, 0)
    }
}

/// The URL path (after the base URL) for a model.
pub fn path(model: &str, stream: bool) -> String {
    let model = crate::path_segment(model);
    if stream {
        format!("/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/models/{model}:generateContent")
    }
}

fn finish_reason(reason: Option<&str>, called_tools: bool) -> Option<String> {
    let r = reason?;
    Some(
        match r {
            _ if called_tools => "tool_calls",
            "MAX_TOKENS" => "length",
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
                "content_filter"
            }
            _ => "stop",
        }
        .to_owned(),
    )
}

/// Translates a `generateContent` response into a chat completion (one choice per candidate).
pub fn response_to_openai(resp: GenerateResponse, model: &str) -> ChatResponse {
    let key = response_key(resp.response_id.as_deref());
    let mut candidates = resp.candidates;
    if candidates.is_empty() {
        candidates.push(Candidate::default());
    }
    let choices = candidates
        .into_iter()
        .enumerate()
        .map(|(i, candidate)| {
            let (mut text, mut thinking, mut calls) = (String::new(), String::new(), Vec::new());
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                match (part.text, part.thought) {
                    (Some(t), Some(true)) => thinking.push_str(&t),
                    (Some(t), _) => text.push_str(&t),
                    _ => {}
                }
                if let Some(fc) = part.function_call {
                    let n = calls.len() as u32;
                    calls.push(ToolCall {
                        id: call_id(&format!("{key}{i}"), n, part.thought_signature.as_deref()),
                        kind: "function".into(),
                        function: FunctionCall {
                            name: fc.name,
                            arguments: fc.args.to_string(),
                        },
                    });
                }
            }
            Choice {
                index: i as u32,
                finish_reason: finish_reason(candidate.finish_reason.as_deref(), !calls.is_empty()),
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: (!text.is_empty() || calls.is_empty()).then_some(text),
                    reasoning_content: (!thinking.is_empty()).then_some(thinking),
                    tool_calls: (!calls.is_empty()).then_some(calls),
                },
            }
        })
        .collect();
    let usage = resp.usage_metadata.unwrap_or_default();
    ChatResponse {
        id: resp.response_id.unwrap_or_else(|| "chatcmpl-gemini".into()),
        object: "chat.completion".into(),
        created: unix_now(),
        model: resp.model_version.unwrap_or_else(|| model.to_owned()),
        choices,
        usage: Some(usage.to_openai()),
    }
}

/// Turns a Gemini SSE stream into OpenAI chunks.
#[derive(Debug)]
pub struct StreamDecoder {
    id: String,
    model: String,
    created: u64,
    started: bool,
    tool_calls: u32,
    usage: Usage,
    /// Makes this stream's tool-call ids unique.
    key: String,
}

impl StreamDecoder {
    /// A decoder for a stream of `model`.
    pub fn new(model: &str) -> Self {
        StreamDecoder {
            id: format!("chatcmpl-{}", unix_now()),
            model: model.to_owned(),
            created: unix_now(),
            started: false,
            tool_calls: 0,
            usage: Usage::default(),
            key: String::new(),
        }
    }

    /// Decodes one event; pushes the chunks it yields. `Ok(true)` once a finish reason arrived.
    pub fn decode(
        &mut self,
        ev: &sse::Event<'_>,
        out: &mut Vec<Chunk>,
    ) -> Result<bool, TranslateError> {
        let value: Value =
            serde_json::from_str(&ev.data).map_err(TranslateError::json("Gemini stream event"))?;
        if let Some(message) = value
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
        {
            return Err(TranslateError::Upstream(message.to_owned()));
        }
        let resp: GenerateResponse =
            serde_json::from_value(value).map_err(TranslateError::json("Gemini stream event"))?;
        if let Some(u) = resp.usage_metadata {
            self.usage = u.to_openai();
        }
        if self.key.is_empty() {
            self.key = response_key(resp.response_id.as_deref());
        }
        if let Some(id) = resp.response_id {
            self.id = id;
        }
        let mut delta = Delta::default();
        if !self.started {
            self.started = true;
            delta.role = Some("assistant".into());
        }
        let candidate = resp.candidates.into_iter().next().unwrap_or_default();
        let (mut text, mut thinking) = (String::new(), String::new());
        let mut calls = Vec::new();
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            match (part.text, part.thought) {
                (Some(t), Some(true)) => thinking.push_str(&t),
                (Some(t), _) => text.push_str(&t),
                _ => {}
            }
            if let Some(fc) = part.function_call {
                calls.push(ToolCallDelta {
                    index: self.tool_calls,
                    id: Some(call_id(
                        &format!("{}0", self.key),
                        self.tool_calls,
                        part.thought_signature.as_deref(),
                    )),
                    kind: Some("function".into()),
                    function: FunctionDelta {
                        name: Some(fc.name),
                        arguments: Some(fc.args.to_string()),
                    },
                });
                self.tool_calls += 1;
            }
        }
        if !text.is_empty() || delta.role.is_some() {
            delta.content = Some(text);
        }
        if !thinking.is_empty() {
            delta.reasoning_content = Some(thinking);
        }
        if !calls.is_empty() {
            delta.tool_calls = Some(calls);
        }
        let finish = finish_reason(candidate.finish_reason.as_deref(), self.tool_calls > 0);
        let done = finish.is_some();
        out.push(Chunk::delta(
            &self.id,
            &self.model,
            self.created,
            delta,
            finish,
        ));
        if done {
            out.push(Chunk::usage(
                &self.id,
                &self.model,
                self.created,
                self.usage,
            ));
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;
    use pylon_types::openai::{ChatRequest, Content, Message, ToolCall};

    #[test]
    fn thinking_tokens_are_output_and_model_names_stay_in_one_segment() {
        let resp: GenerateResponse = serde_json::from_value(serde_json::json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2,
                              "thoughtsTokenCount": 30, "cachedContentTokenCount": 4, "totalTokenCount": 42}
        }))
        .unwrap();
        let usage = response_to_openai(resp, "g").usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (10, 32));
        assert_eq!(usage.cache_read_tokens, 4);
        assert_eq!(
            path("x?alt=json&key=leak#", false),
            "/models/x%3Falt%3Djson%26key%3Dleak%23:generateContent"
        );
        assert_eq!(
            path("../../x", true),
            "/models/..%2F..%2Fx:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn tool_round_trip_names_the_function() {
        let req = ChatRequest {
            model: "g".into(),
            messages: vec![
                Message {
                    role: "system".into(),
                    content: Some(Content::Text("be brief".into())),
                    ..Message::default()
                },
                Message {
                    role: "user".into(),
                    content: Some(Content::Text("weather?".into())),
                    ..Message::default()
                },
                Message {
                    role: "assistant".into(),
                    tool_calls: Some(vec![ToolCall {
                        id: "c1".into(),
                        kind: "function".into(),
                        function: FunctionCall {
                            name: "get_weather".into(),
                            arguments: "{\"city\":\"Oslo\"}".into(),
                        },
                    }]),
                    ..Message::default()
                },
                Message {
                    role: "tool".into(),
                    tool_call_id: Some("c1".into()),
                    content: Some(Content::Text("rain".into())),
                    ..Message::default()
                },
            ],
            ..ChatRequest::default()
        };
        let g = serde_json::to_value(to_generate(&req, Options::default()).unwrap()).unwrap();
        assert_eq!(g["systemInstruction"]["parts"][0]["text"], "be brief");
        assert_eq!(g["contents"][1]["role"], "model");
        assert_eq!(
            g["contents"][1]["parts"][0]["functionCall"]["args"]["city"],
            "Oslo"
        );
        assert_eq!(
            g["contents"][2]["parts"][0]["functionResponse"]["name"],
            "get_weather"
        );
        assert_eq!(
            g["contents"][2]["parts"][0]["functionResponse"]["response"]["result"],
            "rain"
        );
    }

    #[test]
    fn stream_ends_with_finish_and_usage() {
        let mut d = StreamDecoder::new("gemini-x");
        let mut out = Vec::new();
        let ev = |data: &str| sse::Event {
            name: None,
            data: data.to_owned(),
        };
        assert!(!d
            .decode(
                &ev(r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi "}]}}]}"#),
                &mut out
            )
            .unwrap());
        assert!(d
            .decode(&ev(r#"{"candidates":[{"content":{"parts":[{"text":"there"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#), &mut out)
            .unwrap());
        assert_eq!(out[0].choices[0].delta.role.as_deref(), Some("assistant"));
        assert_eq!(out[1].choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(out[2].usage, Some(Usage::new(3, 2)));
    }
}
