//! Chat answers as Responses objects, and chat chunks as the Responses API's typed events.

use pylon_types::openai::{ChatResponse, Chunk, Usage};
use serde_json::{json, Map, Value};

use crate::sse;

/// Who the response is and what it was asked, echoed in the response object as OpenAI does.
#[derive(Debug, Clone)]
pub struct Meta {
    /// `resp_…`; item ids are derived from it.
    pub id: String,
    pub created_at: u64,
    /// The Responses request (its echo fields: instructions, tools, sampling, metadata…).
    pub request: Value,
}

impl Meta {
    fn message_id(&self) -> String {
        format!("msg_{}", self.suffix())
    }

    fn call_id(&self, n: usize) -> String {
        format!("fc_{}_{n}", self.suffix())
    }

    fn suffix(&self) -> &str {
        self.id.strip_prefix("resp_").unwrap_or(&self.id)
    }

    /// The response object with `status` and `output` (and usage, when known).
    fn object(&self, model: &str, status: &str, output: Vec<Value>, usage: Option<Usage>) -> Value {
        let req = &self.request;
        let echo = |field: &str, default: Value| req.get(field).cloned().unwrap_or(default);
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("object".into(), json!("response"));
        o.insert("created_at".into(), json!(self.created_at));
        o.insert("status".into(), json!(status));
        o.insert("error".into(), Value::Null);
        o.insert("incomplete_details".into(), Value::Null);
        o.insert("instructions".into(), echo("instructions", Value::Null));
        o.insert(
            "max_output_tokens".into(),
            echo("max_output_tokens", Value::Null),
        );
        o.insert("model".into(), json!(model));
        o.insert("output".into(), Value::Array(output));
        o.insert(
            "parallel_tool_calls".into(),
            echo("parallel_tool_calls", json!(true)),
        );
        o.insert(
            "previous_response_id".into(),
            echo("previous_response_id", Value::Null),
        );
        o.insert(
            "reasoning".into(),
            echo("reasoning", json!({"effort": null, "summary": null})),
        );
        o.insert("store".into(), echo("store", json!(true)));
        o.insert("temperature".into(), echo("temperature", json!(1.0)));
        o.insert(
            "text".into(),
            echo("text", json!({"format": {"type": "text"}})),
        );
        o.insert("tool_choice".into(), echo("tool_choice", json!("auto")));
        o.insert("tools".into(), echo("tools", json!([])));
        o.insert("top_p".into(), echo("top_p", json!(1.0)));
        o.insert("truncation".into(), echo("truncation", json!("disabled")));
        o.insert("usage".into(), usage.map_or(Value::Null, usage_json));
        o.insert("user".into(), echo("user", Value::Null));
        o.insert("metadata".into(), echo("metadata", json!({})));
        Value::Object(o)
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// `completed`, or `incomplete` with its reason when the answer was cut short.
fn status_of(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": [output_text(text)],
    })
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status,
    })
}

/// A non-stream chat answer as a Responses object (its first choice).
pub fn response_from_chat(chat: &ChatResponse, meta: &Meta) -> Value {
    let mut output = Vec::new();
    let choice = chat.choices.first();
    if let Some(text) = choice
        .and_then(|c| c.message.content.as_deref())
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(&meta.message_id(), text, "completed"));
    }
    for (n, call) in choice
        .and_then(|c| c.message.tool_calls.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        output.push(call_item(
            &meta.call_id(n),
            &call.id,
            &call.function.name,
            &call.function.arguments,
            "completed",
        ));
    }
    let (status, incomplete) = status_of(choice.and_then(|c| c.finish_reason.as_deref()));
    let mut o = meta.object(&chat.model, status, output, chat.usage);
    o["incomplete_details"] = incomplete;
    o
}

/// The item being streamed.
#[derive(Debug)]
enum Open {
    Text { index: usize, text: String },
    Call { index: usize, tool: u32 },
}

/// Turns chat chunks into the Responses event sequence: `response.created`,
/// `response.in_progress`, per item `output_item.added` … deltas … `output_item.done`, and
/// `response.completed` (or `response.incomplete`) carrying the whole response.
#[derive(Debug)]
pub struct StreamEncoder {
    meta: Meta,
    model: String,
    seq: u64,
    started: bool,
    open: Option<Open>,
    /// Output items closed so far, in order.
    output: Vec<Value>,
    /// Function calls by chat tool index: (item id, call id, name, arguments).
    calls: Vec<(u32, String, String, String, String)>,
    finish: Option<String>,
    usage: Option<Usage>,
    done: Option<Value>,
}

