//! Feature flags over OpenFeature's Remote Evaluation Protocol (OFREP): single and bulk
//! evaluation (the bulk answer carries an `ETag`; `If-None-Match` → 304), the provider
//! configuration, and a server-sent-events stream that tells clients to re-fetch when a flag
//! changes. In `keys` mode a virtual key with the `flags` scope is required.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use pylon_policy::flags::{ErrorCode, EvalError, Resolution};
use pylon_types::Dialect;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::context::Secure;
use crate::gateway::{Gateway, LoadedFlags};
use crate::{ingress, limits, ProxyError};

/// Largest evaluation request body (a context is a handful of attributes).
const MAX_BODY: usize = 64 * 1024;

/// The OFREP routes.
pub(crate) fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(single))
        .route("/ofrep/v1/evaluate/flags", post(bulk))
        .route("/ofrep/v1/configuration", get(configuration))
        .route("/ofrep/v1/flags/changes", get(changes))
}

/// The caller may evaluate flags: the per-IP limit, then a key with the `flags` scope.
async fn admit(
    gw: &Gateway,
    parts_headers: &HeaderMap,
    ip: Option<std::net::IpAddr>,
) -> Result<(), Response> {
    limits::per_ip(gw, ip)
        .await
        .map_err(|e| e.into_response(Dialect::OpenAi))?;
    match ingress::authorize(gw, parts_headers) {
        Err(e) => {
            gw.metrics.auth_failures.inc();
            Err(e.into_response(Dialect::OpenAi))
        }
        Ok(Some(p)) if !p.has_scope("flags") => Err(ProxyError::Forbidden(format!(
            "key `{}` may not evaluate flags (its scopes do not include `flags`)",
            p.key_name
        ))
        .into_response(Dialect::OpenAi)),
        Ok(_) => Ok(()),
    }
}

fn failure(status: StatusCode, key: Option<&str>, code: &str, details: String) -> Response {
    let mut body = json!({"errorCode": code, "errorDetails": details});
    if let Some(k) = key {
        body["key"] = json!(k);
    }
    (status, Json(body)).into_response()
}

/// The evaluation context of a request body (`{"context": {...}}`; no body: empty).
fn context(body: &[u8]) -> Result<Map<String, Value>, (&'static str, String)> {
    if body.len() > MAX_BODY {
        return Err((
            "INVALID_CONTEXT",
            format!("the request is larger than {MAX_BODY} bytes"),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ("PARSE_ERROR", format!("the request is not valid JSON: {e}")))?;
    match v.get("context") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(("INVALID_CONTEXT", "`context` must be an object".into())),
    }
}

fn success(key: &str, r: &Resolution) -> Value {
    let mut v = json!({"key": key, "reason": r.reason, "metadata": r.metadata});
    if let Some(value) = &r.value {
        v["value"] = value.clone();
    }
    if let Some(variant) = &r.variant {
        v["variant"] = json!(variant);
    }
    v
}

fn count(gw: &Gateway, key: &str, r: &Result<Resolution, EvalError>) {
    match r {
        Ok(r) => gw
            .metrics
            .flag_evaluations
            .with_label_values(&[key, r.variant.as_deref().unwrap_or("-"), r.reason])
            .inc(),
        Err(e) => gw
            .metrics
            .flag_errors
            .with_label_values(&[e.code.as_str()])
            .inc(),
    }
}

/// An evaluation request, admitted, with its body and context (or the error response).
async fn request(
    gw: &Gateway,
    req: axum::extract::Request,
    key: Option<&str>,
) -> Result<(http::request::Parts, axum::body::Bytes, Map<String, Value>), Response> {
    let (parts, body) = req.into_parts();
    let ip = limits::client_ip(&parts, &gw.settings().trusted_proxies);
    admit(gw, &parts.headers, ip).await?;
    let too_large = || format!("the request is larger than {MAX_BODY} bytes");
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY + 1).await else {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            key,
            "INVALID_CONTEXT",
            too_large(),
        ));
    };
    match context(&body) {
        Ok(ctx) => Ok((parts, body, ctx)),
        Err((code, details)) => Err(failure(StatusCode::BAD_REQUEST, key, code, details)),
    }
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
async fn single(
    State(gw): State<Arc<Gateway>>,
    Path(key): Path<String>,
    req: axum::extract::Request,
) -> Response {
    let (_, _, ctx) = match request(&gw, req, Some(&key)).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let flags = gw.flags();
    let snap = gw.snapshot();
    let r = evaluate(&gw, &snap, &flags, &key, &ctx);
    count(&gw, &key, &r);
    match r {
        Ok(r) => Json(success(&key, &r)).into_response(),
        Err(e) if e.code == ErrorCode::FlagNotFound => failure(
            StatusCode::NOT_FOUND,
            Some(&key),
            e.code.as_str(),
            e.details,
        ),
        Err(e) => failure(
            StatusCode::BAD_REQUEST,
            Some(&key),
            e.code.as_str(),
            e.details,
        ),
    }
}

