//! Ingress: read the body within its limit, check it, and build the per-request context.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pylon_config::AuthMode;
use pylon_providers::{anthropic, openai, responses, TranslateError};
use pylon_telemetry::trace::Attribute;
use pylon_types::{Dialect, Principal};
use serde_json::json;

use crate::context::{Api, Call, ResponsesCall, ANTHROPIC_VERSION, FORWARDED, PROVIDER_HEADERS};
use crate::gateway::Gateway;
use crate::limits;
use crate::log::Record;
use crate::snapshot::{Snapshot, Validation};
use crate::{auth, ProxyError};

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

/// Opens the request's record (and its server span, when tracing).
pub(crate) fn open(gw: &Arc<Gateway>, headers: &HeaderMap, api: Api) -> Record {
    let request_id = headers
        .get(crate::server::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut record = Record::new(gw.clone(), api.route(), request_id, Instant::now());
    record.trace = gw.tracer.as_ref().map(|t| {
        t.request(
            format!("{} {}", api.operation(), api.route()),
            headers,
            vec![
                Attribute::new("gen_ai.operation.name", api.operation()),
                Attribute::new("http.request.method", "POST"),
                Attribute::new("http.route", api.route()),
                Attribute::new("pylon.request_id", record.request_id.clone()),
            ],
        )
    });
    record
}

/// Sheds the request when `max_requests` are in progress, before any other work: an overload
/// must not also become a write load.
pub(crate) fn shed(gw: &Gateway, record: &mut Record) -> Result<(), ProxyError> {
    if gw.active.load(std::sync::atomic::Ordering::Relaxed) <= gw.edge.max_requests {
        return Ok(());
    }
    gw.metrics.shed.with_label_values(&["requests"]).inc();
    record.log_row = false;
    Err(ProxyError::Overloaded(format!(
        "Pylon is serving its limit of {} requests (server.max_requests); retry shortly",
        gw.edge.max_requests
    )))
}

/// Authenticates the caller (`None` with auth off). Failed authentication is counted, not
/// written to the store: a bad-key flood must not become a write load. Past `failed_auth_rpm`
/// an address gets 429s instead.
pub(crate) async fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
    ip: Option<std::net::IpAddr>,
    record: &mut Record,
) -> Result<Option<Arc<Principal>>, ProxyError> {
    let step_start = gw.tracer.is_some().then(SystemTime::now);
    let principal = authorize(gw, headers);
    record.step("auth", step_start, principal.as_ref().err());
    let principal = match principal {
        Ok(p) => p,
        Err(e) => {
            gw.metrics.auth_failures.inc();
            record.log_row = false;
            let settings = gw.settings();
            return Err(match (ip, settings.ip_rpm) {
                (Some(ip), None) if settings.limits.failed_auth_rpm > 0 => {
                    limits::failed_auth(gw, ip).await.unwrap_or(e)
                }
                _ => e,
            });
        }
    };
    if let Some(p) = &principal {
        record.key_id = Some(p.key_id.clone());
        record.user.clone_from(&p.user_id);
        record.team_id.clone_from(&p.team_id);
        if !p.has_scope("ai") {
            return Err(ProxyError::Forbidden(format!(
                "key `{}` may only evaluate flags (its scopes do not include `ai`)",
                p.key_name
            )));
        }
    }
    Ok(principal)
}

/// Reads and checks the body (within its size and time limits) and builds the call.
pub(crate) async fn read(
    gw: &Gateway,
    snap: &Snapshot,
    api: Api,
    body: Body,
    headers: &HeaderMap,
    record: &mut Record,
) -> Result<Box<Call>, ProxyError> {
    let body = read_body(
        body,
        headers,
        snap.max_body_bytes,
        gw.edge.body_read_timeout,
    )
    .await?;
    let call = parse(
        api,
        body,
        headers,
        &gw.settings().validation,
        &snap.forwardable,
    )?;
    record.stream = call.stream;
    if let Some(span) = &record.trace {
        span.set([
            Attribute::new("gen_ai.request.model", call.model.clone()),
            Attribute::new("pylon.stream", call.stream),
        ]);
    }
    Ok(call)
}

