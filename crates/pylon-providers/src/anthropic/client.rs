//! Anthropic Messages from clients → OpenAI chat, and OpenAI answers → Anthropic (whole and streamed).

use pylon_types::anthropic::{
    Block, BlockDelta, ErrorDetail, ImageSource, MessageContent, MessageDelta, MessagesRequest,
    MessagesResponse, StreamEvent, ToolChoice, Usage as AUsage,
};
use pylon_types::openai::{
    ChatRequest, ChatResponse, Chunk, Content, FileRef, FunctionCall, FunctionDef, ImageUrl,
    Message, Part, Stop, StreamOptions, Tool, ToolCall, Usage,
};
use serde_json::json;

use crate::{sse, TranslateError};

/// Block types the translation to chat carries.
const TRANSLATED_BLOCKS: [&str; 5] = ["text", "image", "tool_use", "tool_result", "thinking"];

/// Parses a client's Messages request for translation: a block type or tool chat cannot carry
/// is refused by name; redacted thinking (only its own model can read it) is left out.
pub fn parse_for_translation(body: &[u8]) -> Result<MessagesRequest, TranslateError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(TranslateError::json("Messages request"))?;
    let refuse = |what: String| {
        TranslateError::Unsupported(format!(
            "{what} cannot be translated for a non-Anthropic provider; route this model to an anthropic-kind provider or leave it out"
        ))
    };
    for m in v
        .get_mut("messages")
        .and_then(serde_json::Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(blocks) = m
            .get_mut("content")
            .and_then(serde_json::Value::as_array_mut)
        else {
            continue;
        };
        blocks.retain(|b| b["type"] != "redacted_thinking");
        if let Some(t) = blocks
            .iter()
            .filter_map(|b| b["type"].as_str())
            .find(|t| !TRANSLATED_BLOCKS.contains(t))
        {
            return Err(refuse(format!("content block type `{t}`")));
        }
    }
    for t in v
        .get("tools")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        if t.get("input_schema").is_none() {
            return Err(refuse(format!(
                "server tool `{}`",
                t["type"].as_str().unwrap_or("?")
            )));
        }
    }
    serde_json::from_value(v).map_err(TranslateError::json("Messages request"))
}

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
            MessageContent::Text(t) => vec![Block::text(t)],
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
                Block::Text {
                    text,
                    cache_control,
                } => parts.push(Part::Text {
                    text,
                    cache_control,
                }),
                Block::Image { source } => parts.push(Part::ImageUrl {
                    image_url: ImageUrl {
                        url: source_url(source),
                    },
                }),
                Block::Document { source, title } => parts.push(Part::File {
                    file: FileRef {
                        file_data: Some(source_url(source)),
                        file_id: None,
                        filename: title,
                    },
                }),
                _ => {}
            }
        }
        if !parts.is_empty() {
            let content = match parts.as_slice() {
                [Part::Text {
                    text,
                    cache_control: None,
                }] => Content::Text(text.clone()),
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
    let parallel = match &req.tool_choice {
        Some(
            ToolChoice::Auto {
                disable_parallel_tool_use: true,
            }
            | ToolChoice::Any {
                disable_parallel_tool_use: true,
            }
            | ToolChoice::Tool {
                disable_parallel_tool_use: true,
                ..
            },
        ) => Some(false),
        _ => None,
    };
    // Thinking budgets become the effort OpenAI-style providers take.
    let reasoning_effort = req
        .thinking
        .as_ref()
        .filter(|t| t["type"] == "enabled")
        .map(|t| {
            match t["budget_tokens"].as_u64().unwrap_or(0) {
                0..=2048 => "low",
                2049..=8192 => "medium",
                _ => "high",
            }
            .to_owned()
        });
    let response_format = req
        .output_config
        .as_ref()
        .and_then(|c| c.get("format"))
        .filter(|f| f["type"] == "json_schema")
        .map(|f| {
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": f["schema"], "strict": true}})
        });
    ChatRequest {
        model: req.model,
        parallel_tool_calls: parallel,
        reasoning_effort,
        response_format,
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
            ToolChoice::Auto { .. } => json!("auto"),
            ToolChoice::Any { .. } => json!("required"),
            ToolChoice::None => json!("none"),
            ToolChoice::Tool { name, .. } => {
                json!({"type": "function", "function": {"name": name}})
            }
        }),
        user: req.metadata.and_then(|m| m.user_id),
        ..ChatRequest::default()
    }
}

/// An image or document source as a URL (`data:` for inline bytes).
fn source_url(source: ImageSource) -> String {
    match source {
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        ImageSource::Url { url } => url,
    }
}

fn assistant_message(blocks: Vec<Block>) -> Message {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b {
            Block::Text { text: t, .. } => text.push_str(&t),
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
            content.push(Block::text(text));
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
            ..AUsage::default()
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
                    self.open_block(out, Open::Text(self.next_block), Block::text(""));
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
                    ..AUsage::default()
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
