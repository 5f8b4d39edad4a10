//! Ingress: read the body within its limit, check it, and build the per-request context.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pylon_config::AuthMode;
use pylon_providers::{openai, TranslateError};
use pylon_telemetry::trace::Attribute;
use pylon_types::anthropic::MessagesRequest;
use pylon_types::{Dialect, Principal};
use serde_json::json;

use crate::context::{Api, Call, FORWARDED};
use crate::limits;
use crate::log::{Accounting, Record};
use crate::snapshot::{Gateway, Validation};
use crate::{auth, upstream, ProxyError};

/// Longest model name accepted; longer is a 400 before anything keeps it.
const MAX_MODEL_NAME: usize = 256;

/// A model name Pylon will look up, log and label: short, and of the characters model names
/// use (letters, digits, `-._:/@+`). Anything else is refused before any state sees it.
fn check_model_name(name: &str) -> Result<(), ProxyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_MODEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:/@+".contains(&b));
    if ok {
        return Ok(());
    }
    Err(TranslateError::Unsupported(format!(
        "`model` must be 1 to {MAX_MODEL_NAME} characters of letters, digits and -._:/@+; got `{}`",
        crate::error::quote(name)
    ))
    .into())
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    run(gw, req, Api::Chat).await
}

/// `POST /v1/messages` (Anthropic Messages API).
pub(crate) async fn messages(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    run(gw, req, Api::Messages).await
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    run(gw, req, Api::Embeddings).await
}

