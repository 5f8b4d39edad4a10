//! AWS Bedrock's Converse API ↔ OpenAI chat, and its binary event-stream framing
//! (`application/vnd.amazon.eventstream`, every frame checked against its CRCs).
//!
//! Streams are re-framed as SSE text (`event: <:event-type>` + the JSON payload) so the relay
//! treats every provider alike; the [`StreamDecoder`] reads those events.

use aws_smithy_eventstream::frame::{write_message_to, DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message as Frame};
use bytes::{Bytes, BytesMut};
use pylon_types::openai::{
    AssistantMessage, ChatRequest, ChatResponse, Choice, Chunk, Content, Delta, FunctionCall,
    FunctionDelta, Message, Part, Stop, ToolCall, ToolCallDelta, Usage,
};
use serde_json::{json, Map, Value};

use crate::{sse, unix_now, Options, TranslateError};

const WHO: &str = "bedrock-kind";

/// The Converse path for a model (stream or not), the model id as one path segment.
pub fn path(model: &str, stream: bool) -> String {
    let id = crate::path_segment(model);
    if stream {
        format!("/model/{id}/converse-stream")
    } else {
        format!("/model/{id}/converse")
    }
}

/// A chat request as a Converse request for `model`.
pub fn to_converse(req: &ChatRequest, model: &str, opts: Options) -> Result<Value, TranslateError> {
    opts.no_sampling_extras(req, WHO)?;
    if req.response_format.is_some() {
        opts.unsupported("response_format", WHO)?;
    }
    if req.parallel_tool_calls == Some(false) && req.tools.is_some() {
        opts.unsupported("parallel_tool_calls: false", WHO)?;
    }
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role.as_str() {
            "system" | "developer" => {
                system.push(
                    json!({"text": m.content.as_ref().map(Content::text).unwrap_or_default()}),
                );
                continue;
            }
            "user" => ("user", user_blocks(m.content.as_ref())?),
            "assistant" => ("assistant", assistant_blocks(m)?),
            "tool" | "function" => (
                "user",
                vec![json!({"toolResult": {
                    "toolUseId": m.tool_call_id.clone().unwrap_or_default(),
                    "content": [{"text": m.content.as_ref().map(Content::text).unwrap_or_default()}],
                    "status": "success",
                }})],
            ),
            other => {
                return Err(TranslateError::Unsupported(format!(
                    "unknown role `{other}`"
                )))
            }
        };
        // Converse wants alternating turns: consecutive same-role messages become one.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(content) = last["content"].as_array_mut() {
                    content.extend(blocks);
                }
            }
            _ => messages.push(json!({"role": role, "content": blocks})),
        }
    }
    let mut inference = Map::new();
    if let Some(n) = req.max_output_tokens().or(opts.max_output_tokens) {
        inference.insert("maxTokens".into(), json!(n));
    }
    let mut additional = Map::new();
    if let Some(effort) = req.reasoning_effort.as_deref() {
        match crate::thinking_budget(effort) {
            // Anthropic models on Bedrock take Anthropic's thinking settings.
            Some(budget) if model.contains("anthropic.") => {
                additional.insert(
                    "thinking".into(),
                    json!({"type": "enabled", "budget_tokens": budget}),
                );
                let cap = inference
                    .get("maxTokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if cap <= u64::from(budget) {
                    inference.insert("maxTokens".into(), json!(u64::from(budget) + cap.max(1024)));
                }
            }
            _ => {
                opts.unsupported("reasoning_effort (on a non-Anthropic Bedrock model)", WHO)?;
            }
        }
    }
    if additional.is_empty() {
        if let Some(t) = req.temperature {
            inference.insert("temperature".into(), json!(t));
        }
        if let Some(p) = req.top_p {
            inference.insert("topP".into(), json!(p));
        }
    }
    if let Some(stop) = req.stop.clone().map(Stop::into_vec) {
        inference.insert("stopSequences".into(), json!(stop));
    }
    let mut out = json!({"messages": messages});
    if !system.is_empty() {
        out["system"] = Value::Array(system);
    }
    if !inference.is_empty() {
        out["inferenceConfig"] = Value::Object(inference);
    }
    if !additional.is_empty() {
        out["additionalModelRequestFields"] = Value::Object(additional);
    }
    if let Some(tools) = &req.tools {
        let specs: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut spec = json!({
                    "name": t.function.name,
                    "inputSchema": {"json": t.function.parameters.clone().unwrap_or_else(|| json!({"type": "object"}))},
                });
                if let Some(d) = &t.function.description {
                    spec["description"] = json!(d);
                }
                json!({"toolSpec": spec})
            })
            .collect();
        let mut config = json!({"tools": specs});
        match &req.tool_choice {
            Some(Value::String(s)) if s == "required" => config["toolChoice"] = json!({"any": {}}),
            Some(Value::String(s)) if s == "auto" => config["toolChoice"] = json!({"auto": {}}),
            // Converse has no "none": the tools are not offered at all.
            Some(Value::String(s)) if s == "none" => config = Value::Null,
            Some(Value::Object(o)) => {
                if let Some(name) = o.get("function").and_then(|f| f.get("name")) {
                    config["toolChoice"] = json!({"tool": {"name": name}});
                }
            }
            _ => {}
        }
        if !config.is_null() {
            out["toolConfig"] = config;
        }
    }
    Ok(out)
}

