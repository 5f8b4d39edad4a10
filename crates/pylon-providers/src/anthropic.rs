//! Anthropic Messages ↔ OpenAI chat, both directions, non-stream and stream.
//!
//! Upstream direction (OpenAI client → Anthropic provider): [`to_messages`], [`response_to_openai`],
//! [`StreamDecoder`]. Client direction (Anthropic client → any provider): [`to_chat`],
//! [`response_from_openai`], [`StreamEncoder`].

use pylon_types::anthropic::{
    Block, BlockDelta, ErrorDetail, ImageSource, Message as AMessage, MessageContent, MessageDelta,
    MessagesRequest, MessagesResponse, Metadata, StreamEvent, System, Tool as ATool, ToolChoice,
    ToolResultContent, Usage as AUsage,
};
use pylon_types::openai::{
    AssistantMessage, ChatRequest, ChatResponse, Choice, Chunk, Content, Delta, FunctionCall,
    FunctionDef, FunctionDelta, ImageUrl, Message, Part, Stop, StreamOptions, Tool, ToolCall,
    ToolCallDelta, Usage,
};
use serde_json::{json, Value};

use crate::{sse, unix_now, TranslateError};

/// The `anthropic-version` header value Pylon speaks.
pub const API_VERSION: &str = "2023-06-01";

/// Output cap used when an OpenAI client sets none (Anthropic requires one).
const DEFAULT_MAX_TOKENS: u32 = 4096;

// ---------------------------------------------------------------- OpenAI → Anthropic (upstream)

/// Translates an OpenAI chat request into a Messages request for `model`.
pub fn to_messages(req: &ChatRequest, model: &str) -> Result<MessagesRequest, TranslateError> {
    let mut system = Vec::new();
    let mut messages: Vec<AMessage> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role.as_str() {
            "system" | "developer" => {
                system.push(m.content.as_ref().map(Content::text).unwrap_or_default());
                continue;
            }
            "user" => ("user", user_blocks(m.content.as_ref())),
            "assistant" => ("assistant", assistant_blocks(m)?),
            "tool" | "function" => (
                "user",
                vec![Block::ToolResult {
                    tool_use_id: m.tool_call_id.clone().unwrap_or_default(),
                    content: Some(ToolResultContent::Text(
                        m.content.as_ref().map(Content::text).unwrap_or_default(),
                    )),
                    is_error: None,
                }],
            ),
            other => {
                return Err(TranslateError::Unsupported(format!(
                    "unknown role `{other}`"
                )))
            }
        };
        // Anthropic wants alternating turns: consecutive same-role messages become one.
        match messages.last_mut() {
            Some(AMessage {
                role: last,
                content: MessageContent::Blocks(prev),
            }) if last == role => prev.extend(blocks),
            _ => messages.push(AMessage {
                role: role.to_owned(),
                content: MessageContent::Blocks(blocks),
            }),
        }
    }
    Ok(MessagesRequest {
        model: model.to_owned(),
        messages,
        max_tokens: req.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| System::Text(system.join("\n\n"))),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: None,
        stop_sequences: req.stop.clone().map(Stop::into_vec),
        stream: req.stream,
        tools: req.tools.as_ref().map(|tools| {
            tools
                .iter()
                .map(|t| ATool {
                    name: t.function.name.clone(),
                    description: t.function.description.clone(),
                    input_schema: t
                        .function
                        .parameters
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object"})),
                })
                .collect()
        }),
        tool_choice: req.tool_choice.as_ref().and_then(tool_choice_to_anthropic),
        metadata: req.user.clone().map(|u| Metadata { user_id: Some(u) }),
    })
}

fn user_blocks(content: Option<&Content>) -> Vec<Block> {
    match content {
        None => Vec::new(),
        Some(Content::Text(t)) => vec![Block::Text { text: t.clone() }],
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match p {
                Part::Text { text } => Block::Text { text: text.clone() },
                Part::ImageUrl { image_url } => Block::Image {
                    source: image_source(&image_url.url),
                },
            })
            .collect(),
    }
}

fn image_source(url: &str) -> ImageSource {
    // `data:image/png;base64,AAAA` becomes an inline image; anything else is fetched by URL.
    if let Some((meta, data)) = url.strip_prefix("data:").and_then(|r| r.split_once(',')) {
        if let Some(media_type) = meta.strip_suffix(";base64") {
            return ImageSource::Base64 {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            };
        }
    }
    ImageSource::Url {
        url: url.to_owned(),
    }
}

