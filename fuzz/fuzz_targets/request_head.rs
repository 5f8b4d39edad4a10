//! The head of a client's request body: model (and where it sits), stream flags, message
//! counts. Whatever the bytes, no panic; a model span always lies within the body and splicing
//! a new model there keeps the rest byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pylon_providers::openai;

fuzz_target!(|body: &[u8]| {
    if let Ok(head) = openai::chat_head(body) {
        assert!(head.model_span.end <= body.len());
        let spliced = openai::with_model(body, head.model_span.clone(), "m");
        assert_eq!(&spliced[..head.model_span.start], &body[..head.model_span.start]);
        assert!(spliced.ends_with(&body[head.model_span.end..]));
        // Asking for usage keeps a JSON object a JSON object, with the flag set.
        let parsed = serde_json::from_slice::<serde_json::Value>(body);
        if let (Ok(serde_json::Value::Object(_)), Some(with_usage)) =
            (parsed, openai::with_stream_usage(body))
        {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&with_usage) {
                assert_eq!(v["stream_options"]["include_usage"], true);
            }
        }
    }
    if let Ok(head) = openai::embeddings_head(body) {
        assert!(head.model_span.end <= body.len());
    }
    if let Ok((_, span)) = openai::model_field(body) {
        assert!(span.end <= body.len());
    }
    let _ = openai::usage_of(body);
    let _ = openai::is_usage_chunk(body);
});
