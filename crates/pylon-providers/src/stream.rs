//! Stream codecs: provider events → OpenAI chunks ([`Decoder`]) → client events ([`Encoder`]).
//!
//! Used only when the client's dialect differs from the provider's; matching dialects are relayed
//! byte for byte.

use pylon_types::openai::Chunk;
use serde_json::Value;

use bytes::Bytes;

use crate::{anthropic, bedrock, gemini, responses, sse, TranslateError};

/// Splits a provider's body into whole events: SSE, or Bedrock's binary event stream (re-framed
/// as SSE so everything after it is the same).
#[derive(Debug)]
pub enum Framer {
    Sse(sse::Framer),
    EventStream(bedrock::EventStreamFramer),
}

impl Framer {
    /// Adds bytes; the whole events so far, if any.
    pub fn push(&mut self, data: Bytes) -> Result<Option<Bytes>, String> {
        match self {
            Framer::Sse(f) => f.push(data).map_err(|e| e.to_string()),
            Framer::EventStream(f) => f.push(data).map_err(|e| e.to_string()),
        }
    }
}

/// Decodes one provider's stream into OpenAI chunks.
#[derive(Debug)]
pub enum Decoder {
    OpenAi,
    Anthropic(anthropic::StreamDecoder),
    Gemini(gemini::StreamDecoder),
    Bedrock(bedrock::StreamDecoder),
}

impl Decoder {
    /// Decodes one event; `Ok(true)` when the provider said the stream is complete.
    pub fn decode(
        &mut self,
        ev: &sse::Event<'_>,
        out: &mut Vec<Chunk>,
    ) -> Result<bool, TranslateError> {
        match self {
            Decoder::OpenAi => {
                let data = ev.data.trim();
                if data == "[DONE]" {
                    return Ok(true);
                }
                if data.is_empty() {
                    return Ok(false);
                }
                let v: Value = serde_json::from_str(data)
                    .map_err(TranslateError::json("OpenAI stream chunk"))?;
                if let Some(err) = v.get("error") {
                    let msg = err
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error");
                    return Err(TranslateError::Upstream(msg.to_owned()));
                }
                out.push(
                    serde_json::from_value(v)
                        .map_err(TranslateError::json("OpenAI stream chunk"))?,
                );
                Ok(false)
            }
            Decoder::Anthropic(d) => d.decode(ev, out),
            Decoder::Gemini(d) => d.decode(ev, out),
            Decoder::Bedrock(d) => d.decode(ev, out),
        }
    }
}

/// Encodes OpenAI chunks in the client's dialect.
#[derive(Debug)]
pub enum Encoder {
    /// OpenAI SSE; the usage chunk is sent only if the client asked for it.
    OpenAi {
        include_usage: bool,
    },
    Anthropic(anthropic::StreamEncoder),
    /// The Responses API's typed events.
    Responses(Box<responses::StreamEncoder>),
}

impl Encoder {
    /// Encodes one chunk.
    pub fn encode(&mut self, chunk: &Chunk, out: &mut Vec<u8>) {
        match self {
            Encoder::OpenAi { include_usage } => {
                if chunk.usage.is_some() && !*include_usage {
                    if chunk.choices.is_empty() {
                        return;
                    }
                    let mut c = chunk.clone();
                    c.usage = None;
                    write_chunk(out, &c);
                } else {
                    write_chunk(out, chunk);
                }
            }
            Encoder::Anthropic(e) => e.encode(chunk, out),
            Encoder::Responses(e) => e.encode(chunk, out),
        }
    }

    /// Ends the stream (`[DONE]`, or Anthropic's closing events).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Encoder::OpenAi { .. } => out.extend_from_slice(b"data: [DONE]\n\n"),
            Encoder::Anthropic(e) => e.finish(out),
            Encoder::Responses(e) => e.finish(out),
        }
    }
}

fn write_chunk(out: &mut Vec<u8>, chunk: &Chunk) {
    if let Ok(data) = serde_json::to_string(chunk) {
        sse::write(out, None, &data);
    }
}
