//! The SSE framer under any bytes cut at any points: what it returns, joined, is a prefix of
//! the input ending at an event boundary; it never holds more than its limit; every event it
//! returns parses.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pylon_providers::sse;

const LIMIT: usize = 4096;

fuzz_target!(|input: &[u8]| {
    // The first byte chooses the piece size, the rest is the stream.
    let Some((&size, stream)) = input.split_first() else {
        return;
    };
    let piece = usize::from(size % 64) + 1;
    let mut framer = sse::Framer::with_limit(LIMIT);
    let mut out = Vec::new();
    let mut fed = 0;
    for chunk in stream.chunks(piece) {
        fed += chunk.len();
        match framer.push(Bytes::copy_from_slice(chunk)) {
            Ok(Some(events)) => {
                for raw in sse::events(&events) {
                    let _ = sse::parse(raw);
                }
                out.extend_from_slice(&events);
            }
            Ok(None) => {}
            // Past the limit the held bytes are let go; the stream is over for the relay.
            Err(_) => return,
        }
        assert!(framer.pending() <= LIMIT + piece);
        assert_eq!(out.len() + framer.pending(), fed);
    }
    assert_eq!(&stream[..out.len()], &out[..]);
});
