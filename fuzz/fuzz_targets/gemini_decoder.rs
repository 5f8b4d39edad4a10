//! Gemini → OpenAI: a whole response and a stream of events, from any bytes. No panic;
//! errors are values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pylon_providers::{gemini, sse};

fuzz_target!(|input: &[u8]| {
    if let Ok(resp) = serde_json::from_slice::<gemini::GenerateResponse>(input) {
        let _ = gemini::response_to_openai(resp, "m");
    }
    let mut decoder = gemini::StreamDecoder::new("m");
    let mut out = Vec::new();
    for raw in sse::events(input) {
        let ev = sse::parse(raw);
        match decoder.decode(&ev, &mut out) {
            Ok(true) | Err(_) => break,
            Ok(false) => {}
        }
    }
});
