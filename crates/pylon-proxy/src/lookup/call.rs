//! Pylon's own calls to its providers on the cache's behalf (question embeddings, the judge):
//! each target of the model in turn, skipping open breakers, in the provider's wire format.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use pylon_config::ProviderKind;
use pylon_providers::{anthropic, bedrock, gemini};
use pylon_types::openai::{ChatRequest, ChatResponse};
use serde_json::Value;

use crate::cache::judge::{verdict, Decision, Judge};
use crate::context::ANTHROPIC_VERSION;
use crate::gateway::Gateway;
use crate::snapshot::{Provider, Target};

/// Largest answer read (an embedding of a few thousand dimensions, or a one-word verdict).
const MAX_ANSWER: usize = 4 << 20;

/// The model's targets whose breakers let a call through, in configured order.
fn usable(gw: &Gateway, model: &str) -> Result<Vec<Target>, String> {
    let m = gw
        .snapshot()
        .resolve(model)
        .ok_or_else(|| format!("model `{model}` is not configured"))?;
    let now = Instant::now();
    let usable: Vec<Target> = m
        .targets
        .iter()
        .filter(|t| t.health.breaker(now) != crate::breaker::Breaker::Open)
        .cloned()
        .collect();
    if usable.is_empty() {
        return Err(format!("every target of `{model}` is unavailable"));
    }
    Ok(usable)
}

fn to_bytes<T: serde::Serialize>(v: &T) -> Result<Bytes, String> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// POSTs `body` to `path` of `p` (for `model`) with its credential; the answer body, or why not.
async fn post(
    p: &Provider,
    path: &str,
    model: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, String> {
    let uri = p.uri(path, model).map_err(|e| e.to_string())?;
    let mut req = Request::post(uri).header(http::header::CONTENT_TYPE, "application/json");
    if p.kind == ProviderKind::Anthropic {
        req = req.header(ANTHROPIC_VERSION, pylon_providers::anthropic::API_VERSION);
    }
    let mut req = req
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    crate::credential::apply(p, &mut req, &body)?;
    let work = async {
        let resp = p
            .client
            .send(req)
            .await
            .map_err(|e| format!("the call failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the provider answered {}", resp.status()));
        }
        Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("the answer could not be read: {e}"))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "the call timed out".to_owned())?
}

/// The embedding of `text` by `model`.
pub(crate) async fn embedding(gw: &Gateway, model: &str, text: &str) -> Result<Vec<f32>, String> {
    let mut last = String::new();
    for t in usable(gw, model)? {
        let p = &t.provider;
        let body = serde_json::json!({"model": t.model, "input": text}).to_string();
        let budget = p.timeouts.first_byte + p.timeouts.idle;
        let bytes = match post(p, "/embeddings", &t.model, body.into(), budget).await {
            Ok(b) => b,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        return v["data"][0]["embedding"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64().map(|f| f as f32))
                    .collect::<Vec<f32>>()
            })
            .filter(|v| !v.is_empty())
            .ok_or_else(|| "the embedding answer has no vector".to_owned());
    }
    Err(format!("the embedding call failed: {last}"))
}

/// One non-stream chat completion of `req` by `model`, translated for the provider's kind;
/// the answer in OpenAI's shape.
pub(crate) async fn chat(
    gw: &Gateway,
    model: &str,
    req: &ChatRequest,
    timeout: Duration,
) -> Result<ChatResponse, String> {
    let started = Instant::now();
    let mut last = String::new();
    for t in usable(gw, model)? {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err("the call timed out".to_owned());
        }
        let mut r = req.clone();
        r.model.clone_from(&t.model);
        let (path, body) = match t.provider.kind {
            ProviderKind::Openai | ProviderKind::Azure => {
                ("/chat/completions".to_owned(), to_bytes(&r))
            }
            ProviderKind::Bedrock => {
                let c = bedrock::to_converse(&r, &t.model, Default::default())
                    .map_err(|e| e.to_string())?;
                (bedrock::path(&t.model, false), to_bytes(&c))
            }
            ProviderKind::Anthropic => {
                let m = anthropic::to_messages(&r, &t.model, Default::default())
                    .map_err(|e| e.to_string())?;
                ("/v1/messages".to_owned(), to_bytes(&m))
            }
            ProviderKind::Gemini => {
                let g = gemini::to_generate(&r, Default::default()).map_err(|e| e.to_string())?;
                (gemini::path(&t.model, false), to_bytes(&g))
            }
        };
        let bytes = match post(&t.provider, &path, &t.model, body?, left).await {
            Ok(b) => b,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let parsed = match t.provider.kind {
            ProviderKind::Openai | ProviderKind::Azure => {
                serde_json::from_slice::<ChatResponse>(&bytes)
            }
            ProviderKind::Bedrock => serde_json::from_slice::<Value>(&bytes)
                .map(|v| bedrock::response_to_openai(&v, &t.model)),
            ProviderKind::Anthropic => {
                serde_json::from_slice(&bytes).map(anthropic::response_to_openai)
            }
            ProviderKind::Gemini => {
                serde_json::from_slice(&bytes).map(|g| gemini::response_to_openai(g, &t.model))
            }
        };
        return parsed.map_err(|e| format!("the answer does not parse: {e}"));
    }
    Err(last)
}

/// Asks `judge` whether a single answer to `candidate` answers `question` too; anything but a
/// clear YES (a NO, an error, a timeout) is a miss.
pub(crate) async fn judge(
    gw: &Gateway,
    judge: &Judge,
    question: &str,
    candidate: &str,
) -> Decision {
    let Some(req) = judge.request(question, candidate) else {
        return Decision::Failed;
    };
    let answer = match chat(gw, judge.model(), &req, judge.timeout()).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(target: "pylon::cache", error = %e, "semantic-cache judge failed: treated as a miss");
            return Decision::Failed;
        }
    };
    if let Some(usage) = answer.usage {
        if let Some(cost) = gw.settings().prices.cost(&answer.model, usage) {
            gw.metrics.semantic.judge_cost.inc_by(cost);
        }
    }
    let text = answer
        .choices
        .first()
        .and_then(|c| c.message.content.as_deref())
        .unwrap_or("");
    verdict(text)
}
