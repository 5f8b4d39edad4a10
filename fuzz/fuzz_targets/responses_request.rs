//! Responses API requests from any bytes: the head the gateway reads, the items, and the
//! translation to chat (and on to Anthropic and Gemini). No panic; bad input is an error value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pylon_providers::{anthropic, gemini, responses, Options};

fuzz_target!(|input: &[u8]| {
    let _ = responses::head(input);
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(input) else {
        return;
    };
    let Ok(items) = responses::input_items(&req) else {
        return;
    };
    if let Ok(chat) = responses::to_chat(&req, &items) {
        let _ = anthropic::to_messages(&chat, "claude-x", Options::default());
        let _ = gemini::to_generate(&chat, Options::default());
    }
});