/// `data:<media type>;base64,<bytes>` as (format, bytes) for Converse's image and document blocks.
fn inline(url: &str, what: &str) -> Result<(String, String), TranslateError> {
    let (meta, data) = url
        .strip_prefix("data:")
        .and_then(|r| r.split_once(','))
        .ok_or_else(|| {
            TranslateError::Unsupported(format!(
                "a {what} for a bedrock-kind provider must be inline (`data:` URL with base64)"
            ))
        })?;
    let media = meta.trim_end_matches(";base64");
    let format = media.rsplit('/').next().unwrap_or(media);
    Ok((format.to_owned(), data.to_owned()))
}

fn user_blocks(content: Option<&Content>) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::new();
    match content {
        None => {}
        Some(Content::Text(t)) => out.push(json!({"text": t})),
        Some(Content::Parts(parts)) => {
            for p in parts {
                match p {
                    Part::Text {
                        text,
                        cache_control,
                    } => {
                        out.push(json!({"text": text}));
                        // A prompt-cache breakpoint after this block, as Converse marks it.
                        if cache_control.is_some() {
                            out.push(json!({"cachePoint": {"type": "default"}}));
                        }
                    }
                    Part::ImageUrl { image_url } => {
                        let (format, bytes) = inline(&image_url.url, "image")?;
                        out.push(json!({"image": {"format": format, "source": {"bytes": bytes}}}));
                    }
                    Part::File { file } => {
                        let data = file.file_data.as_deref().ok_or_else(|| {
                            TranslateError::Unsupported(
                                "a file part given by `file_id` cannot be sent to a bedrock-kind provider; send `file_data`".into(),
                            )
                        })?;
                        let (format, bytes) = inline(data, "file")?;
                        let name: String = file
                            .filename
                            .as_deref()
                            .unwrap_or("document")
                            .chars()
                            .filter(|c| c.is_alphanumeric() || " -()[]".contains(*c))
                            .collect();
                        out.push(json!({"document": {"format": format, "name": name, "source": {"bytes": bytes}}}));
                    }
                }
            }
        }
    }
    Ok(out)
}

fn assistant_blocks(m: &Message) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = Vec::new();
    let text = m.content.as_ref().map(Content::text).unwrap_or_default();
    if !text.is_empty() {
        blocks.push(json!({"text": text}));
    }
    for call in m.tool_calls.iter().flatten() {
        let input = crate::tool_arguments(call)?;
        blocks.push(
            json!({"toolUse": {"toolUseId": call.id, "name": call.function.name, "input": input}}),
        );
    }
    Ok(blocks)
}