/// The caller's principal in `keys` mode; `None` when auth is off.
pub(crate) fn authorize(
    gw: &Gateway,
    headers: &HeaderMap,
) -> Result<Option<Arc<Principal>>, ProxyError> {
    match gw.settings().auth {
        AuthMode::None => Ok(None),
        AuthMode::Keys => auth::authenticate(&gw.keys.load(), headers, auth::unix_now()).map(Some),
    }
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

pub(crate) fn parse(
    api: Api,
    body: Bytes,
    headers: &HeaderMap,
    limits: &Validation,
    forwardable: &[http::HeaderName],
) -> Result<Box<Call>, ProxyError> {
    let mut conversation = None;
    let (model, span, stream, include_usage, user) = match api {
        Api::Chat => {
            let h = openai::chat_head(&body)?;
            limits.check(h.messages, h.largest_message)?;
            (
                h.model.into_owned(),
                h.model_span,
                h.stream,
                h.include_usage,
                h.user.map(|u| u.into_owned()),
            )
        }
        Api::Responses => {
            let h = responses::head(&body)?;
            let request: serde_json::Value =
                serde_json::from_slice(&body).map_err(|source| TranslateError::Json {
                    what: "Responses request",
                    source,
                })?;
            let items = responses::input_items(&request)?;
            limits.check(items.len(), 0)?;
            let (model, span) = openai::model_field(&body)?;
            let user = h.safety_identifier.or(h.user).map(|u| u.into_owned());
            let stream = h.stream.unwrap_or(false);
            conversation = Some(Box::new(ResponsesCall {
                items,
                expanded: false,
                unknown_previous: None,
                store: h.store.unwrap_or(true),
                owner: String::new(),
                id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
                created_at: pylon_providers::unix_now(),
                request,
            }));
            (model.into_owned(), span, stream, true, user)
        }
        Api::Completions => {
            let h = openai::completions_head(&body)?;
            (
                h.model.into_owned(),
                h.model_span,
                h.stream,
                h.include_usage,
                h.user.map(|u| u.into_owned()),
            )
        }
        Api::Embeddings => {
            let h = openai::embeddings_head(&body)?;
            (h.model.into_owned(), h.model_span, false, false, None)
        }
        Api::Messages => {
            let h: anthropic::MessagesHead<'_> =
                serde_json::from_slice(&body).map_err(|source| TranslateError::Json {
                    what: "Messages request",
                    source,
                })?;
            if h.messages.is_empty() {
                return Err(TranslateError::Unsupported(
                    "`messages` must contain at least one message".into(),
                )
                .into());
            }
            if let Some(m) = h
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
            limits.check(h.messages.len(), 0)?;
            let (model, span) = openai::model_field(&body)?;
            let stream = h.stream.unwrap_or(false);
            let user = h.metadata.and_then(|m| m.user_id).map(|u| u.into_owned());
            (model.into_owned(), span, stream, true, user)
        }
    };
    check_model_name(&model)?;
    // One pass over the few headers a request has, rather than a hashed lookup per name that
    // may be forwarded; the first value of each name, as `HeaderMap::get` gives.
    let mut forward: Vec<(http::HeaderName, http::HeaderValue)> = Vec::new();
    for (name, value) in headers {
        let wanted = FORWARDED.contains(name) || forwardable.contains(name);
        if wanted && !forward.iter().any(|(n, _)| n == name) {
            forward.push((name.clone(), value.clone()));
        }
    }
    // Boxed where it is built: the call (1.4 KB) is held across the request's awaits, and
    // inline it would be copied with each future that holds it.
    Ok(Box::new(Call {
        api,
        body,
        model,
        model_span: span,
        stream,
        include_usage,
        provider_headers: headers.contains_key(PROVIDER_HEADERS),
        forward,
        user,
        canonical: OnceLock::new(),
        responses: conversation,
        record: None,
        cache: None,
    }))
}

/// The caller of a model listing: its dialect (Anthropic's when `anthropic-version` is sent)
/// and the names it may use.
fn listing(
    gw: &Gateway,
    headers: &HeaderMap,
) -> Result<(Dialect, Vec<String>), (Dialect, ProxyError)> {
    let dialect = if headers.contains_key(ANTHROPIC_VERSION) {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    let principal = authorize(gw, headers).map_err(|e| (dialect, e))?;
    let names = gw
        .snapshot()
        .model_names
        .iter()
        .filter(|n| principal.as_ref().is_none_or(|p| p.may_use(n)))
        .cloned()
        .collect();
    Ok((dialect, names))
}

fn model_json(dialect: Dialect, id: &str) -> serde_json::Value {
    match dialect {
        Dialect::Anthropic => json!({"type": "model", "id": id, "display_name": id,
            "created_at": "1970-01-01T00:00:00Z"}),
        _ => json!({"id": id, "object": "model", "created": 0, "owned_by": "pylon"}),
    }
}

/// `GET /v1/models/{id}`: one configured name, in the client's dialect; 404 if it is not one
/// the caller may use.
pub(crate) async fn model(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    match listing(&gw, &headers) {
        Err((dialect, e)) => e.into_response(dialect),
        Ok((dialect, names)) if names.contains(&id) => {
            Json(model_json(dialect, &id)).into_response()
        }
        Ok((dialect, _)) => {
            ProxyError::UnknownModel(crate::error::quote(&id)).into_response(dialect)
        }
    }
}

/// `GET /v1/models`: the configured names, in the Anthropic shape when the client is the Anthropic SDK.
pub(crate) async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let (dialect, names) = match listing(&gw, &headers) {
        Ok(l) => l,
        Err((dialect, e)) => return e.into_response(dialect),
    };
    let data: Vec<_> = names.iter().map(|n| model_json(dialect, n)).collect();
    if dialect == Dialect::Anthropic {
        let first = names.first();
        let last = names.last();
        return Json(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
            .into_response();
    }
    Json(json!({"object": "list", "data": data})).into_response()
}
