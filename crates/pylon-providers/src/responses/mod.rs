//! OpenAI's Responses API (`POST /v1/responses`) ↔ OpenAI chat, the gateway's canonical shape.
//!
//! OpenAI providers get Responses bodies as they came; every other provider gets the request as
//! chat (then translated once more to its own format), and its answer comes back as a Responses
//! object or the Responses API's typed event stream ([`StreamEncoder`]). What chat cannot carry
//! (built-in tools, item references) is refused with a 400 that names it, never dropped.

mod encode;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use pylon_types::openai::{
    ChatRequest, Content, FileRef, FunctionCall, FunctionDef, ImageUrl, Message, Part,
    StreamOptions, Tool, ToolCall, Usage,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

pub use encode::{response_from_chat, Meta, StreamEncoder};

use crate::TranslateError;

/// The fields of a Responses request the gateway reads before routing, borrowed from the body.
#[derive(Debug, Deserialize)]
pub struct Head<'a> {
    #[serde(borrow)]
    pub model: &'a RawValue,
    #[serde(default)]
    pub stream: Option<bool>,
    /// A stored response this one continues.
    #[serde(default, borrow)]
    pub previous_response_id: Option<Cow<'a, str>>,
    /// Whether the response is kept for `GET` and `previous_response_id` (default true).
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default, borrow)]
    pub user: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub safety_identifier: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
}

/// Reads the head of a Responses body; `input` must be a string or a list of items.
pub fn head(body: &[u8]) -> Result<Head<'_>, TranslateError> {
    let head: Head<'_> =
        serde_json::from_slice(body).map_err(TranslateError::json("Responses request"))?;
    match head.input.map(|i| i.get().trim_start().as_bytes().first()) {
        None | Some(Some(b'"' | b'[')) => Ok(head),
        _ => Err(TranslateError::Unsupported(
            "`input` must be a string or an array of input items".into(),
        )),
    }
}

/// The request's `input` as a list of items (a string is one user message).
pub fn input_items(req: &Value) -> Result<Vec<Value>, TranslateError> {
    match req.get("input") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![
            json!({"type": "message", "role": "user", "content": text}),
        ]),
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(_) => Err(TranslateError::Unsupported(
            "`input` must be a string or an array of input items".into(),
        )),
    }
}

/// The items a stored response leaves for the next turn: what it was given, then its output.
pub fn conversation(input: &[Value], response: &Value) -> Vec<Value> {
    let mut items = input.to_vec();
    if let Some(Value::Array(output)) = response.get("output") {
        items.extend(output.iter().cloned());
    }
    items
}

/// The request body with `input` replaced by `items` (the conversation so far, when it
/// continues a stored response Pylon holds) and `previous_response_id` removed.
pub fn with_input(req: &Value, items: Vec<Value>, model: &str) -> Value {
    let mut out = req.as_object().cloned().unwrap_or_default();
    out.remove("previous_response_id");
    out.insert("input".into(), Value::Array(items));
    out.insert("model".into(), Value::String(model.to_owned()));
    Value::Object(out)
}

/// A Responses request as chat: `instructions` and the items (already including any previous
/// response's conversation) become messages; function tools, tool choice, structured output,
/// reasoning effort and sampling map one to one.
pub fn to_chat(req: &Value, items: &[Value]) -> Result<ChatRequest, TranslateError> {
    let mut messages = Vec::new();
    if let Some(instructions) = req.get("instructions").and_then(Value::as_str) {
        messages.push(Message {
            role: "system".into(),
            content: Some(Content::Text(instructions.to_owned())),
            ..Message::default()
        });
    }
    for item in items {
        push_item(&mut messages, item)?;
    }
    if messages.iter().all(|m| m.role == "system") {
        return Err(TranslateError::Unsupported(
            "`input` must contain at least one message".into(),
        ));
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let reasoning_effort = req
        .pointer("/reasoning/effort")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(ChatRequest {
        model: req
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        messages,
        max_tokens: uint(req, "max_output_tokens")?,
        temperature: req.get("temperature").and_then(Value::as_f64),
        top_p: req.get("top_p").and_then(Value::as_f64),
        stream: stream.then_some(true),
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools: tools(req)?,
        tool_choice: tool_choice(req.get("tool_choice"))?,
        parallel_tool_calls: req.get("parallel_tool_calls").and_then(Value::as_bool),
        response_format: response_format(req.pointer("/text/format"))?,
        reasoning_effort,
        user: req
            .get("safety_identifier")
            .or_else(|| req.get("user"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..ChatRequest::default()
    })
}

fn uint(req: &Value, field: &str) -> Result<Option<u32>, TranslateError> {
    match req.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                TranslateError::Unsupported(format!("`{field}` must be a positive integer"))
            }),
    }
}

fn unsupported(what: String) -> TranslateError {
    TranslateError::Unsupported(format!(
        "{what} is served only by OpenAI providers (it has no chat equivalent); route this model to an openai-kind provider or leave it out"
    ))
}