impl StreamEncoder {
    /// An encoder for the response `meta` describes.
    pub fn new(meta: Meta) -> Self {
        StreamEncoder {
            meta,
            model: String::new(),
            seq: 0,
            started: false,
            open: None,
            output: Vec::new(),
            calls: Vec::new(),
            finish: None,
            usage: None,
            done: None,
        }
    }

    /// The whole response once the stream finished (for the response store).
    pub fn response(&self) -> Option<&Value> {
        self.done.as_ref()
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut body: Value) {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.seq);
        self.seq += 1;
        sse::write(out, Some(kind), &body.to_string());
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self
            .meta
            .object(&self.model, "in_progress", Vec::new(), None);
        self.emit(out, "response.created", json!({"response": r}));
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    /// Encodes one chunk as zero or more events.
    pub fn encode(&mut self, chunk: &Chunk, out: &mut Vec<u8>) {
        if self.model.is_empty() {
            self.model.clone_from(&chunk.model);
        }
        self.start(out);
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.text_delta(text, out);
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                let same = matches!(self.open, Some(Open::Call { tool, .. }) if tool == call.index);
                if !same {
                    self.close(out);
                    let n = self.calls.len();
                    let item_id = self.meta.call_id(n);
                    let call_id = call.id.clone().unwrap_or_else(|| format!("call_{n}"));
                    let name = call.function.name.clone().unwrap_or_default();
                    let index = self.output.len();
                    let item = call_item(&item_id, &call_id, &name, "", "in_progress");
                    self.calls
                        .push((call.index, item_id, call_id, name, String::new()));
                    self.open = Some(Open::Call {
                        index,
                        tool: call.index,
                    });
                    self.emit(
                        out,
                        "response.output_item.added",
                        json!({"output_index": index, "item": item}),
                    );
                }
                if let Some(args) = call.function.arguments.as_deref().filter(|a| !a.is_empty()) {
                    let Some(Open::Call { index, .. }) = self.open else {
                        continue;
                    };
                    let Some(c) = self.calls.last_mut() else {
                        continue;
                    };
                    c.4.push_str(args);
                    let item_id = c.1.clone();
                    self.emit(
                        out,
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": args}),
                    );
                }
            }
            if let Some(f) = &choice.finish_reason {
                self.finish = Some(f.clone());
            }
        }
    }

    fn text_delta(&mut self, text: &str, out: &mut Vec<u8>) {
        if !matches!(self.open, Some(Open::Text { .. })) {
            self.close(out);
            let index = self.output.len();
            let id = self.meta.message_id();
            self.open = Some(Open::Text {
                index,
                text: String::new(),
            });
            let item = json!({"type": "message", "id": id, "status": "in_progress",
                "role": "assistant", "content": []});
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": output_text("")}),
            );
        }
        let id = self.meta.message_id();
        if let Some(Open::Text { index, text: all }) = &mut self.open {
            all.push_str(text);
            let index = *index;
            self.emit(
                out,
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                    "delta": text, "logprobs": []}),
            );
        }
    }

    /// Closes the item being streamed with its `done` events.
    fn close(&mut self, out: &mut Vec<u8>) {
        match self.open.take() {
            None => {}
            Some(Open::Text { index, text }) => {
                let id = self.meta.message_id();
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                        "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                        "part": output_text(&text)}),
                );
                let item = message_item(&id, &text, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
            Some(Open::Call { index, .. }) => {
                let Some((_, item_id, call_id, name, args)) = self.calls.last().cloned() else {
                    return;
                };
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": index, "name": name,
                        "arguments": args}),
                );
                let item = call_item(&item_id, &call_id, &name, &args, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
        }
    }

    /// Ends the stream: the open item's `done` events, then `response.completed` (or
    /// `response.incomplete`) with the whole response and its usage.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done.is_some() {
            return;
        }
        self.start(out);
        self.close(out);
        let (status, incomplete) = status_of(self.finish.as_deref());
        let mut r = self
            .meta
            .object(&self.model, status, self.output.clone(), self.usage);
        r["incomplete_details"] = incomplete;
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, json!({"response": r}));
        self.done = Some(r);
    }
}
