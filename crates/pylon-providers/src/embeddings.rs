//! OpenAI embeddings requests ↔ Gemini (`batchEmbedContents`) and Bedrock (Titan, Cohere
//! through `InvokeModel`); answers come back as OpenAI's `list` of `embedding`s with usage.

use serde_json::{json, Value};

use crate::TranslateError;

/// The inputs of an OpenAI embeddings request: one string or several (token arrays refused).
fn inputs(req: &Value) -> Result<Vec<String>, TranslateError> {
    let bad = || {
        TranslateError::Unsupported(
            "`input` must be a string or an array of strings for this provider (token arrays are OpenAI's alone)".into(),
        )
    };
    match req.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

fn dimensions(req: &Value) -> Option<u64> {
    req.get("dimensions").and_then(Value::as_u64)
}

/// The path and body of a Gemini `batchEmbedContents` call for `model`.
pub fn to_gemini(req: &Value, model: &str) -> Result<(String, Value), TranslateError> {
    let name = format!("models/{model}");
    let requests: Vec<Value> = inputs(req)?
        .into_iter()
        .map(|text| {
            let mut r = json!({"model": name, "content": {"parts": [{"text": text}]}});
            if let Some(d) = dimensions(req) {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    Ok((
        format!("/models/{}:batchEmbedContents", crate::path_segment(model)),
        json!({"requests": requests}),
    ))
}

/// The path and body of a Bedrock `InvokeModel` embedding call: Cohere models take a batch,
/// Titan one text per call.
pub fn to_bedrock(req: &Value, model: &str) -> Result<(String, Value), TranslateError> {
    let texts = inputs(req)?;
    let path = format!("/model/{}/invoke", crate::path_segment(model));
    if model.contains("cohere.embed") {
        let mut body = json!({"texts": texts, "input_type": "search_document"});
        // Cohere Embed v4's name for it; v3 models refuse it in their own words.
        if let Some(d) = dimensions(req) {
            body["output_dimension"] = json!(d);
        }
        return Ok((path, body));
    }
    let [text] = texts.as_slice() else {
        return Err(TranslateError::Unsupported(format!(
            "Titan embedding models take one input per request; `{model}` was sent {}",
            texts.len()
        )));
    };
    let mut body = json!({"inputText": text});
    if let Some(d) = dimensions(req) {
        body["dimensions"] = json!(d);
    }
    Ok((path, body))
}

/// Input tokens when the provider does not say: a quarter of the characters.
fn estimate(req: &Value) -> u64 {
    inputs(req)
        .map(|t| t.iter().map(|s| (s.len() as u64).div_ceil(4)).sum())
        .unwrap_or(0)
}

fn list(vectors: Vec<Value>, model: &str, tokens: u64) -> Value {
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

/// A Gemini `batchEmbedContents` answer as OpenAI's (Gemini reports no usage: estimated).
pub fn from_gemini(resp: &Value, req: &Value, model: &str) -> Result<Value, TranslateError> {
    let vectors = resp
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::Upstream("Gemini answered without `embeddings`".into()))?
        .iter()
        .map(|e| e.get("values").cloned().unwrap_or_default())
        .collect();
    Ok(list(vectors, model, estimate(req)))
}

/// A Bedrock embedding answer (Titan `embedding`, Cohere `embeddings`) as OpenAI's.
pub fn from_bedrock(resp: &Value, req: &Value, model: &str) -> Result<Value, TranslateError> {
    let vectors = match (resp.get("embedding"), resp.get("embeddings")) {
        (Some(one), _) => vec![one.clone()],
        (None, Some(Value::Array(many))) => many.clone(),
        _ => {
            return Err(TranslateError::Upstream(
                "Bedrock answered without an embedding".into(),
            ))
        }
    };
    let tokens = resp
        .get("inputTextTokenCount")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| estimate(req));
    Ok(list(vectors, model, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_round_trip_through_gemini_and_bedrock() {
        let req = json!({"model": "e", "input": ["a b", "c"], "dimensions": 8});
        let (path, body) = to_gemini(&req, "text-embedding-004").unwrap();
        assert_eq!(path, "/models/text-embedding-004:batchEmbedContents");
        assert_eq!(body["requests"][1]["content"]["parts"][0]["text"], "c");
        assert_eq!(body["requests"][0]["outputDimensionality"], 8);
        let out = from_gemini(
            &json!({"embeddings": [{"values": [0.1]}, {"values": [0.2]}]}),
            &req,
            "e",
        )
        .unwrap();
        assert_eq!(out["data"][1]["embedding"], json!([0.2]));
        assert_eq!(out["usage"]["prompt_tokens"], 2);

        assert!(
            to_bedrock(&req, "amazon.titan-embed-text-v2:0").is_err(),
            "one input per Titan call"
        );
        let (path, body) = to_bedrock(&req, "cohere.embed-english-v3").unwrap();
        assert_eq!(path, "/model/cohere.embed-english-v3/invoke");
        assert_eq!(body["texts"], json!(["a b", "c"]));
        let one = json!({"model": "e", "input": "a b"});
        let (_, body) = to_bedrock(&one, "amazon.titan-embed-text-v2:0").unwrap();
        assert_eq!(body, json!({"inputText": "a b"}));
        let out = from_bedrock(
            &json!({"embedding": [0.5], "inputTextTokenCount": 3}),
            &one,
            "e",
        )
        .unwrap();
        assert_eq!(
            (
                out["data"][0]["embedding"].clone(),
                out["usage"]["total_tokens"].clone()
            ),
            (json!([0.5]), json!(3))
        );
        assert!(
            to_gemini(&json!({"input": [[1, 2]]}), "m").is_err(),
            "token arrays are refused"
        );
    }
}
