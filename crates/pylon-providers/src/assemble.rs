//! Streams ↔ whole responses, for the response cache: a stream's chunks assembled into the
//! response they add up to, and a response replayed as a well-formed stream.

use pylon_types::openai::{
    AssistantMessage, ChatResponse, Choice, Chunk, Delta, FunctionCall, ToolCall, ToolCallDelta,
    Usage,
};

/// Accumulates OpenAI chunks into the non-stream response they describe.
#[derive(Debug, Default)]
pub struct Assembler {
    id: String,
    model: String,
    created: u64,
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

impl Assembler {
    /// Adds one chunk.
    pub fn push(&mut self, c: &Chunk) {
        if self.id.is_empty() {
            self.id.clone_from(&c.id);
            self.model.clone_from(&c.model);
            self.created = c.created;
        }
        if c.usage.is_some() {
            self.usage = c.usage;
        }
        for cc in &c.choices {
            let i = cc.index as usize;
            while self.choices.len() <= i {
                self.choices.push(Choice {
                    index: self.choices.len() as u32,
                    message: AssistantMessage {
                        role: "assistant".into(),
                        ..AssistantMessage::default()
                    },
                    finish_reason: None,
                });
            }
            let choice = &mut self.choices[i];
            if let Some(text) = &cc.delta.content {
                choice
                    .message
                    .content
                    .get_or_insert_with(String::new)
                    .push_str(text);
            }
            if let Some(r) = &cc.delta.reasoning_content {
                choice
                    .message
                    .reasoning_content
                    .get_or_insert_with(String::new)
                    .push_str(r);
            }
            for t in cc.delta.tool_calls.iter().flatten() {
                merge_tool_call(choice.message.tool_calls.get_or_insert_with(Vec::new), t);
            }
            if cc.finish_reason.is_some() {
                choice.finish_reason.clone_from(&cc.finish_reason);
            }
        }
    }

    /// The whole response, if the stream said how it finished.
    pub fn finish(self) -> Option<ChatResponse> {
        let done =
            !self.choices.is_empty() && self.choices.iter().all(|c| c.finish_reason.is_some());
        done.then(|| ChatResponse {
            id: self.id,
            object: "chat.completion".into(),
            created: self.created,
            model: self.model,
            choices: self.choices,
            usage: self.usage,
        })
    }
}

fn merge_tool_call(calls: &mut Vec<ToolCall>, t: &ToolCallDelta) {
    let i = t.index as usize;
    while calls.len() <= i {
        calls.push(ToolCall {
            id: String::new(),
            kind: "function".into(),
            function: FunctionCall {
                name: String::new(),
                arguments: String::new(),
            },
        });
    }
    let call = &mut calls[i];
    if let Some(id) = &t.id {
        call.id.clone_from(id);
    }
    if let Some(name) = &t.function.name {
        call.function.name.push_str(name);
    }
    if let Some(args) = &t.function.arguments {
        call.function.arguments.push_str(args);
    }
}

/// A response as the chunks a stream of it would carry: role and content, tool calls, the
/// finish reason, and usage when asked for.
pub fn replay(r: &ChatResponse, include_usage: bool) -> Vec<Chunk> {
    let mut out = Vec::new();
    for c in &r.choices {
        let tool_calls = c.message.tool_calls.as_ref().map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(i, t)| ToolCallDelta {
                    index: i as u32,
                    id: Some(t.id.clone()),
                    kind: Some(t.kind.clone()),
                    function: pylon_types::openai::FunctionDelta {
                        name: Some(t.function.name.clone()),
                        arguments: Some(t.function.arguments.clone()),
                    },
                })
                .collect()
        });
        let mut content = Chunk::delta(
            &r.id,
            &r.model,
            r.created,
            Delta {
                role: Some("assistant".into()),
                content: c.message.content.clone(),
                reasoning_content: c.message.reasoning_content.clone(),
                tool_calls,
            },
            None,
        );
        content.choices[0].index = c.index;
        out.push(content);
        let mut end = Chunk::delta(
            &r.id,
            &r.model,
            r.created,
            Delta::default(),
            c.finish_reason.clone(),
        );
        end.choices[0].index = c.index;
        out.push(end);
    }
    if include_usage {
        if let Some(u) = r.usage {
            let mut last = Chunk::delta(&r.id, &r.model, r.created, Delta::default(), None);
            last.choices.clear();
            last.usage = Some(u);
            out.push(last);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_chunks_assemble_back_to_the_response() {
        let r = ChatResponse {
            id: "chatcmpl-1".into(),
            object: "chat.completion".into(),
            created: 7,
            model: "m".into(),
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: Some("hi there".into()),
                    reasoning_content: None,
                    tool_calls: Some(vec![ToolCall {
                        id: "call_1".into(),
                        kind: "function".into(),
                        function: FunctionCall {
                            name: "f".into(),
                            arguments: "{\"a\":1}".into(),
                        },
                    }]),
                },
                finish_reason: Some("tool_calls".into()),
            }],
            usage: Some(Usage::new(3, 4)),
        };
        let mut a = Assembler::default();
        for c in replay(&r, true) {
            a.push(&c);
        }
        let back = a.finish().expect("finished");
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&r).unwrap()
        );
    }

    #[test]
    fn an_unfinished_stream_assembles_to_nothing() {
        let mut a = Assembler::default();
        a.push(&Chunk::delta(
            "x",
            "m",
            0,
            Delta {
                content: Some("partial".into()),
                ..Delta::default()
            },
            None,
        ));
        assert!(a.finish().is_none());
    }
}