/// Evaluates a flag; a guarded flag's split follows its rollout: the rollout's share of
/// targeting keys gets the candidate variant, the others the default (reason `SPLIT`), the same
/// bucketing the data plane uses to count their AI requests.
fn evaluate(
    gw: &Gateway,
    snap: &crate::snapshot::Snapshot,
    flags: &LoadedFlags,
    key: &str,
    ctx: &Map<String, Value>,
) -> Result<Resolution, EvalError> {
    let plain = flags.set.evaluate(key, ctx);
    let (Some(f), Ok(r)) = (snap.flag_rollout(key), &plain) else {
        return plain;
    };
    let (Some(tk), Some(state)) = (
        ctx.get("targetingKey")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty()),
        gw.rollout(&f.spec.name),
    ) else {
        return plain;
    };
    if r.reason == "DISABLED" {
        return plain;
    }
    let candidate = pylon_policy::bucket::in_candidate(&f.spec.name, tk, state.weights().0);
    let variant = candidate.then_some(f.variant.as_str());
    Ok(flags
        .set
        .split(key, variant, "SPLIT")
        .unwrap_or_else(|| r.clone()))
}

/// The bulk answer's validator: the flag set's and the context's.
fn etag(flags: &LoadedFlags, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(flags.etag.as_bytes());
    h.update([0]);
    h.update(body);
    let d = h.finalize();
    format!(
        "\"{}\"",
        d[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// `POST /ofrep/v1/evaluate/flags`: every enabled flag for one context.
async fn bulk(State(gw): State<Arc<Gateway>>, req: axum::extract::Request) -> Response {
    let (parts, body, ctx) = match request(&gw, req, None).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let flags = gw.flags();
    let snap = gw.snapshot();
    // A guarded flag's split moves with its rollout: its weight is part of the validator.
    let weights: String = snap
        .flag_rollouts
        .iter()
        .filter_map(|f| Some(gw.rollout(&f.spec.name)?.weights().0.to_string()))
        .collect::<Vec<_>>()
        .join(",");
    let tag = etag(&flags, &[body.as_ref(), weights.as_bytes()].concat());
    let unchanged = parts
        .headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == tag || t.trim() == "*");
    let etag_header = HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"\""));
    if unchanged {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, etag_header);
        return resp;
    }
    let mut out = Vec::with_capacity(flags.set.len());
    for key in flags.set.keys() {
        let r = evaluate(&gw, &snap, &flags, key, &ctx);
        count(&gw, key, &r);
        match r {
            Ok(r) => out.push(success(key, &r)),
            Err(e) => out
                .push(json!({"key": key, "errorCode": e.code.as_str(), "errorDetails": e.details})),
        }
    }
    let mut body = json!({"flags": out});
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    if let Some(host) = host {
        let secure = parts.extensions.get::<Secure>().is_some_and(|s| s.0);
        let scheme = if secure { "https" } else { "http" };
        body["refreshConnections"] =
            json!([{"type": "sse", "url": format!("{scheme}://{host}/ofrep/v1/flags/changes")}]);
    }
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(header::ETAG, etag_header);
    resp
}

/// `GET /ofrep/v1/configuration`.
async fn configuration(State(gw): State<Arc<Gateway>>, req: axum::extract::Request) -> Response {
    let (parts, _) = req.into_parts();
    let ip = limits::client_ip(&parts, &gw.settings().trusted_proxies);
    if let Err(resp) = admit(&gw, &parts.headers, ip).await {
        return resp;
    }
    Json(json!({
        "name": "Pylon",
        "capabilities": {
            "cacheInvalidation": {"polling": {"enabled": true, "minPollingIntervalMs": 1000}},
            "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float", "object"]},
        }
    }))
    .into_response()
}

/// Decrements the open-stream gauge when a stream ends.
struct Open(Arc<Gateway>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.metrics.flag_streams.dec();
    }
}

/// `GET /ofrep/v1/flags/changes`: one `refetchEvaluation` event per change. It carries no flag
/// data (clients re-fetch through the authenticated endpoints), so it needs no key.
async fn changes(State(gw): State<Arc<Gateway>>) -> Response {
    gw.metrics.flag_streams.inc();
    let open = Open(gw.clone());
    let rx = gw.flags.subscribe();
    let stream = futures_util::stream::unfold((rx, open), |(mut rx, open)| async move {
        rx.changed().await.ok()?;
        let flags = open.0.flags();
        let data = json!({"type": "refetchEvaluation", "etag": flags.etag, "lastModified": flags.changed_at});
        let event = Event::default()
            .id(flags.version.to_string())
            .event("message")
            .data(data.to_string());
        Some((Ok::<_, std::convert::Infallible>(event), (rx, open)))
    });
    let stream = futures_util::StreamExt::fuse(stream);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