fn finish_reason(stop: Option<&str>) -> Option<String> {
    stop.map(|s| {
        match s {
            "tool_use" => "tool_calls",
            "max_tokens" | "model_context_window_exceeded" => "length",
            "content_filtered" | "guardrail_intervened" => "content_filter",
            _ => "stop",
        }
        .to_owned()
    })
}

/// Converse usage as chat usage (cache reads and writes included in the prompt).
fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (n("cacheReadInputTokens"), n("cacheWriteInputTokens"));
    Usage::new(n("inputTokens") + read + write, n("outputTokens")).with_cache(read, write)
}

/// A Converse response as a chat completion.
pub fn response_to_openai(resp: &Value, model: &str) -> ChatResponse {
    let (mut text, mut thinking, mut calls) = (String::new(), String::new(), Vec::new());
    for block in resp
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(t) = block
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            thinking.push_str(t);
        }
        if let Some(u) = block.get("toolUse") {
            calls.push(ToolCall {
                id: u["toolUseId"].as_str().unwrap_or_default().to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: u["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: u.get("input").map_or_else(|| "{}".into(), Value::to_string),
                },
            });
        }
    }
    ChatResponse {
        id: format!("chatcmpl-bedrock-{}", unix_now()),
        object: "chat.completion".into(),
        created: unix_now(),
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            finish_reason: finish_reason(resp.get("stopReason").and_then(Value::as_str)),
            message: AssistantMessage {
                role: "assistant".into(),
                content: (!text.is_empty() || calls.is_empty()).then_some(text),
                reasoning_content: (!thinking.is_empty()).then_some(thinking),
                tool_calls: (!calls.is_empty()).then_some(calls),
            },
        }],
        usage: resp.get("usage").map(usage_of),
    }
}

/// Turns ConverseStream events (re-framed as SSE by [`EventStreamFramer`]) into chat chunks.
#[derive(Debug)]
pub struct StreamDecoder {
    id: String,
    model: String,
    created: u64,
    /// Content-block index → chat tool-call index, for tool-use blocks.
    tool_blocks: Vec<(u64, u32)>,
}

impl StreamDecoder {
    /// A decoder for a stream of `model`.
    pub fn new(model: &str) -> Self {
        StreamDecoder {
            id: format!("chatcmpl-bedrock-{}", unix_now()),
            model: model.to_owned(),
            created: unix_now(),
            tool_blocks: Vec::new(),
        }
    }

    /// Decodes one event; `Ok(true)` once the stream's usage (its last event) arrived.
    pub fn decode(
        &mut self,
        ev: &sse::Event<'_>,
        out: &mut Vec<Chunk>,
    ) -> Result<bool, TranslateError> {
        let v: Value =
            serde_json::from_str(&ev.data).map_err(TranslateError::json("Bedrock stream event"))?;
        let chunk = |d: Delta, finish: Option<String>| {
            Chunk::delta(&self.id, &self.model, self.created, d, finish)
        };
        match ev.name.unwrap_or_default() {
            "exception" => {
                return Err(TranslateError::Upstream(format!(
                    "{}: {}",
                    v["type"].as_str().unwrap_or("exception"),
                    v["message"].as_str().unwrap_or("")
                )))
            }
            "messageStart" => out.push(chunk(
                Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Delta::default()
                },
                None,
            )),
            "contentBlockStart" => {
                if let Some(u) = v.pointer("/start/toolUse") {
                    let index = v["contentBlockIndex"].as_u64().unwrap_or(0);
                    let tool = self.tool_blocks.len() as u32;
                    self.tool_blocks.push((index, tool));
                    out.push(chunk(
                        Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: tool,
                                id: u["toolUseId"].as_str().map(str::to_owned),
                                kind: Some("function".into()),
                                function: FunctionDelta {
                                    name: u["name"].as_str().map(str::to_owned),
                                    arguments: Some(String::new()),
                                },
                            }]),
                            ..Delta::default()
                        },
                        None,
                    ));
                }
            }
            "contentBlockDelta" => {
                let d = &v["delta"];
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    out.push(chunk(
                        Delta {
                            content: Some(t.to_owned()),
                            ..Delta::default()
                        },
                        None,
                    ));
                } else if let Some(t) = d.pointer("/reasoningContent/text").and_then(Value::as_str)
                {
                    out.push(chunk(
                        Delta {
                            reasoning_content: Some(t.to_owned()),
                            ..Delta::default()
                        },
                        None,
                    ));
                } else if let Some(input) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    let index = v["contentBlockIndex"].as_u64().unwrap_or(0);
                    if let Some(&(_, tool)) = self.tool_blocks.iter().find(|(b, _)| *b == index) {
                        out.push(chunk(
                            Delta {
                                tool_calls: Some(vec![ToolCallDelta {
                                    index: tool,
                                    function: FunctionDelta {
                                        name: None,
                                        arguments: Some(input.to_owned()),
                                    },
                                    ..ToolCallDelta::default()
                                }]),
                                ..Delta::default()
                            },
                            None,
                        ));
                    }
                }
            }
            "messageStop" => out.push(chunk(
                Delta::default(),
                finish_reason(v["stopReason"].as_str().or(Some("end_turn"))),
            )),
            "metadata" => {
                let usage = v.get("usage").map(usage_of).unwrap_or_default();
                out.push(Chunk::usage(&self.id, &self.model, self.created, usage));
                return Ok(true);
            }
            // contentBlockStop and anything new carry nothing chat needs.
            _ => {}
        }
        Ok(false)
    }
}

