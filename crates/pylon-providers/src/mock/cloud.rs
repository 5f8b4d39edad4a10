//! The mock's Azure OpenAI and AWS Bedrock faces, checking the wire as those services do:
//! Azure's deployment paths, `api-version` and `api-key`/Entra auth, its content-filter
//! errors; Bedrock's SigV4 signature (recomputed with a known key) and event-stream frames.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::handlers::{self, admit, json_after, sse_response, Wire};
use super::script::{embedding, Script};
use super::Mock;
use crate::bedrock::{self, AwsCredentials};

/// The access key the mock accepts from Bedrock clients.
pub const AWS_ACCESS_KEY_ID: &str = "AKIDPYLONMOCK";
/// Its secret: the mock recomputes each request's signature with it.
pub const AWS_SECRET_ACCESS_KEY: &str = "pylon-mock-secret";
/// The region the mock's Bedrock is in.
pub const AWS_REGION: &str = "us-east-1";
/// A user message containing this is refused by the mock's Azure content filter.
pub const FILTERED: &str = "azure-content-filter";

/// Azure's and Bedrock's routes.
pub(super) fn routes() -> Router<Arc<Mock>> {
    Router::new()
        .route(
            "/openai/deployments/{deployment}/{*op}",
            post(azure_deployment),
        )
        .route("/openai/v1/{*op}", post(azure_v1))
        .route("/openai/responses", post(azure_responses))
        .route("/model/{model}/{op}", post(bedrock_model))
        .route("/sts/", post(sts))
}

/// STS `AssumeRoleWithWebIdentity`: a non-empty token and a role get the mock's Bedrock key.
async fn sts(body: Bytes) -> Response {
    let form = String::from_utf8_lossy(&body);
    let field = |name: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .filter(|v| !v.is_empty())
    };
    if field("Action") != Some("AssumeRoleWithWebIdentity")
        || field("RoleArn").is_none()
        || field("WebIdentityToken").is_none()
    {
        let xml = "<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>missing token or role</Message></Error></ErrorResponse>";
        return (StatusCode::BAD_REQUEST, xml).into_response();
    }
    let xml = format!(
        "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
         <AccessKeyId>{AWS_ACCESS_KEY_ID}</AccessKeyId><SecretAccessKey>{AWS_SECRET_ACCESS_KEY}</SecretAccessKey>\
         <SessionToken>mock-session</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>\
         </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
    );
    ([("content-type", "text/xml")], xml).into_response()
}

fn azure_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The checks every Azure request passes: an `api-version` (except on `/openai/v1/`), and an
/// `api-key` or Entra bearer token; a filtered prompt gets Azure's content-filter error.
fn azure_checks(
    headers: &HeaderMap,
    query: Option<&str>,
    versioned: bool,
    body: &[u8],
) -> Option<Response> {
    if versioned && !query.is_some_and(|q| q.contains("api-version=")) {
        return Some(azure_error(
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found",
        ));
    }
    let key = headers.contains_key("api-key");
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    if !key && !bearer {
        return Some(azure_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint.",
        ));
    }
    if memchr::memmem::find(body, FILTERED.as_bytes()).is_some() {
        let body = json!({"error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": null, "param": "prompt", "code": "content_filter", "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {"hate": {"filtered": true, "severity": "high"}}}
        }});
        return Some((StatusCode::BAD_REQUEST, Json(body)).into_response());
    }
    None
}

async fn openai_op(m: Arc<Mock>, op: &str, headers: HeaderMap, body: Bytes) -> Response {
    let m = State(m);
    match op {
        "chat/completions" => handlers::openai_chat(m, headers, body).await,
        "embeddings" => handlers::openai_embeddings(m, headers, body).await,
        "completions" => handlers::openai_completions(m, headers, body).await,
        "responses" => handlers::openai_responses(m, headers, body).await,
        _ => azure_error(StatusCode::NOT_FOUND, "404", "Resource not found"),
    }
}

/// `/openai/deployments/{deployment}/…?api-version=`: the deployment is the model.
async fn azure_deployment(
    State(m): State<Arc<Mock>>,
    Path((deployment, op)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = azure_checks(&headers, query.as_deref(), true, &body) {
        return r;
    }
    let Ok(mut req) = serde_json::from_slice::<Value>(&body) else {
        return handlers::bad_request("malformed JSON");
    };
    req["model"] = json!(deployment);
    openai_op(m, &op, headers, Bytes::from(req.to_string())).await
}

/// `/openai/v1/…`: the version-less API; the body's model names the deployment.
async fn azure_v1(
    State(m): State<Arc<Mock>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = azure_checks(&headers, None, false, &body) {
        return r;
    }
    openai_op(m, &op, headers, body).await
}

/// `/openai/responses?api-version=`.
async fn azure_responses(
    State(m): State<Arc<Mock>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = azure_checks(&headers, query.as_deref(), true, &body) {
        return r;
    }
    openai_op(m, "responses", headers, body).await
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut r = (status, Json(json!({"message": message}))).into_response();
    if let Ok(v) = HeaderValue::from_str(kind) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

/// Recomputes the request's SigV4 signature with the mock's key: the same `authorization`, or
/// why not.
fn verify_sigv4(
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let auth = get("authorization").ok_or("no authorization header")?;
    let signed = auth
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .ok_or("no SignedHeaders")?;
    if !auth.contains(&format!("Credential={AWS_ACCESS_KEY_ID}/")) {
        return Err("unknown access key".into());
    }
    let date = get("x-amz-date").ok_or("no x-amz-date")?;
    // 20261206T183000Z → 2026-12-06T18:30:00Z
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        date.get(0..4).unwrap_or(""),
        date.get(4..6).unwrap_or(""),
        date.get(6..8).unwrap_or(""),
        date.get(9..11).unwrap_or(""),
        date.get(11..13).unwrap_or(""),
        date.get(13..15).unwrap_or("")
    );
    let time: SystemTime = humantime::parse_rfc3339(&rfc).map_err(|e| e.to_string())?;
    // What the signer adds itself is left out; the rest of the signed headers go back in.
    const ADDED: [&str; 5] = [
        "host",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
        "authorization",
    ];
    let pairs: Vec<(&str, &str)> = signed
        .split(';')
        .filter(|h| !ADDED.contains(h))
        .filter_map(|h| Some((h, get(h)?)))
        .collect();
    let host = get("host").ok_or("no host")?;
    let url = match query {
        Some(q) => format!("http://{host}{path}?{q}"),
        None => format!("http://{host}{path}"),
    };
    let creds = AwsCredentials {
        access_key_id: AWS_ACCESS_KEY_ID.into(),
        secret_access_key: AWS_SECRET_ACCESS_KEY.into(),
        session_token: get("x-amz-security-token").map(str::to_owned),
    };
    let expected = bedrock::sign("POST", &url, &pairs, body, &creds, AWS_REGION, time)?;
    let want = expected
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str());
    if want == Some(auth) {
        Ok(())
    } else {
        Err("the request signature does not match".into())
    }
}

