//! OpenAI chat → Anthropic Messages (requests) and back (responses, streams).

use pylon_types::anthropic::{
    Block, BlockDelta, ImageSource, Message as AMessage, MessageContent, MessagesRequest,
    MessagesResponse, Metadata, StreamEvent, System, Tool as ATool, ToolChoice, ToolResultContent,
};
use pylon_types::openai::{
    AssistantMessage, ChatRequest, ChatResponse, Choice, Chunk, Content, Delta, FunctionCall,
    FunctionDelta, Message, Part, Stop, ToolCall, ToolCallDelta,
};
use serde_json::{json, Value};

use crate::{sse, unix_now, Options, TranslateError};

/// The output cap of Anthropic models by name, used when neither the client nor the target's
/// `max_output_tokens` sets one: a fixed small cap would cut long answers short on failover.
pub fn model_max_tokens(model: &str) -> u32 {
    const LIMITS: [(&str, u32); 9] = [
        ("claude-opus-4-1", 32_000),
        ("claude-opus-4-0", 32_000),
        ("claude-opus-4-2025", 32_000),
        ("claude-3-7-sonnet", 64_000),
        ("claude-3-5-haiku", 8_192),
        ("claude-3-5-sonnet", 8_192),
        ("claude-3-haiku", 4_096),
        ("claude-3-opus", 4_096),
        ("claude-3-sonnet", 4_096),
    ];
    LIMITS
        .iter()
        .find(|(prefix, _)| model.starts_with(prefix))
        // Current families (Sonnet 4.x, Opus 4.5+, Haiku 4.5) allow 64k.
        .map_or(64_000, |(_, n)| *n)
}

/// Translates an OpenAI chat request into a Messages request for `model`.
pub fn to_messages(
    req: &ChatRequest,
    model: &str,
    opts: Options,
) -> Result<MessagesRequest, TranslateError> {
    const WHO: &str = "anthropic-kind";
    opts.no_sampling_extras(req, WHO)?;
    let output_config = match &req.response_format {
        Some(f) if f["type"] == "json_schema" => Some(json!({"format": {
            "type": "json_schema",
            "schema": f["json_schema"]["schema"],
        }})),
        Some(f) if f["type"] == "json_object" => {
            opts.unsupported("response_format: json_object (use json_schema)", WHO)?;
            None
        }
        _ => None,
    };
    let mut system = Vec::new();
    let mut messages: Vec<AMessage> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role.as_str() {
            "system" | "developer" => {
                system.push(m.content.as_ref().map(Content::text).unwrap_or_default());
                continue;
            }
            "user" => ("user", user_blocks(m.content.as_ref())?),
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
    let mut max_tokens = req
        .max_output_tokens()
        .or(opts.max_output_tokens)
        .unwrap_or_else(|| model_max_tokens(model));
    // Thinking needs a budget below the cap, and a temperature left at its default.
    let thinking = req
        .reasoning_effort
        .as_deref()
        .and_then(crate::thinking_budget)
        .map(|budget| {
            if max_tokens <= budget {
                max_tokens = budget + max_tokens.max(1024);
            }
            json!({"type": "enabled", "budget_tokens": budget})
        });
    let mut tool_choice = req.tool_choice.as_ref().and_then(tool_choice_to_anthropic);
    if req.parallel_tool_calls == Some(false) && req.tools.is_some() {
        tool_choice = Some(match tool_choice {
            Some(ToolChoice::Any { .. }) => ToolChoice::Any {
                disable_parallel_tool_use: true,
            },
            Some(ToolChoice::Tool { name, .. }) => ToolChoice::Tool {
                name,
                disable_parallel_tool_use: true,
            },
            Some(ToolChoice::None) => ToolChoice::None,
            _ => ToolChoice::Auto {
                disable_parallel_tool_use: true,
            },
        });
    }
    Ok(MessagesRequest {
        model: model.to_owned(),
        messages,
        max_tokens,
        thinking: thinking.clone(),
        output_config,
        system: (!system.is_empty()).then(|| System::Text(system.join("\n\n"))),
        temperature: req.temperature.filter(|_| thinking.is_none()),
        top_p: req.top_p.filter(|_| thinking.is_none()),
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
        tool_choice,
        metadata: req.user.clone().map(|u| Metadata { user_id: Some(u) }),
    })
}

fn user_blocks(content: Option<&Content>) -> Result<Vec<Block>, TranslateError> {
    Ok(match content {
        None => Vec::new(),
        Some(Content::Text(t)) => vec![Block::text(t.clone())],
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match p {
                Part::Text {
                    text,
                    cache_control,
                } => Ok(Block::Text {
                    text: text.clone(),
                    cache_control: cache_control.clone(),
                }),
                Part::ImageUrl { image_url } => Ok(Block::Image {
                    source: image_source(&image_url.url),
                }),
                Part::File { file } => match &file.file_data {
                    Some(data) => Ok(Block::Document {
                        source: image_source(data),
                        title: file.filename.clone(),
                    }),
                    None => Err(TranslateError::Unsupported(
                        "a file part given by `file_id` cannot be sent to an anthropic-kind provider (its files live at OpenAI); send `file_data` instead".into(),
                    )),
                },
            })
            .collect::<Result<_, _>>()?,
    })
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
        blocks.push(Block::text(text));
    }
    for call in m.tool_calls.iter().flatten() {
        let input = crate::tool_arguments(call)?;
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
            "auto" => Some(ToolChoice::Auto {
                disable_parallel_tool_use: false,
            }),
            "required" => Some(ToolChoice::Any {
                disable_parallel_tool_use: false,
            }),
            "none" => Some(ToolChoice::None),
            _ => None,
        },
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Tool {
                name: name.to_owned(),
                disable_parallel_tool_use: false,
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
    let mut thinking = String::new();
    let mut calls = Vec::new();
    for b in resp.content {
        match b {
            Block::Text { text: t, .. } => text.push_str(&t),
            Block::Thinking { thinking: t, .. } => thinking.push_str(&t),
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
                reasoning_content: (!thinking.is_empty()).then_some(thinking),
                tool_calls: (!calls.is_empty()).then_some(calls),
            },
            finish_reason: finish_reason(resp.stop_reason.as_deref()),
        }],
        usage: Some(resp.usage.to_openai()),
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
    cache_read: u64,
    cache_write: u64,
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
            // Unknown event types are allowed by the API's versioning policy, and so are new
            // block and delta types (citations, server tools): chat has no place for them.
            Err(_)
                if ev.name.is_some_and(|n| {
                    n.starts_with("content_block") || !KNOWN_EVENTS.contains(&n)
                }) =>
            {
                return Ok(false)
            }
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
                self.cache_read = message.usage.cache_read_input_tokens;
                self.cache_write = message.usage.cache_creation_input_tokens;
                out.push(Chunk::delta(
                    &self.id,
                    &self.model,
                    self.created,
                    Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        ..Delta::default()
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
                delta: BlockDelta::ThinkingDelta { thinking },
                ..
            } => {
                out.push(delta(Delta {
                    reasoning_content: Some(thinking),
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
                self.cache_read = self.cache_read.max(usage.cache_read_input_tokens);
                self.cache_write = self.cache_write.max(usage.cache_creation_input_tokens);
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
                    pylon_types::anthropic::Usage {
                        input_tokens: self.input_tokens,
                        output_tokens: self.output_tokens,
                        cache_read_input_tokens: self.cache_read,
                        cache_creation_input_tokens: self.cache_write,
                    }
                    .to_openai(),
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