fn assistant_blocks(m: &Message) -> Result<Vec<Block>, TranslateError> {
    let mut blocks = Vec::new();
    let text = m.content.as_ref().map(Content::text).unwrap_or_default();
    if !text.is_empty() {
        blocks.push(Block::Text { text });
    }
    for call in m.tool_calls.iter().flatten() {
        let input = if call.function.arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&call.function.arguments).map_err(|_| {
                TranslateError::Unsupported(format!(
                    "tool call `{}` has arguments that are not valid JSON",
                    call.id
                ))
            })?
        };
        blocks.push(Block::ToolUse {
            id: call.id.clone(),
            name: call.function.name.clone(),
            input,
        });
    }
    Ok(blocks)
}

fn tool_choice_to_anthropic(choice: &Value) -> Option<ToolChoice> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Any),
            "none" => Some(ToolChoice::None),
            _ => None,
        },
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Tool {
                name: name.to_owned(),
            }),
        _ => None,
    }
}

/// Maps an Anthropic stop reason to OpenAI's finish reason.
pub fn finish_reason(stop: Option<&str>) -> Option<String> {
    stop.map(|s| {
        match s {
            "max_tokens" => "length",
            "tool_use" => "tool_calls",
            "refusal" => "content_filter",
            _ => "stop",
        }
        .to_owned()
    })
}

/// Translates a Messages response into a chat completion.
pub fn response_to_openai(resp: MessagesResponse) -> ChatResponse {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in resp.content {
        match b {
            Block::Text { text: t } => text.push_str(&t),
            Block::ToolUse { id, name, input } => calls.push(ToolCall {
                id,
                kind: "function".to_owned(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            _ => {}
        }
    }
    ChatResponse {
        id: resp.id,
        object: "chat.completion".to_owned(),
        created: unix_now(),
        model: resp.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".to_owned(),
                content: (!text.is_empty() || calls.is_empty()).then_some(text),
                tool_calls: (!calls.is_empty()).then_some(calls),
            },
            finish_reason: finish_reason(resp.stop_reason.as_deref()),
        }],
        usage: Some(Usage::new(
            resp.usage.input_tokens,
            resp.usage.output_tokens,
        )),
    }
}

/// Turns an Anthropic event stream into OpenAI chunks.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    id: String,
    model: String,
    created: u64,
    input_tokens: u64,
    output_tokens: u64,
    /// Content-block index → OpenAI tool-call index, for tool-use blocks.
    tool_blocks: Vec<(u32, u32)>,
}

impl StreamDecoder {
    /// Decodes one event; pushes the chunks it yields. `Ok(true)` when the stream is complete.
    pub fn decode(
        &mut self,
        ev: &sse::Event<'_>,
        out: &mut Vec<Chunk>,
    ) -> Result<bool, TranslateError> {
        let event: StreamEvent = match serde_json::from_str(&ev.data) {
            Ok(e) => e,
            // Unknown event types are allowed by the API's versioning policy: skip them.
            Err(_) if ev.name.is_some_and(|n| !KNOWN_EVENTS.contains(&n)) => return Ok(false),
            Err(e) => {
                return Err(TranslateError::Json {
                    what: "Anthropic stream event",
                    source: e,
                })
            }
        };
        let delta = |d: Delta| Chunk::delta(&self.id, &self.model, self.created, d, None);
        match event {
            StreamEvent::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.created = unix_now();
                self.input_tokens = message.usage.input_tokens;
                self.output_tokens = message.usage.output_tokens;
                out.push(Chunk::delta(
                    &self.id,
                    &self.model,
                    self.created,
                    Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        tool_calls: None,
                    },
                    None,
                ));
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block: Block::ToolUse { id, name, .. },
            } => {
                let tool_index = self.tool_blocks.len() as u32;
                self.tool_blocks.push((index, tool_index));
                out.push(delta(Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: tool_index,
                        id: Some(id),
                        kind: Some("function".into()),
                        function: FunctionDelta {
                            name: Some(name),
                            arguments: Some(String::new()),
                        },
                    }]),
                    ..Delta::default()
                }));
            }
            StreamEvent::ContentBlockDelta {
                delta: BlockDelta::TextDelta { text },
                ..
            } => {
                out.push(delta(Delta {
                    content: Some(text),
                    ..Delta::default()
                }));
            }
            StreamEvent::ContentBlockDelta {
                index,
                delta: BlockDelta::InputJsonDelta { partial_json },
            } => {
                let Some(&(_, tool_index)) = self.tool_blocks.iter().find(|(b, _)| *b == index)
                else {
                    return Ok(false);
                };
                out.push(delta(Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: tool_index,
                        function: FunctionDelta {
                            name: None,
                            arguments: Some(partial_json),
                        },
                        ..ToolCallDelta::default()
                    }]),
                    ..Delta::default()
                }));
            }
            StreamEvent::MessageDelta { delta: d, usage } => {
                self.output_tokens = usage.output_tokens.max(self.output_tokens);
                if usage.input_tokens > 0 {
                    self.input_tokens = usage.input_tokens;
                }
                out.push(Chunk::delta(
                    &self.id,
                    &self.model,
                    self.created,
                    Delta::default(),
                    finish_reason(d.stop_reason.as_deref()),
                ));
            }
            StreamEvent::MessageStop => {
                out.push(Chunk::usage(
                    &self.id,
                    &self.model,
                    self.created,
                    Usage::new(self.input_tokens, self.output_tokens),
                ));
                return Ok(true);
            }
            StreamEvent::Error { error } => return Err(TranslateError::Upstream(error.message)),
            _ => {}
        }
        Ok(false)
    }
}

