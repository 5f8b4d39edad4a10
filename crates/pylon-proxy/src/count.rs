//! `POST /v1/messages/count_tokens`: forwarded to the model's first available Anthropic target;
//! for a model without one, estimated (a quarter of the body's bytes, the estimate limits use)
//! and said so with `x-pylon-estimated: true`. Free and not billed, so it skips limits, budgets
//! and the request log; the caller must still be allowed the model.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use pylon_config::ProviderKind;
use pylon_providers::{anthropic, openai, TranslateError};
use pylon_types::Dialect;
use serde_json::json;

use crate::breaker::Availability;
use crate::context::ANTHROPIC_VERSION;
use crate::gateway::Gateway;
use crate::snapshot::Target;
use crate::{ingress, ProxyError};

/// The largest count answer read from a provider.
const MAX_ANSWER: usize = 64 * 1024;

/// `POST /v1/messages/count_tokens`.
pub(crate) async fn count_tokens(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    match count(&gw, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(Dialect::Anthropic),
    }
}

async fn count(gw: &Gateway, req: Request) -> Result<Response, ProxyError> {
    let (parts, body) = req.into_parts();
    let principal = ingress::authorize(gw, &parts.headers)?;
    let snap = gw.snapshot();
    let body = Limited::new(body, snap.max_body_bytes)
        .collect()
        .await
        .map_err(|_| ProxyError::TooLarge {
            limit: snap.max_body_bytes,
        })?
        .to_bytes();
    let (name, span) = openai::model_field(&body)?;
    if serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("messages").map(serde_json::Value::is_array))
        != Some(true)
    {
        return Err(TranslateError::Unsupported("`messages` must be an array".into()).into());
    }
    if let Some(p) = principal.as_deref().filter(|p| !p.has_scope("ai")) {
        return Err(ProxyError::Forbidden(format!(
            "key `{}` may not count tokens (its scopes do not include `ai`)",
            p.key_name
        )));
    }
    if let Some(p) = principal.as_deref().filter(|p| !p.may_use(&name)) {
        return Err(ProxyError::Forbidden(format!(
            "key `{}` may not use model `{name}`",
            p.key_name
        )));
    }
    let model = snap
        .resolve(&name)
        .ok_or_else(|| ProxyError::UnknownModel(crate::error::quote(&name)))?;
    let anthropic_target = crate::route::order(&model)
        .into_iter()
        .map(|i| &model.targets[i])
        .find(|t| t.provider.kind == ProviderKind::Anthropic);
    if let Some(t) = anthropic_target {
        if let Availability::Ready(_permit) = t.health.check(Instant::now()) {
            let sent = openai::with_model(&body, span, &t.model);
            return forward(t, &parts.headers, sent).await;
        }
    }
    let estimate = (body.len() as u64).div_ceil(4);
    let mut resp = Json(json!({"input_tokens": estimate})).into_response();
    resp.headers_mut()
        .insert("x-pylon-estimated", HeaderValue::from_static("true"));
    Ok(resp)
}

/// Sends the count to an Anthropic target and relays its answer (errors in its own words).
async fn forward(
    t: &Target,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Result<Response, ProxyError> {
    let p = &t.provider;
    let mut req = http::Request::post(format!("{}/v1/messages/count_tokens", p.base))
        .header(header::CONTENT_TYPE, "application/json");
    let version = headers
        .get(ANTHROPIC_VERSION)
        .cloned()
        .unwrap_or(HeaderValue::from_static(anthropic::API_VERSION));
    req = req.header(ANTHROPIC_VERSION, version);
    if let Some(beta) = headers.get("anthropic-beta") {
        req = req.header("anthropic-beta", beta.clone());
    }
    let mut req = req
        .body(Full::new(body.clone()))
        .map_err(|e| ProxyError::Unsupported(format!("could not build the request: {e}")))?;
    let unavailable = |what: String| ProxyError::Exhausted {
        kind: pylon_types::ErrorKind::Upstream,
        message: format!("provider `{}` could not count tokens: {what}", p.name),
        retry_after: None,
    };
    crate::credential::apply(p, &mut req, &body).map_err(unavailable)?;
    let resp = tokio::time::timeout(p.timeouts.response, p.client.send(req))
        .await
        .map_err(|_| unavailable("timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status();
    let answer = tokio::time::timeout(
        p.timeouts.idle,
        Limited::new(resp.into_body(), MAX_ANSWER).collect(),
    )
    .await
    .map_err(|_| unavailable("the answer timed out".into()))?
    .map_err(|e| unavailable(e.to_string()))?
    .to_bytes();
    if matches!(status.as_u16(), 401 | 403) {
        return Err(unavailable(format!(
            "Pylon's credential for it was refused ({status})"
        )));
    }
    let mut out = Response::new(Body::from(answer));
    *out.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(out)
}
