//! One AI request's path, phase by phase. Each phase is a module that takes the request's
//! context and knows nothing of the phases after it; this file is the only place that knows
//! their order.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::request::Parts;
use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use pylon_types::Dialect;

use crate::context::{Api, Call};
use crate::gateway::{Arm, Gateway};
use crate::log::Record;
use crate::lookup::Lookup;
use crate::rollout::Shadow;
use crate::snapshot::{Model, Snapshot};
use crate::{conversation, ingress, limits, lookup, rollout, route, upstream, ProxyError};

/// Names the rollout arm that served a response.
const ARM: HeaderName = HeaderName::from_static("x-pylon-arm");

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

/// `POST /v1/responses` (OpenAI Responses API).
pub(crate) async fn responses(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    run(gw, req, Api::Responses).await
}

/// `POST /v1/completions` (legacy; OpenAI providers only).
pub(crate) async fn completions(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    run(gw, req, Api::Completions).await
}

/// The AI endpoint a `POST` to `path` is, if it is one.
pub(crate) fn api_of(path: &str) -> Option<Api> {
    Some(match path {
        "/v1/chat/completions" => Api::Chat,
        "/v1/messages" => Api::Messages,
        "/v1/embeddings" => Api::Embeddings,
        "/v1/responses" => Api::Responses,
        "/v1/completions" => Api::Completions,
        _ => return None,
    })
}

/// Serves an AI endpoint without the router: what the router's layers add to every answer
/// (its request id, the security headers) is added here. The router's boxed layers, and the
/// copies of the request's future they made, cost a few per cent of the CPU per request.
pub(crate) async fn direct(gw: Arc<Gateway>, mut req: Request, api: Api, hsts: bool) -> Response {
    let id = match req.headers().get(crate::server::X_REQUEST_ID) {
        Some(id) => Some(id.clone()),
        None => crate::server::new_request_id().inspect(|id| {
            req.headers_mut()
                .insert(crate::server::X_REQUEST_ID, id.clone());
        }),
    };
    let mut resp = run(gw, req, api).await;
    if let Some(id) = id {
        resp.headers_mut()
            .entry(crate::server::X_REQUEST_ID)
            .or_insert(id);
    }
    crate::server::add_security_headers(&mut resp, hsts);
    resp
}

/// Where the phases before the provider left the request.
enum Next {
    /// Answered without a provider (a cache hit).
    Answered(Response),
    /// Send to the provider (and a shadow copy to a rollout's candidate). The call is boxed:
    /// inline (1.4 KB) it sat twice in the request's future, and that future was copied whole
    /// at each move.
    Upstream(Box<Call>, Arc<Model>, Option<Box<Shadow>>),
}

async fn run(gw: Arc<Gateway>, req: Request, api: Api) -> Response {
    // The request keeps the snapshot it started with, whatever a reload installs meanwhile.
    let snap = gw.snapshot();
    let (parts, body) = req.into_parts();
    let mut record = ingress::open(&gw, &parts.headers, api);
    let mut headers = Vec::new();
    // The two halves are boxed: inline they made this future 12 KB, copied whole each time
    // it moved (into the connection's service future, the router's box), 5 % of the CPU.
    let next = Box::pin(prepare(
        &gw,
        &snap,
        api,
        &parts,
        body,
        &mut record,
        &mut headers,
    ))
    .await;
    if let Some((_, arm)) = &record.arm {
        headers.push((ARM, HeaderValue::from_static(arm.as_str())));
    }
    let mut resp = match next {
        Err(e) => fail(&mut record, e, api.dialect()),
        Ok(Next::Answered(resp)) => {
            record.status = resp.status().as_u16();
            record.outcome = "ok";
            resp
        }
        Ok(Next::Upstream(mut call, model, shadow)) => {
            if let Some(s) = shadow {
                send_shadow(&gw, &snap, api, *s);
            }
            call.record = Some(record);
            let resp = Box::pin(upstream::dispatch(&snap, &mut call, model)).await;
            if let Some(r) = call.record.as_mut() {
                r.release_slots().await;
            }
            match resp {
                Ok(resp) => resp,
                Err(e) => match call.record.as_mut() {
                    Some(r) => fail(r, e, api.dialect()),
                    None => e.into_response(api.dialect()),
                },
            }
        }
    };
    for (name, value) in headers {
        resp.headers_mut().insert(name, value);
    }
    resp
}

/// The phases before a provider is called, in order; any of them may end the request.
async fn prepare(
    gw: &Gateway,
    snap: &Snapshot,
    api: Api,
    parts: &Parts,
    body: Body,
    record: &mut Record,
    headers: &mut Vec<(HeaderName, HeaderValue)>,
) -> Result<Next, ProxyError> {
    ingress::shed(gw, record)?;
    let ip = limits::client_ip(parts, &gw.settings().trusted_proxies);
    limits::per_ip(gw, ip).await?;
    let principal = ingress::authenticate(gw, &parts.headers, ip, record).await?;
    let mut call = ingress::read(gw, snap, api, body, &parts.headers, record).await?;
    conversation::resolve(gw, principal.as_deref(), &mut call).await?;
    let model = route::choose(
        snap,
        &gw.settings().prices,
        principal.as_deref(),
        &call,
        record,
    )?;
    let user = call.user.clone();
    let caller = rollout::Caller {
        principal: principal.as_deref(),
        parts,
        ip,
        user: user.as_deref(),
    };
    let (mut call, model, shadow) = rollout::assign(gw, snap, &caller, call, model, record)?;
    headers.extend(limits::admit_call(gw, principal.as_deref(), &model, &call, record).await?);
    call.cache = match lookup::phase(gw, &model, &call, &parts.headers, record, headers).await {
        Lookup::Hit(resp) => return Ok(Next::Answered(resp)),
        Lookup::Miss(write) => Some(write),
        Lookup::Bypass => None,
    };
    Ok(Next::Upstream(call, model, shadow))
}

/// Sends a shadow copy to a rollout's candidate on a tracked task: its answer is read to the
/// end (so its latency and usage are measured) and discarded; nothing is billed or logged.
fn send_shadow(gw: &Arc<Gateway>, snap: &Arc<Snapshot>, api: Api, s: Shadow) {
    // Copies are optional work: under load they are the first thing dropped.
    if gw.active.load(std::sync::atomic::Ordering::Relaxed) > gw.edge.max_requests / 2 {
        gw.metrics
            .bounded_drops
            .with_label_values(&["shadow"])
            .inc();
        return;
    }
    let mut record = Record::new(gw.clone(), api.route(), String::new(), Instant::now());
    record.shadow = true;
    record.log_row = false;
    record.stream = s.call.stream;
    record.model.clone_from(&s.call.model);
    record.metric_model.clone_from(&s.model.metric_name);
    record.arm = Some((s.state, Arm::Candidate));
    let mut call = Call {
        record: Some(record),
        ..s.call
    };
    let snap = snap.clone();
    gw.spawn(async move {
        match upstream::dispatch(&snap, &mut call, s.model).await {
            Ok(resp) => {
                let mut body = resp.into_body();
                while let Some(Ok(_)) = body.frame().await {}
            }
            Err(e) => {
                if let Some(r) = call.record.as_mut() {
                    fail(r, e, api.dialect());
                }
            }
        }
    });
}

/// Ends the request with `e`, in the client's dialect, and records why.
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
