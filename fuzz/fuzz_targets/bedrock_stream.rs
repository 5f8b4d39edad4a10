//! Bedrock → OpenAI: binary event-stream frames (any bytes, any split) through the framer and the
//! stream decoder, and a whole Converse answer. No panic, no unbounded buffer; errors are values.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pylon_providers::{bedrock, sse};

fuzz_target!(|input: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(input) {
        let _ = bedrock::response_to_openai(&v, "m");
    }
    let split = input.first().map_or(1, |b| usize::from(*b).max(1));
    let mut framer = bedrock::EventStreamFramer::default();
    let mut decoder = bedrock::StreamDecoder::new("m");
    let mut out = Vec::new();
    for piece in input.chunks(split) {
        match framer.push(Bytes::copy_from_slice(piece)) {
            Ok(Some(events)) => {
                for raw in sse::events(&events) {
                    if let Ok(true) | Err(_) = decoder.decode(&sse::parse(raw), &mut out) {
                        return;
                    }
                }
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
});