/// Why an event stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame failed its CRC or length checks.
    #[error("malformed event-stream frame: {0}")]
    Malformed(String),
    /// More than the bound of an unfinished frame arrived.
    #[error("an event-stream frame is larger than {0} bytes")]
    TooLarge(usize),
}

/// Reads `application/vnd.amazon.eventstream` frames (prelude and message CRCs checked by
/// `aws-smithy-eventstream`) and re-frames each as one SSE event.
#[derive(Debug)]
pub struct EventStreamFramer {
    decoder: MessageFrameDecoder,
    buf: BytesMut,
    max: usize,
}

impl Default for EventStreamFramer {
    fn default() -> Self {
        EventStreamFramer {
            decoder: MessageFrameDecoder::new(),
            buf: BytesMut::new(),
            max: 8 * 1024 * 1024,
        }
    }
}

fn header<'a>(frame: &'a Frame, name: &str) -> Option<&'a str> {
    frame
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

impl EventStreamFramer {
    /// Adds bytes; the whole frames so far as SSE events, if any.
    pub fn push(&mut self, data: Bytes) -> Result<Option<Bytes>, FrameError> {
        self.buf.extend_from_slice(&data);
        if self.buf.len() > self.max {
            return Err(FrameError::TooLarge(self.max));
        }
        let mut out = Vec::new();
        loop {
            match self.decoder.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Incomplete) => break,
                Ok(DecodedFrame::Complete(frame)) => {
                    let payload = String::from_utf8_lossy(frame.payload());
                    if header(&frame, ":message-type") == Some("exception") {
                        let kind = header(&frame, ":exception-type").unwrap_or("exception");
                        let message = serde_json::from_str::<Value>(&payload)
                            .ok()
                            .and_then(|v| v["message"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| payload.to_string());
                        let data = json!({"type": kind, "message": message}).to_string();
                        sse::write(&mut out, Some("exception"), &data);
                    } else {
                        let name = header(&frame, ":event-type").unwrap_or("unknown");
                        // One line of JSON, as SSE data must be.
                        let data = serde_json::from_str::<Value>(&payload)
                            .map(|v| v.to_string())
                            .unwrap_or_else(|_| "{}".into());
                        sse::write(&mut out, Some(name), &data);
                    }
                }
                Err(e) => return Err(FrameError::Malformed(e.to_string())),
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

/// One event-stream frame carrying a ConverseStream event (the mock's side of the wire).
pub fn event_frame(event_type: &str, payload: &Value) -> Bytes {
    frame(
        vec![
            Header::new(
                ":event-type",
                HeaderValue::String(event_type.to_owned().into()),
            ),
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            Header::new(":message-type", HeaderValue::String("event".into())),
        ],
        payload,
    )
}

/// One event-stream frame carrying an exception (throttling, validation…).
pub fn exception_frame(exception_type: &str, message: &str) -> Bytes {
    frame(
        vec![
            Header::new(
                ":exception-type",
                HeaderValue::String(exception_type.to_owned().into()),
            ),
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            Header::new(":message-type", HeaderValue::String("exception".into())),
        ],
        &json!({"message": message}),
    )
}

fn frame(headers: Vec<Header>, payload: &Value) -> Bytes {
    let msg = Frame::new_from_parts(headers, Bytes::from(payload.to_string()));
    let mut out = Vec::new();
    // Writing into a Vec cannot fail; an empty frame would fail its CRC at the reader.
    let _ = write_message_to(&msg, &mut out);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_types::openai::ChatRequest;

    #[test]
    fn frames_are_checked_and_reframed_as_events_across_any_split() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&event_frame("messageStart", &json!({"role": "assistant"})));
        bytes.extend_from_slice(&event_frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ));
        bytes.extend_from_slice(&exception_frame("throttlingException", "slow down"));
        let mut f = EventStreamFramer::default();
        let mut text = Vec::new();
        for piece in bytes.chunks(7) {
            if let Some(out) = f.push(Bytes::copy_from_slice(piece)).unwrap() {
                text.extend_from_slice(&out);
            }
        }
        let events: Vec<_> = sse::events(&text).map(sse::parse).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].name, Some("contentBlockDelta"));
        assert_eq!(events[2].name, Some("exception"));
        let mut dec = StreamDecoder::new("m");
        let mut chunks = Vec::new();
        dec.decode(&events[1], &mut chunks).unwrap();
        assert_eq!(chunks[0].choices[0].delta.content.as_deref(), Some("Hi"));
        let e = dec.decode(&events[2], &mut chunks).unwrap_err().to_string();
        assert!(
            e.contains("throttlingException") && e.contains("slow down"),
            "{e}"
        );

        // One flipped byte fails the message CRC.
        let mut bad = event_frame("messageStop", &json!({"stopReason": "end_turn"})).to_vec();
        let last = bad.len() - 5;
        bad[last] ^= 1;
        assert!(EventStreamFramer::default().push(Bytes::from(bad)).is_err());
    }

    #[test]
    fn a_chat_request_becomes_a_converse_request() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 100, "temperature": 0.5, "stop": ["X"],
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "ok"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required"
        }))
        .unwrap();
        let c = to_converse(&req, "anthropic.claude-x", Options::default()).unwrap();
        assert_eq!(c["system"][0]["text"], "be brief");
        assert_eq!(
            c["messages"][0]["content"][1],
            json!({"cachePoint": {"type": "default"}})
        );
        assert_eq!(c["messages"][0]["content"][2]["image"]["format"], "png");
        assert_eq!(c["messages"][1]["content"][0]["toolUse"]["input"]["a"], 1);
        assert_eq!(
            c["messages"][2]["content"][0]["toolResult"]["toolUseId"],
            "t1"
        );
        assert_eq!(
            c["inferenceConfig"],
            json!({"maxTokens": 100, "temperature": 0.5, "stopSequences": ["X"]})
        );
        assert_eq!(c["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(
            path("anthropic.claude-3:0", true),
            "/model/anthropic.claude-3%3A0/converse-stream"
        );
    }
}

/// AWS credentials for SigV4.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret and the token never show in debug output or logs.
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`,
/// `x-amz-content-sha256` when asked) for a `bedrock` request signed at `time`, computed by the
/// `aws-sigv4` crate over the method, URL, the given headers and the body.
pub fn sign(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    creds: &AwsCredentials,
    region: &str,
    time: std::time::SystemTime,
) -> Result<Vec<(String, String)>, String> {
    use aws_sigv4::http_request::{sign as sigv4, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "pylon",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sigv4(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name().to_owned(), h.value().to_owned()))
        .collect())
}