const KNOWN_EVENTS: [&str; 8] = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

// ---------------------------------------------------------------- Anthropic → OpenAI (client)

/// Translates a Messages request from a client into the canonical chat request.
pub fn to_chat(req: MessagesRequest) -> ChatRequest {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(Message {
            role: "system".into(),
            content: Some(Content::Text(system.text())),
            ..Message::default()
        });
    }
    for m in req.messages {
        let blocks = match m.content {
            MessageContent::Text(t) => vec![Block::Text { text: t }],
            MessageContent::Blocks(b) => b,
        };
        if m.role == "assistant" {
            messages.push(assistant_message(blocks));
            continue;
        }
        let mut parts = Vec::new();
        for b in blocks {
            match b {
                Block::ToolResult {
                    tool_use_id,
                    content,
                    ..
                } => messages.push(Message {
                    role: "tool".into(),
                    content: Some(Content::Text(content.map(|c| c.text()).unwrap_or_default())),
                    tool_call_id: Some(tool_use_id),
                    ..Message::default()
                }),
                Block::Text { text } => parts.push(Part::Text { text }),
                Block::Image { source } => parts.push(Part::ImageUrl {
                    image_url: ImageUrl {
                        url: match source {
                            ImageSource::Base64 { media_type, data } => {
                                format!("data:{media_type};base64,{data}")
                            }
                            ImageSource::Url { url } => url,
                        },
                    },
                }),
                _ => {}
            }
        }
        if !parts.is_empty() {
            let content = match parts.as_slice() {
                [Part::Text { text }] => Content::Text(text.clone()),
                _ => Content::Parts(parts),
            };
            messages.push(Message {
                role: "user".into(),
                content: Some(content),
                ..Message::default()
            });
        }
    }
    let stream = req.stream.unwrap_or(false);
    ChatRequest {
        model: req.model,
        messages,
        max_tokens: Some(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        stop: req.stop_sequences.map(Stop::Many),
        stream: Some(stream),
        // The gateway needs usage to answer with Anthropic's usage fields.
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools: req.tools.map(|tools| {
            tools
                .into_iter()
                .map(|t| Tool {
                    kind: "function".into(),
                    function: FunctionDef {
                        name: t.name,
                        description: t.description,
                        parameters: Some(t.input_schema),
                    },
                })
                .collect()
        }),
        tool_choice: req.tool_choice.map(|c| match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::Any => json!("required"),
            ToolChoice::None => json!("none"),
            ToolChoice::Tool { name } => json!({"type": "function", "function": {"name": name}}),
        }),
        user: req.metadata.and_then(|m| m.user_id),
        ..ChatRequest::default()
    }
}

fn assistant_message(blocks: Vec<Block>) -> Message {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b {
            Block::Text { text: t } => text.push_str(&t),
            Block::ToolUse { id, name, input } => calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            _ => {}
        }
    }
    Message {
        role: "assistant".into(),
        content: (!text.is_empty()).then_some(Content::Text(text)),
        tool_calls: (!calls.is_empty()).then_some(calls),
        ..Message::default()
    }
}

/// Maps OpenAI's finish reason to an Anthropic stop reason.
pub fn stop_reason(finish: Option<&str>) -> String {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
    .to_owned()
}