async fn run(gw: Arc<Gateway>, req: Request, api: Api) -> Response {
    let started = Instant::now();
    let snap = gw.snap.clone();
    let (parts, body) = req.into_parts();
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut record = Record::new(gw.clone(), api.route(), request_id, started);
    record.trace = gw.tracer.as_ref().map(|t| {
        t.request(
            format!("{} {}", api.operation(), api.route()),
            &parts.headers,
            vec![
                Attribute::new("gen_ai.operation.name", api.operation()),
                Attribute::new("http.request.method", "POST"),
                Attribute::new("http.route", api.route()),
                Attribute::new("pylon.request_id", record.request_id.clone()),
            ],
        )
    });
    if gw.active.load(std::sync::atomic::Ordering::Relaxed) > gw.edge.max_requests {
        // Shed load before any work; an overload must not also become a write load.
        gw.metrics.shed.with_label_values(&["requests"]).inc();
        record.log_row = false;
        let e = ProxyError::Overloaded(format!(
            "Pylon is serving its limit of {} requests (server.max_requests); retry shortly",
            gw.edge.max_requests
        ));
        return fail(&mut record, e, api.dialect());
    }
    let ip = limits::client_ip(&parts, &gw.trusted_proxies);
    // The per-IP limit runs before auth, so a flood costs no key lookup.
    if let (Some(ip), Some(rpm)) = (ip, gw.ip_rpm) {
        if let Err(e) = limits::admit(&gw, None, Some((ip, rpm)), None, || 0).await {
            return fail(&mut record, e, api.dialect());
        }
    }
    let step_start = gw.tracer.is_some().then(SystemTime::now);
    let principal = authorize(&gw, &parts.headers);
    step(&record, "auth", step_start, principal.as_ref().err());
    let principal = match principal {
        Ok(p) => p,
        Err(e) => {
            // Failed authentication is counted, not written to the store: a bad-key flood must
            // not become a write load. Past `failed_auth_rpm` an address gets 429s instead.
            gw.metrics.auth_failures.inc();
            record.log_row = false;
            let e = match (ip, gw.ip_rpm) {
                (Some(ip), None) if gw.limits.failed_auth_rpm > 0 => {
                    limits::failed_auth(&gw, ip).await.unwrap_or(e)
                }
                _ => e,
            };
            return fail(&mut record, e, api.dialect());
        }
    };
    if let Some(p) = &principal {
        record.key_id = Some(p.key_id.clone());
        record.user.clone_from(&p.user_id);
        record.team_id.clone_from(&p.team_id);
    }
    let call = match read_body(
        body,
        &parts.headers,
        snap.max_body_bytes,
        gw.edge.body_read_timeout,
    )
    .await
    .and_then(|b| parse(api, b, &parts.headers, &gw.validation, &snap.forwardable))
    {
        Ok(call) => call,
        Err(e) => return fail(&mut record, e, api.dialect()),
    };
    record.stream = call.stream;
    if let Some(span) = &record.trace {
        span.set([
            Attribute::new("gen_ai.request.model", call.model.clone()),
            Attribute::new("pylon.stream", call.stream),
        ]);
    }
    if let Some(p) = principal.as_ref().filter(|p| !p.may_use(&call.model)) {
        let e = ProxyError::Forbidden(format!(
            "key `{}` may not use model `{}`; it may use: {}",
            p.key_name,
            call.model,
            p.allowed_models.as_deref().unwrap_or_default().join(", ")
        ));
        return fail(&mut record, e, api.dialect());
    }
    let Some(model) = snap.resolve(&call.model) else {
        // An unknown name is only quoted in the error: it never becomes a log key or label.
        return fail(
            &mut record,
            ProxyError::UnknownModel(crate::error::quote(&call.model)),
            api.dialect(),
        );
    };
    record.model = call.model.clone();
    record.metric_model.clone_from(&model.metric_name);
    if model.log_bodies {
        record.prompt = Some(call.body.clone());
    }
    if let Some(p) = principal.as_deref().filter(|p| p.has_budget()) {
        if let Some(unpriced) = crate::route::unpriced(&snap, &gw.prices, &model) {
            let e = ProxyError::Unpriced(format!(
                "key `{}` has a budget, but model `{}` may be served by `{unpriced}`, whose price is unknown; an operator must add it to [[prices]] (or a catch-all `model = \"*\"`)",
                p.key_name, model.name
            ));
            return fail(&mut record, e, api.dialect());
        }
    }
    let body = call.body.clone();
    let step_start = gw.tracer.is_some().then(SystemTime::now);
    let admitted = limits::admit(&gw, principal.as_deref(), None, Some(&model), || {
        limits::estimate_tokens(&body)
    })
    .await;
    step(&record, "limits", step_start, admitted.as_ref().err());
    let mut admitted = match admitted {
        Ok(a) => a,
        Err(e) => return fail(&mut record, e, api.dialect()),
    };
    let mut rate_headers = std::mem::take(&mut admitted.headers);
    record.acct = Some(Accounting {
        admitted,
        input_estimate: (call.body.len() as u64).div_ceil(4),
    });
    let mut write = None;
    if let (Some(cache), Some(policy), false) = (&gw.cache, &model.cache, api == Api::Messages) {
        let step_start = gw.tracer.is_some().then(SystemTime::now);
        let found = crate::cache::lookup(cache, policy, &call, &parts.headers, &mut record).await;
        step(&record, "cache", step_start, None);
        match found {
            crate::cache::Lookup::Hit(mut resp) => {
                record.status = resp.status().as_u16();
                record.outcome = "ok";
                for (name, value) in rate_headers {
                    resp.headers_mut().insert(name, value);
                }
                return resp;
            }
            crate::cache::Lookup::Miss(w) => write = Some(w),
            crate::cache::Lookup::Bypass => {}
        }
        if let Some(r) = record.cache {
            rate_headers.push((
                http::HeaderName::from_static("x-pylon-cache"),
                HeaderValue::from_static(r),
            ));
        }
    }
    let mut call = Call {
        record: Some(record),
        cache: write,
        ..call
    };
    let mut resp = match upstream::dispatch(&snap, &mut call, model).await {
        Ok(resp) => resp,
        Err(e) => match call.record.as_mut() {
            Some(r) => fail(r, e, api.dialect()),
            None => e.into_response(api.dialect()),
        },
    };
    for (name, value) in rate_headers {
        resp.headers_mut().insert(name, value);
    }
    resp
}

/// Records a finished step (auth, limits) as a span, when tracing.
fn step(
    record: &Record,
    name: &'static str,
    start: Option<SystemTime>,
    error: Option<&ProxyError>,
) {
    if let (Some(span), Some(start)) = (&record.trace, start) {
        span.step(name, start, error.map(ToString::to_string).as_deref());
    }
}

