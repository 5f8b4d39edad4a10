//! An OpenAI chat request as a `generateContent` request.

use pylon_types::openai::{ChatRequest, Content, Part as OPart, Stop};
use serde_json::{json, Value};

use super::{
    signature_of, Blob, FileData, GContent, GFunctionCall, GFunctionResponse, GPart, GTool,
    GenerateRequest, GenerationConfig,
};
use crate::{Options, TranslateError};

/// Translates an OpenAI chat request into a `generateContent` request.
pub fn to_generate(req: &ChatRequest, opts: Options) -> Result<GenerateRequest, TranslateError> {
    const WHO: &str = "gemini-kind";
    if req.n.is_some_and(|n| n > 1) && req.is_stream() {
        opts.unsupported("n (with stream)", WHO)?;
    }
    if req.logprobs == Some(true) || req.top_logprobs.is_some() {
        opts.unsupported("logprobs", WHO)?;
    }
    if req.parallel_tool_calls == Some(false) && req.tools.is_some() {
        opts.unsupported("parallel_tool_calls: false", WHO)?;
    }
    let mut system = Vec::new();
    let mut contents: Vec<GContent> = Vec::new();
    for m in &req.messages {
        let (role, parts) = match m.role.as_str() {
            "system" | "developer" => {
                system.push(GPart {
                    text: Some(m.content.as_ref().map(Content::text).unwrap_or_default()),
                    ..GPart::default()
                });
                continue;
            }
            "user" => ("user", user_parts(m.content.as_ref())?),
            "assistant" => {
                let mut parts = Vec::new();
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                if !text.is_empty() {
                    parts.push(GPart {
                        text: Some(text),
                        ..GPart::default()
                    });
                }
                for call in m.tool_calls.iter().flatten() {
                    let args = serde_json::from_str(&call.function.arguments)
                        .unwrap_or_else(|_| json!({}));
                    parts.push(GPart {
                        function_call: Some(GFunctionCall {
                            name: call.function.name.clone(),
                            args,
                        }),
                        thought_signature: signature_of(&call.id).map(str::to_owned),
                        ..GPart::default()
                    });
                }
                ("model", parts)
            }
            "tool" | "function" => {
                let name = tool_name(req, m.tool_call_id.as_deref()).or(m.name.clone()).ok_or_else(|| {
                    TranslateError::Unsupported(
                        "a tool message must answer a tool call of an earlier assistant message".into(),
                    )
                })?;
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({ "result": text }),
                };
                (
                    "user",
                    vec![GPart {
                        function_response: Some(GFunctionResponse { name, response }),
                        ..GPart::default()
                    }],
                )
            }
            other => {
                return Err(TranslateError::Unsupported(format!(
                    "unknown role `{other}`"
                )))
            }
        };
        match contents.last_mut() {
            Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
            _ => contents.push(GContent {
                role: Some(role.to_owned()),
                parts,
            }),
        }
    }
    let (response_mime_type, response_json_schema) = match &req.response_format {
        Some(f) if f["type"] == "json_schema" => (
            Some("application/json".to_owned()),
            Some(f["json_schema"]["schema"].clone()),
        ),
        Some(f) if f["type"] == "json_object" => (Some("application/json".to_owned()), None),
        _ => (None, None),
    };
    let config = GenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_output_tokens().or(opts.max_output_tokens),
        stop_sequences: req.stop.clone().map(Stop::into_vec),
        seed: req.seed,
        candidate_count: req.n.filter(|n| *n > 1),
        response_mime_type,
        response_json_schema,
        thinking_config: req
            .reasoning_effort
            .as_deref()
            .and_then(crate::thinking_budget)
            .map(|budget| json!({"thinkingBudget": budget, "includeThoughts": true})),
    };
    Ok(GenerateRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(GContent {
            role: None,
            parts: system,
        }),
        generation_config: Some(config),
        tools: req.tools.as_ref().map(|tools| {
            vec![GTool {
                function_declarations: tools
                    .iter()
                    .map(|t| {
                        let mut decl = json!({ "name": t.function.name });
                        if let Some(d) = &t.function.description {
                            decl["description"] = json!(d);
                        }
                        if let Some(p) = &t.function.parameters {
                            decl["parameters"] = p.clone();
                        }
                        decl
                    })
                    .collect(),
            }]
        }),
        tool_config: req.tool_choice.as_ref().and_then(|c| match c {
            Value::String(s) if s == "required" => {
                Some(json!({"functionCallingConfig": {"mode": "ANY"}}))
            }
            Value::String(s) if s == "none" => {
                Some(json!({"functionCallingConfig": {"mode": "NONE"}}))
            }
            Value::Object(o) => o.get("function").and_then(|f| f.get("name")).map(
                |n| json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [n]}}),
            ),
            _ => None,
        }),
    })
}

fn user_parts(content: Option<&Content>) -> Result<Vec<GPart>, TranslateError> {
    Ok(match content {
        None => Vec::new(),
        Some(Content::Text(t)) => vec![GPart {
            text: Some(t.clone()),
            ..GPart::default()
        }],
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match p {
                // A cache breakpoint is a hint; Gemini caches implicitly.
                OPart::Text { text, .. } => Ok(GPart {
                    text: Some(text.clone()),
                    ..GPart::default()
                }),
                OPart::ImageUrl { image_url } => Ok(media_part(&image_url.url)),
                OPart::File { file } => match &file.file_data {
                    Some(data) => Ok(media_part(data)),
                    None => Err(TranslateError::Unsupported(
                        "a file part given by `file_id` cannot be sent to a gemini-kind provider (its files live at OpenAI); send `file_data` instead".into(),
                    )),
                },
            })
            .collect::<Result<_, _>>()?,
    })
}

/// An image or file: inline bytes for a `data:` URL, else a file by URI.
fn media_part(url: &str) -> GPart {
    match url.strip_prefix("data:").and_then(|r| r.split_once(',')) {
        Some((meta, data)) => GPart {
            inline_data: Some(Blob {
                mime_type: meta.trim_end_matches(";base64").to_owned(),
                data: data.to_owned(),
            }),
            ..GPart::default()
        },
        None => GPart {
            file_data: Some(FileData {
                mime_type: None,
                file_uri: url.to_owned(),
            }),
            ..GPart::default()
        },
    }
}

/// The function name of the tool call a tool message answers.
fn tool_name(req: &ChatRequest, call_id: Option<&str>) -> Option<String> {
    let id = call_id?;
    // The latest call of that id: the one a tool message right after it answers.
    req.messages
        .iter()
        .rev()
        .flat_map(|m| m.tool_calls.iter().flatten())
        .find(|c| c.id == id)
        .map(|c| c.function.name.clone())
}