/// Translates a chat completion into a Messages response.
pub fn response_from_openai(resp: ChatResponse) -> MessagesResponse {
    let choice = resp.choices.into_iter().next();
    let finish = choice.as_ref().and_then(|c| c.finish_reason.clone());
    let mut content = Vec::new();
    if let Some(c) = choice {
        if let Some(text) = c.message.content.filter(|t| !t.is_empty()) {
            content.push(Block::Text { text });
        }
        for call in c.message.tool_calls.into_iter().flatten() {
            content.push(Block::ToolUse {
                id: call.id,
                name: call.function.name,
                input: serde_json::from_str(&call.function.arguments).unwrap_or_else(|_| json!({})),
            });
        }
    }
    let usage = resp.usage.unwrap_or_default();
    MessagesResponse {
        id: anthropic_id(&resp.id),
        kind: "message".into(),
        role: "assistant".into(),
        model: resp.model,
        content,
        stop_reason: Some(stop_reason(finish.as_deref())),
        stop_sequence: None,
        usage: AUsage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        },
    }
}

fn anthropic_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{id}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u32),
    /// Block index and the OpenAI tool-call index it carries.
    Tool(u32, u32),
}

/// Turns OpenAI chunks into Anthropic's event sequence.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    started: bool,
    open: Option<Open>,
    next_block: u32,
    stop_reason: Option<String>,
    usage: Usage,
}

impl StreamEncoder {
    /// Encodes one chunk as zero or more events.
    pub fn encode(&mut self, chunk: &Chunk, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let start = StreamEvent::MessageStart {
                message: MessagesResponse {
                    id: anthropic_id(&chunk.id),
                    kind: "message".into(),
                    role: "assistant".into(),
                    model: chunk.model.clone(),
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage: AUsage::default(),
                },
            };
            emit(out, &start);
        }
        if let Some(u) = chunk.usage {
            self.usage = u;
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                if !matches!(self.open, Some(Open::Text(_))) {
                    self.open_block(
                        out,
                        Open::Text(self.next_block),
                        Block::Text {
                            text: String::new(),
                        },
                    );
                }
                let index = self.current_index();
                emit(
                    out,
                    &StreamEvent::ContentBlockDelta {
                        index,
                        delta: BlockDelta::TextDelta {
                            text: text.to_owned(),
                        },
                    },
                );
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                let same = matches!(self.open, Some(Open::Tool(_, t)) if t == call.index);
                if !same {
                    let block = Block::ToolUse {
                        id: call
                            .id
                            .clone()
                            .unwrap_or_else(|| format!("toolu_{}", call.index)),
                        name: call.function.name.clone().unwrap_or_default(),
                        input: json!({}),
                    };
                    self.open_block(out, Open::Tool(self.next_block, call.index), block);
                }
                if let Some(args) = call.function.arguments.as_deref().filter(|a| !a.is_empty()) {
                    let index = self.current_index();
                    emit(
                        out,
                        &StreamEvent::ContentBlockDelta {
                            index,
                            delta: BlockDelta::InputJsonDelta {
                                partial_json: args.to_owned(),
                            },
                        },
                    );
                }
            }
            if let Some(f) = &choice.finish_reason {
                self.stop_reason = Some(stop_reason(Some(f)));
            }
        }
    }

    /// Closes the message: last block stop, `message_delta` with usage, `message_stop`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            return;
        }
        self.close_block(out);
        emit(
            out,
            &StreamEvent::MessageDelta {
                delta: MessageDelta {
                    stop_reason: Some(
                        self.stop_reason
                            .clone()
                            .unwrap_or_else(|| "end_turn".into()),
                    ),
                    stop_sequence: None,
                },
                usage: AUsage {
                    input_tokens: self.usage.prompt_tokens,
                    output_tokens: self.usage.completion_tokens,
                },
            },
        );
        emit(out, &StreamEvent::MessageStop);
    }

    fn current_index(&self) -> u32 {
        match self.open {
            Some(Open::Text(i) | Open::Tool(i, _)) => i,
            None => 0,
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, open: Open, block: Block) {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some(open);
        emit(
            out,
            &StreamEvent::ContentBlockStart {
                index,
                content_block: block,
            },
        );
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some(Open::Text(index) | Open::Tool(index, _)) = self.open.take() {
            emit(out, &StreamEvent::ContentBlockStop { index });
        }
    }
}

fn emit(out: &mut Vec<u8>, event: &StreamEvent) {
    if let Ok(data) = serde_json::to_string(event) {
        sse::write(out, Some(event.name()), &data);
    }
}

/// An Anthropic `error` event (used by the mock and by tests).
pub fn error_event(kind: &str, message: &str) -> StreamEvent {
    StreamEvent::Error {
        error: ErrorDetail {
            kind: kind.into(),
            message: message.into(),
        },
    }
}

#[cfg(test)]
mod tests;
