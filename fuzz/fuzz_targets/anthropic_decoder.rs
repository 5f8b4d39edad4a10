//! Anthropic → OpenAI: a whole response and a stream of events, from any bytes. No panic;
//! errors are values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pylon_providers::{anthropic, sse};

fuzz_target!(|input: &[u8]| {
    if let Ok(resp) = serde_json::from_slice::<pylon_types::anthropic::MessagesResponse>(input) {
        let _ = anthropic::response_to_openai(resp);
    }
    let mut decoder = anthropic::StreamDecoder::default();
    let mut out = Vec::new();
    for raw in sse::events(input) {
        let ev = sse::parse(raw);
        match decoder.decode(&ev, &mut out) {
            Ok(true) | Err(_) => break,
            Ok(false) => {}
        }
    }
});
