//! What the mock answers, independent of wire format: deterministic text or one tool call.

use serde_json::Value;

use super::Behaviour;

/// The mock's reply to one request.
#[derive(Debug)]
pub(crate) struct Script {
    pub model: String,
    /// Text pieces, one per stream chunk (words with their trailing space).
    pub pieces: Vec<String>,
    /// A tool call (name, JSON arguments) instead of text, when tools were offered.
    pub tool: Option<(String, String)>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Script {
    /// Builds the reply from the last user text, whether tools were offered, and the input size.
    pub fn new(
        model: &str,
        last_user: &str,
        tool: Option<String>,
        input_chars: usize,
        b: &Behaviour,
    ) -> Self {
        let text = match &b.reply {
            Some(r) => r.repeat(b.repeat.max(1)),
            None => format!("Hello from {model}! You said: {last_user}").repeat(b.repeat.max(1)),
        };
        let pieces: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let tool = tool.map(|name| {
            let args = serde_json::json!({ "input": last_user }).to_string();
            (name, args)
        });
        let output_tokens = match &tool {
            Some((_, args)) => (args.len() as u64).div_ceil(4),
            None => pieces.len() as u64,
        };
        Script {
            model: model.to_owned(),
            pieces,
            tool,
            input_tokens: (input_chars as u64).div_ceil(4).max(1),
            output_tokens,
        }
    }

    /// The whole reply text.
    pub fn text(&self) -> String {
        self.pieces.concat()
    }
}

/// Text of a JSON content value: a string, or the `text` fields of an array of parts.
pub(crate) fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A deterministic unit vector for an embedding input: hashed bag of words, so texts sharing
/// most words are similar (cosine) and unrelated ones are not — enough to test semantic caching.
pub(crate) fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let fnv = |bytes: &[u8]| {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut v = vec![0f32; dims];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let h = fnv(word.to_lowercase().as_bytes());
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % dims as u64) as usize] += sign;
    }
    if v.iter().all(|x| *x == 0.0) {
        v[(fnv(text.as_bytes()) % dims as u64) as usize] = 1.0;
    }
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}