/// The caller's principal in `keys` mode; `None` when auth is off.
fn authorize(gw: &Gateway, headers: &HeaderMap) -> Result<Option<Arc<Principal>>, ProxyError> {
    match gw.auth {
        AuthMode::None => Ok(None),
        AuthMode::Keys => auth::authenticate(&gw.keys.load(), headers, auth::unix_now()).map(Some),
    }
}

fn fail(record: &mut Record, e: ProxyError, dialect: Dialect) -> Response {
    record.error = Some(e.to_string());
    record.error_class = Some(e.class());
    if matches!(e, ProxyError::LimitsUnavailable) {
        record
            .gw
            .metrics
            .rejected
            .with_label_values(&["limits_unavailable", "other"])
            .inc();
    }
    let mut resp = e.into_response(dialect);
    record.status = resp.status().as_u16();
    record.outcome = "error";
    crate::respond::overhead_header(&mut resp, record);
    resp
}

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::TooLarge { limit });
    }
    let Ok(read) = tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await else {
        return Err(ProxyError::BodyTimeout(deadline));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ProxyError::TooLarge { limit })
        }
        Err(e) => Err(ProxyError::BodyRead(e.to_string())),
    }
}

fn parse(
    api: Api,
    body: Bytes,
    headers: &HeaderMap,
    limits: &Validation,
    forwardable: &[http::HeaderName],
) -> Result<Call, ProxyError> {
    let (model, span, stream, include_usage, messages) = match api {
        Api::Chat => {
            let h = openai::chat_head(&body)?;
            limits.check(h.messages, h.largest_message)?;
            (
                h.model.into_owned(),
                h.model_span,
                h.stream,
                h.include_usage,
                None,
            )
        }
        Api::Embeddings => {
            let h = openai::embeddings_head(&body)?;
            (h.model.into_owned(), h.model_span, false, false, None)
        }
        Api::Messages => {
            let req: MessagesRequest =
                serde_json::from_slice(&body).map_err(|source| TranslateError::Json {
                    what: "Messages request",
                    source,
                })?;
            if req.messages.is_empty() {
                return Err(TranslateError::Unsupported(
                    "`messages` must contain at least one message".into(),
                )
                .into());
            }
            if let Some(m) = req
                .messages
                .iter()
                .find(|m| m.role != "user" && m.role != "assistant")
            {
                return Err(TranslateError::Unsupported(format!(
                    "message role `{}` must be `user` or `assistant`",
                    m.role
                ))
                .into());
            }
            // The body limit bounds every message's size; the count is checked here.
            limits.check(req.messages.len(), 0)?;
            let (model, span) = openai::model_field(&body)?;
            let stream = req.stream.unwrap_or(false);
            (model.into_owned(), span, stream, true, Some(req))
        }
    };
    check_model_name(&model)?;
    let forward = FORWARDED
        .iter()
        .map(|name| http::HeaderName::from_static(name))
        .chain(forwardable.iter().cloned())
        .filter_map(|name| {
            let value = headers.get(&name)?.clone();
            Some((name, value))
        })
        .collect();
    Ok(Call {
        api,
        body,
        model,
        model_span: span,
        stream,
        include_usage,
        forward,
        messages,
        canonical: OnceLock::new(),
        record: None,
        cache: None,
    })
}

/// `GET /v1/models`: the configured names, in the Anthropic shape when the client is the Anthropic SDK.
pub(crate) async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let dialect = if headers.contains_key("anthropic-version") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    let principal = match authorize(&gw, &headers) {
        Ok(p) => p,
        Err(e) => return e.into_response(dialect),
    };
    let names: Vec<&String> = gw
        .snap
        .model_names
        .iter()
        .filter(|n| principal.as_ref().is_none_or(|p| p.may_use(n)))
        .collect();
    if headers.contains_key("anthropic-version") {
        let data: Vec<_> = names
            .iter()
            .map(|n| json!({"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}))
            .collect();
        let first = names.first().copied();
        let last = names.last().copied();
        return Json(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
            .into_response();
    }
    let data: Vec<_> = names
        .iter()
        .map(|n| json!({"id": n, "object": "model", "created": 0, "owned_by": "pylon"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