fn push_item(messages: &mut Vec<Message>, item: &Value) -> Result<(), TranslateError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(if item.get("role").is_some() {
            "message"
        } else {
            ""
        });
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("developer" | "system") => "system",
                Some(r @ ("user" | "assistant")) => r,
                other => {
                    return Err(TranslateError::Unsupported(format!(
                        "message role `{}` must be one of user, assistant, system, developer",
                        other.unwrap_or("")
                    )))
                }
            };
            let content = content(item.get("content").unwrap_or(&Value::Null))?;
            messages.push(Message {
                role: role.into(),
                content: Some(content),
                ..Message::default()
            });
        }
        "function_call" => {
            let field = |f: &str| item.get(f).and_then(Value::as_str).unwrap_or_default();
            let call = ToolCall {
                id: field("call_id").to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: field("name").to_owned(),
                    arguments: field("arguments").to_owned(),
                },
            };
            // Consecutive calls (and the text just before them) are one assistant turn.
            match messages.last_mut() {
                Some(m) if m.role == "assistant" => {
                    m.tool_calls.get_or_insert_with(Vec::new).push(call);
                }
                _ => messages.push(Message {
                    role: "assistant".into(),
                    tool_calls: Some(vec![call]),
                    ..Message::default()
                }),
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(parts @ Value::Array(_)) => content(parts)?.text(),
                _ => String::new(),
            };
            messages.push(Message {
                role: "tool".into(),
                content: Some(Content::Text(output)),
                tool_call_id: item
                    .get("call_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                ..Message::default()
            });
        }
        // A model's reasoning is its own state: another provider cannot continue it.
        "reasoning" => {}
        "" => {
            return Err(TranslateError::Unsupported(
                "each input item needs a `type` (or a `role` for messages)".into(),
            ))
        }
        other => return Err(unsupported(format!("input item type `{other}`"))),
    }
    Ok(())
}

fn content(v: &Value) -> Result<Content, TranslateError> {
    let parts = match v {
        Value::String(s) => return Ok(Content::Text(s.clone())),
        Value::Array(parts) => parts,
        Value::Null => return Ok(Content::Text(String::new())),
        _ => {
            return Err(TranslateError::Unsupported(
                "message `content` must be a string or an array of parts".into(),
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let text = || p.get("text").and_then(Value::as_str).unwrap_or_default();
        match p.get("type").and_then(Value::as_str).unwrap_or_default() {
            "input_text" | "output_text" | "text" => out.push(Part::text(text())),
            "refusal" => out.push(Part::text(
                p.get("refusal").and_then(Value::as_str).unwrap_or_default(),
            )),
            "input_file" => out.push(Part::File {
                file: FileRef {
                    file_data: p
                        .get("file_data")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    file_id: p.get("file_id").and_then(Value::as_str).map(str::to_owned),
                    filename: p.get("filename").and_then(Value::as_str).map(str::to_owned),
                },
            }),
            "input_image" => match p.get("image_url").and_then(Value::as_str) {
                Some(url) => out.push(Part::ImageUrl {
                    image_url: ImageUrl {
                        url: url.to_owned(),
                    },
                }),
                None => return Err(unsupported("an `input_image` given by `file_id`".into())),
            },
            other => return Err(unsupported(format!("content part type `{other}`"))),
        }
    }
    Ok(Content::Parts(out))
}

fn tools(req: &Value) -> Result<Option<Vec<Tool>>, TranslateError> {
    let Some(list) = req.get("tools").and_then(Value::as_array) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(list.len());
    for t in list {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => out.push(Tool {
                kind: "function".into(),
                function: FunctionDef {
                    name: t
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    description: t
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    parameters: t.get("parameters").cloned(),
                },
            }),
            other => {
                return Err(unsupported(format!(
                    "tool type `{}`",
                    other.unwrap_or("(none)")
                )))
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

fn tool_choice(v: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(s @ Value::String(_)) => Ok(Some(s.clone())),
        Some(o) if o.get("type").and_then(Value::as_str) == Some("function") => Ok(Some(json!({
            "type": "function",
            "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)},
        }))),
        Some(o) => Err(unsupported(format!(
            "tool_choice type `{}`",
            o.get("type").and_then(Value::as_str).unwrap_or("(none)")
        ))),
    }
}

fn response_format(format: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    let Some(f) = format else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for field in ["name", "description", "schema", "strict"] {
                if let Some(v) = f.get(field) {
                    schema.insert(field.into(), v.clone());
                }
            }
            Ok(Some(
                json!({"type": "json_schema", "json_schema": Value::Object(schema)}),
            ))
        }
        Some(other) => Err(unsupported(format!("text.format type `{other}`"))),
    }
}

/// Usage in a Responses body or a `response.completed` event (`usage` at the top or under
/// `response`), as chat usage for billing.
pub fn usage_of(json: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Details {
        #[serde(default)]
        cached_tokens: u64,
    }
    #[derive(Deserialize)]
    struct RUsage {
        input_tokens: u64,
        output_tokens: u64,
        #[serde(default)]
        input_tokens_details: Option<Details>,
    }
    #[derive(Deserialize)]
    struct Holder {
        #[serde(default)]
        usage: Option<RUsage>,
        #[serde(default)]
        response: Option<Box<Holder>>,
    }
    let h: Holder = serde_json::from_slice(json).ok()?;
    let u = h.usage.or_else(|| h.response.and_then(|r| r.usage))?;
    let cached = u.input_tokens_details.map_or(0, |d| d.cached_tokens);
    Some(Usage::new(u.input_tokens, u.output_tokens).with_cache(cached, 0))
}