/// `InvokeModel` of an embedding model: Titan (`inputText`) or Cohere (`texts`).
async fn bedrock_embed(m: &Mock, b: &super::Behaviour, req: &Value) -> Response {
    let dims = req["dimensions"]
        .as_u64()
        .or(req["output_dimension"].as_u64())
        .unwrap_or(64)
        .clamp(1, 4096) as usize;
    if let Some(text) = req["inputText"].as_str() {
        let body = json!({"embedding": embedding(text, dims),
            "inputTextTokenCount": (text.len() as u64).div_ceil(4)});
        return json_after(m, b, body).await;
    }
    let Some(texts) = req["texts"].as_array() else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "inputText or texts is required",
        );
    };
    let vectors: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| embedding(t.as_str().unwrap_or_default(), dims))
        .collect();
    json_after(
        m,
        b,
        json!({"embeddings": vectors, "response_type": "embeddings_floats"}),
    )
    .await
}

/// `POST /model/{id}/converse` and `/converse-stream`.
async fn bedrock_model(
    State(m): State<Arc<Mock>>,
    Path((model, op)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/model/{}/{op}", crate::path_segment(&model));
    if let Err(e) = verify_sigv4(&path, query.as_deref(), &headers, &body) {
        return aws_error(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            &format!("The request signature we calculated does not match the signature you provided: {e}"),
        );
    }
    let b = match admit(&m, Wire::OpenAi, &path, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "malformed JSON",
        );
    };
    if op == "invoke" {
        return bedrock_embed(&m, &b, &req).await;
    }
    let Some(messages) = req["messages"].as_array() else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "messages is required",
        );
    };
    let text = |m: &Value| -> String {
        m["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["text"].as_str())
            .collect()
    };
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user" && !text(m).is_empty())
        .map(text)
        .unwrap_or_default();
    let answered_tool = messages.last().is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b.get("toolResult").is_some()))
    });
    let tool = req
        .pointer("/toolConfig/tools/0/toolSpec/name")
        .and_then(Value::as_str)
        .filter(|_| !answered_tool)
        .map(str::to_owned);
    let chars = messages.iter().map(|m| text(m).len()).sum();
    let s = Script::new(&model, &last_user, tool, chars, &b);
    let usage = json!({"inputTokens": s.input_tokens, "outputTokens": s.output_tokens,
        "totalTokens": s.input_tokens + s.output_tokens});
    if op == "converse" {
        let (content, stop) = match &s.tool {
            Some((name, args)) => (
                json!([{"toolUse": {"toolUseId": "tooluse_0", "name": name,
                    "input": serde_json::from_str::<Value>(args).unwrap_or_default()}}]),
                "tool_use",
            ),
            None => (json!([{"text": s.text()}]), "end_turn"),
        };
        let body = json!({"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 1}});
        return json_after(&m, &b, body).await;
    }
    if op != "converse-stream" {
        return aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "unknown operation",
        );
    }
    let mut frames = vec![bedrock::event_frame(
        "messageStart",
        &json!({"role": "assistant"}),
    )];
    let stop = match &s.tool {
        Some((name, args)) => {
            frames.push(bedrock::event_frame(
                "contentBlockStart",
                &json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_0", "name": name}}}),
            ));
            for piece in args.as_bytes().chunks(8) {
                frames.push(bedrock::event_frame(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": String::from_utf8_lossy(piece)}}}),
                ));
            }
            "tool_use"
        }
        None => {
            for p in &s.pieces {
                frames.push(bedrock::event_frame(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": p}}),
                ));
            }
            "end_turn"
        }
    };
    frames.push(bedrock::event_frame(
        "contentBlockStop",
        &json!({"contentBlockIndex": 0}),
    ));
    frames.push(bedrock::event_frame(
        "messageStop",
        &json!({"stopReason": stop}),
    ));
    frames.push(bedrock::event_frame(
        "metadata",
        &json!({"usage": usage, "metrics": {"latencyMs": 1}}),
    ));
    let mut resp = sse_response(m, b, frames);
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    resp
}
