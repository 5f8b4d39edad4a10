//! Upstream: try targets in route order, with retries, backoff, Retry-After, breakers and fallbacks.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use pylon_config::ProviderKind;
use pylon_providers::{anthropic, bedrock, embeddings, gemini, openai, responses, TranslateError};
use pylon_telemetry::trace::Attribute;
use pylon_types::ErrorKind;

use crate::breaker::Availability;
use crate::context::{Api, Call, ANTHROPIC_VERSION, TRACEPARENT};
use crate::snapshot::{Model, Snapshot, Target};

use crate::context::passthrough;
use crate::error::Failure;
use crate::{respond, route, ProxyError};

/// The outcome of one failed attempt.
pub(crate) enum AttemptError {
    /// Try the next target.
    Retry(Failure),
    /// Stop: the request itself is at fault.
    Fatal(ProxyError),
}

impl From<ProxyError> for AttemptError {
    fn from(e: ProxyError) -> Self {
        AttemptError::Fatal(e)
    }
}

/// Whether a provider of this kind can serve this endpoint.
fn supports(api: Api, kind: ProviderKind) -> bool {
    match api {
        Api::Completions => kind.openai_wire(),
        Api::Embeddings => kind != ProviderKind::Anthropic,
        _ => true,
    }
}

/// Serves a call from its model, then the model's fallbacks.
pub(crate) async fn dispatch(
    snap: &Snapshot,
    call: &mut Call,
    first: Arc<Model>,
) -> Result<Response, ProxyError> {
    let r = &snap.resilience;
    let mut last: Option<Failure> = None;
    let mut attempted = false;
    let mut supported = false;
    let first_name = first.name.clone();
    let chain = route::chain(snap, first);
    let models = chain.len();
    for (index, model) in chain.into_iter().enumerate() {
        let last_model = index + 1 == models;
        let mut model_attempts = 0u32;
        let order = route::order(&model);
        let mut tried = vec![false; order.len()];
        let (mut used, mut pos, mut skipped, mut same_target_retries) = (0, 0, 0, 0u32);
        let mut earliest_cool: Option<std::time::Instant> = None;
        while used <= model.retries && !order.is_empty() {
            if skipped >= order.len() {
                // Every target is out of rotation: move on to a fallback if there is one, else
                // wait out a short Retry-After.
                match earliest_cool.take() {
                    Some(t)
                        if last_model
                            && t.saturating_duration_since(Instant::now()) <= r.max_retry_after =>
                    {
                        tokio::time::sleep_until(t.into()).await;
                        skipped = 0;
                        continue;
                    }
                    _ => break,
                }
            }
            let slot = pos % order.len();
            pos += 1;
            let target = &model.targets[order[slot]];
            if !supports(call.api, target.provider.kind) {
                skipped += 1;
                continue;
            }
            supported = true;
            let permit = match target.health.check(Instant::now()) {
                Availability::Ready(permit) => permit,
                Availability::CoolingUntil(t) => {
                    earliest_cool = Some(earliest_cool.map_or(t, |e| e.min(t)));
                    skipped += 1;
                    continue;
                }
                Availability::Open => {
                    skipped += 1;
                    continue;
                }
            };
            skipped = 0;
            if tried[slot] {
                tokio::time::sleep(backoff(r.backoff, r.max_backoff, same_target_retries)).await;
                same_target_retries += 1;
            }
            tried[slot] = true;
            used += 1;
            attempted = true;
            model_attempts += 1;
            let op = call_op(call.api);
            let span = call.record().and_then(|rec| {
                rec.attempts += 1;
                let m = &rec.gw.metrics;
                if model_attempts > 1 {
                    m.retries
                        .with_label_values(&[model.metric_name.as_str(), target.label.as_str()])
                        .inc();
                } else if model.name != first_name {
                    m.fallbacks
                        .with_label_values(&[rec.metric_model.as_str(), model.metric_name.as_str()])
                        .inc();
                    rec.fallback = Some(model.name.clone());
                }
                let n = rec.attempts;
                rec.trace.as_ref().map(|t| attempt_span(t, op, target, n))
            });
            let result = attempt(call, &model, target, span.as_ref()).await;
            // A probe that ended without a verdict is given back here (and on cancellation).
            drop(permit);
            if let Some(span) = span {
                if let Err(AttemptError::Retry(f)) = &result {
                    span.fail(&f.to_string());
                }
                span.end();
            }
            match result {
                Ok(resp) => return Ok(resp),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Retry(f @ Failure::Timeout(_)))
                    if !call.stream && !model.resend_on_timeout =>
                {
                    // The request was sent: the provider may be working on it (and billing it).
                    return Err(ProxyError::Exhausted {
                        kind: ErrorKind::Timeout,
                        message: format!(
                            "model `{}`: provider `{}` {f}; not re-sent to another target because it may have been processed (set resend_on_timeout = true on the model to allow it)",
                            model.name, target.provider.name
                        ),
                        retry_after: None,
                    });
                }
                Err(AttemptError::Retry(f)) => {
                    tracing::warn!(
                        target: "pylon::upstream",
                        request_id = call.record.as_ref().map_or("", |r| r.request_id.as_str()),
                        model = %model.name,
                        provider = %target.provider.name,
                        upstream_model = %target.model,
                        error = %f,
                        "attempt failed; trying the next target"
                    );
                    last = Some(f);
                }
            }
        }
    }
    if !supported {
        return Err(ProxyError::Unsupported(format!(
            "model `{}` has no provider that serves {} (legacy completions need an openai or azure provider, embeddings any but anthropic)",
            call.model,
            call.api.route()
        )));
    }
    Err(exhausted(&call.model, attempted, last))
}

fn call_op(api: Api) -> &'static str {
    api.operation()
}

/// A client span for one attempt, named and attributed per the GenAI semantic conventions.
fn attempt_span(
    parent: &pylon_telemetry::SpanHandle,
    op: &'static str,
    target: &Target,
    n: u32,
) -> pylon_telemetry::SpanHandle {
    let system = match target.provider.kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::Azure => "azure.ai.openai",
        ProviderKind::Bedrock => "aws.bedrock",
    };
    parent.child(
        format!("{op} {}", target.model),
        pylon_telemetry::trace::Kind::Client,
        vec![
            Attribute::new("gen_ai.operation.name", op),
            Attribute::new("gen_ai.system", system),
            Attribute::new("gen_ai.provider.name", system),
            Attribute::new("gen_ai.request.model", target.model.clone()),
            Attribute::new("server.address", target.provider.base.clone()),
            Attribute::new("pylon.provider", target.provider.name.clone()),
            Attribute::new("pylon.attempt", i64::from(n)),
        ],
    )
}

/// Full-jitter exponential backoff.
fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let cap = base.saturating_mul(1u32 << n.min(16)).min(max);
    cap.mul_f64(fastrand::f64())
}

fn exhausted(model: &str, attempted: bool, last: Option<Failure>) -> ProxyError {
    let Some(last) = last.filter(|_| attempted) else {
        return ProxyError::Exhausted {
            kind: ErrorKind::Unavailable,
            message: format!("every target of model `{model}` is unavailable (circuit open or cooling down); retry later"),
            retry_after: Some(Duration::from_secs(1)),
        };
    };
    let (kind, retry_after) = match &last {
        Failure::Timeout(_) => (ErrorKind::Timeout, None),
        Failure::Status {
            status,
            retry_after,
            ..
        } if *status == StatusCode::TOO_MANY_REQUESTS => (ErrorKind::RateLimited, *retry_after),
        Failure::Status {
            status,
            retry_after,
            ..
        } if status.as_u16() == 503 || status.as_u16() == 529 => {
            (ErrorKind::Unavailable, *retry_after)
        }
        _ => (ErrorKind::Upstream, None),
    };
    ProxyError::Exhausted {
        kind,
        message: format!("all targets of model `{model}` failed; last: {last}"),
        retry_after,
    }
}

/// The longest wait a provider's hint can impose; beyond it the hint is not believed.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A provider's wait hint: `retry-after-ms`, else `Retry-After` as seconds (fractions allowed)
/// or an HTTP date. Clamped, so no value can overflow a timer or an instant.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let secs = |v: f64| {
        (v.is_finite() && v >= 0.0)
            .then(|| Duration::from_secs_f64(v.min(MAX_RETRY_AFTER.as_secs_f64())))
    };
    if let Some(d) = get("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| secs(ms / 1000.0))
    {
        return Some(d);
    }
    let v = get("retry-after")?;
    if let Ok(n) = v.parse::<f64>() {
        return secs(n);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429)
}

/// The upstream path and body for a target.
fn encode(call: &Call, m: &Model, target: &Target) -> Result<(String, Bytes), ProxyError> {
    let model = &target.model;
    let opts = pylon_providers::Options {
        drop_unsupported: m.drop_unsupported,
        max_output_tokens: target.max_output_tokens,
    };
    let span = call.model_span.clone();
    // Azure speaks OpenAI's wire; only its URL and credential differ (snapshot, credential).
    let wire = match target.provider.kind {
        ProviderKind::Azure => ProviderKind::Openai,
        kind => kind,
    };
    Ok(match (call.api, wire) {
        (Api::Chat, ProviderKind::Openai) => {
            let body = openai::with_model(&call.body, span, model);
            // Usage is asked for on every stream, so it is billed from the provider's count;
            // the extra chunk is taken out again for clients that did not ask (respond.rs).
            let body = if call.stream && !call.include_usage {
                openai::with_stream_usage(&body).unwrap_or(body)
            } else {
                body
            };
            ("/chat/completions".into(), body)
        }
        (Api::Completions, _) => {
            let body = openai::with_model(&call.body, span, model);
            let body = if call.stream && !call.include_usage {
                openai::with_stream_usage(&body).unwrap_or(body)
            } else {
                body
            };
            ("/completions".into(), body)
        }
        (Api::Embeddings, ProviderKind::Openai) => (
            "/embeddings".into(),
            openai::with_model(&call.body, span, model),
        ),
        (Api::Embeddings, kind) => {
            let req: serde_json::Value = serde_json::from_slice(&call.body)
                .map_err(|e| ProxyError::Invalid(TranslateError::Unsupported(e.to_string())))?;
            let (path, body) = match kind {
                ProviderKind::Gemini => embeddings::to_gemini(&req, model)?,
                _ => embeddings::to_bedrock(&req, model)?,
            };
            (path, to_json(&body)?)
        }
        (Api::Messages, ProviderKind::Anthropic) => (
            "/v1/messages".into(),
            openai::with_model(&call.body, span, model),
        ),
        (Api::Messages, ProviderKind::Openai) => {
            let mut req = call.canonical()?.clone();
            req.model.clone_from(model);
            ("/chat/completions".into(), to_json(&req)?)
        }
        (Api::Chat, ProviderKind::Anthropic) => (
            "/v1/messages".into(),
            to_json(&anthropic::to_messages(call.canonical()?, model, opts)?)?,
        ),
        (Api::Chat | Api::Messages, ProviderKind::Gemini) => (
            gemini::path(model, call.stream),
            to_json(&gemini::to_generate(call.canonical()?, opts)?)?,
        ),
        (Api::Chat | Api::Messages, _) => (
            bedrock::path(model, call.stream),
            to_json(&bedrock::to_converse(call.canonical()?, model, opts)?)?,
        ),
        (Api::Responses, kind) => {
            let Some(r) = call.responses.as_deref() else {
                return Err(ProxyError::Unsupported(
                    "a Responses call without its request".into(),
                ));
            };
            let native = target.provider.responses_api;
            match kind {
                ProviderKind::Openai if native && r.expanded => (
                    "/responses".into(),
                    to_json(&responses::with_input(&r.request, r.items.clone(), model))?,
                ),
                ProviderKind::Openai if native => (
                    "/responses".into(),
                    openai::with_model(&call.body, span, model),
                ),
                // Only the provider that made an id Pylon does not hold can continue it.
                _ if r.unknown_previous.is_some() => {
                    return Err(ProxyError::NoResponse(crate::error::quote(
                        r.unknown_previous.as_deref().unwrap_or_default(),
                    )))
                }
                // An OpenAI-compatible server without the Responses API gets chat.
                ProviderKind::Openai => {
                    let mut req = call.canonical()?.clone();
                    req.model.clone_from(model);
                    ("/chat/completions".into(), to_json(&req)?)
                }
                ProviderKind::Anthropic => (
                    "/v1/messages".into(),
                    to_json(&anthropic::to_messages(call.canonical()?, model, opts)?)?,
                ),
                ProviderKind::Gemini => (
                    gemini::path(model, call.stream),
                    to_json(&gemini::to_generate(call.canonical()?, opts)?)?,
                ),
                _ => (
                    bedrock::path(model, call.stream),
                    to_json(&bedrock::to_converse(call.canonical()?, model, opts)?)?,
                ),
            }
        }
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Bytes, ProxyError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ProxyError::Unsupported(format!("could not encode the upstream request: {e}")))
}

/// One attempt against one target.
async fn attempt(
    call: &mut Call,
    model: &Model,
    target: &Target,
    span: Option<&pylon_telemetry::SpanHandle>,
) -> Result<Response, AttemptError> {
    let started = Instant::now();
    let result = attempt_inner(call, model, target, span, started).await;
    let took = started.elapsed();
    let stream = call.stream;
    if let Some(rec) = call.record() {
        // A committed stream's time is counted when it ends (see respond::Relay).
        if result.is_err() || !stream {
            rec.upstream += took;
            rec.gw
                .metrics
                .upstream_duration
                .with_label_values(&[
                    target.provider.name.as_str(),
                    target.label.as_str(),
                    if result.is_ok() { "ok" } else { "error" },
                ])
                .observe(took.as_secs_f64());
        }
    }
    match result {
        Ok(mut resp) => {
            if let Some(rec) = call.record.as_ref() {
                respond::overhead_header(&mut resp, rec);
            }
            Ok(resp)
        }
        Err(e) => Err(e),
    }
}

async fn attempt_inner(
    call: &mut Call,
    model: &Model,
    target: &Target,
    span: Option<&pylon_telemetry::SpanHandle>,
    started: Instant,
) -> Result<Response, AttemptError> {
    let p = &target.provider;
    let (path, body) = encode(call, model, target)?;
    let accept = match (call.stream, p.kind) {
        (true, ProviderKind::Bedrock) => "application/vnd.amazon.eventstream",
        (true, _) => "text/event-stream",
        (false, _) => "application/json",
    };
    let uri = p.uri(&path, &target.model).map_err(|e| {
        ProxyError::Unsupported(format!("could not build the upstream request: {e}"))
    })?;
    // Built in place rather than through `Request::builder`, whose every `header` call converts
    // the name and moves the whole builder; room for the credential and the `Host` header the
    // pool adds, so the map never grows.
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    *h = http::HeaderMap::with_capacity(8 + call.forward.len());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::ACCEPT, HeaderValue::from_static(accept));
    let traceparent = span.and_then(pylon_telemetry::SpanHandle::traceparent);
    for (name, value) in &call.forward {
        // Our attempt span becomes the provider's parent when tracing; headers beyond the
        // built-in ones go only to providers configured to receive them.
        let allowed = crate::context::FORWARDED.contains(name) || p.forward.contains(name);
        if allowed && (traceparent.is_none() || name != TRACEPARENT) {
            h.append(name, value.clone());
        }
    }
    if let Some(tp) = traceparent {
        h.insert(TRACEPARENT, tp);
    }
    if p.kind == ProviderKind::Anthropic && !h.contains_key(ANTHROPIC_VERSION) {
        h.insert(
            ANTHROPIC_VERSION,
            HeaderValue::from_static(anthropic::API_VERSION),
        );
    }
    // The provider's credential, never the client's (signed over the body for Bedrock).
    if let Err(e) = crate::credential::apply(p, &mut req, &body) {
        return Err(AttemptError::Retry(Failure::NoCredential(e)));
    }

    // A stream must show its first event within `first_byte`; a non-stream answer's headers
    // come only when generation is done, so it is bounded by the response timeout instead.
    let (head_wait, whole) = if call.stream {
        let total = p.timeouts.total.unwrap_or(Duration::from_secs(600));
        (p.timeouts.first_byte, total)
    } else {
        let whole = model.response_timeout.unwrap_or(p.timeouts.response);
        (whole, whole)
    };
    let deadline = started
        .checked_add(whole)
        .unwrap_or(started + Duration::from_secs(86_400));
    let in_flight = target.health.enter();
    let resp = match tokio::time::timeout(head_wait, p.client.send(req)).await {
        Err(_) => return Err(fail(target, Failure::Timeout("response headers"))),
        Ok(Err(e)) => return Err(fail(target, Failure::Connect(error_chain(&*e)))),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    if matches!(status.as_u16(), 401 | 403) {
        return Err(fail(
            target,
            Failure::Credential {
                provider: p.name.clone(),
                status,
            },
        ));
    }
    if !status.is_success() {
        let retry_after = retry_after(resp.headers(), SystemTime::now());
        let body = match tokio::time::timeout(
            p.timeouts.idle,
            Limited::new(resp.into_body(), 64 * 1024).collect(),
        )
        .await
        {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::new(),
        };
        let message = openai::error_message(&body)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        if retryable(status) {
            if let Some(until) = retry_after.and_then(|ra| Instant::now().checked_add(ra)) {
                target.health.cool_down(until);
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                target.health.neutral();
            } else {
                target.health.failure(Instant::now());
            }
            return Err(AttemptError::Retry(Failure::Status {
                status,
                retry_after,
                message,
            }));
        }
        target.health.neutral();
        return Err(AttemptError::Fatal(ProxyError::Rejected {
            status,
            provider: p.name.clone(),
            message,
            passthrough: passthrough(call.api, p).then(|| match p.kind {
                ProviderKind::Azure => openai::azure_error(&body).unwrap_or(body),
                _ => body,
            }),
        }));
    }
    let ctx = respond::Ctx {
        started,
        deadline,
        in_flight,
        span,
    };
    // Boxed: inline, the relay's state (kilobytes) would be part of every attempt's future and
    // copied with it; a box is one allocation per answer.
    let result = if call.stream {
        Box::pin(respond::stream(call, target, resp, ctx)).await
    } else {
        Box::pin(respond::complete(call, target, resp, ctx)).await
    };
    match result {
        Ok(resp) => Ok(resp),
        Err(f) => Err(fail(target, f)),
    }
}

fn fail(target: &Target, f: Failure) -> AttemptError {
    target.health.failure(Instant::now());
    AttemptError::Retry(f)
}

/// The error and its sources, e.g. "client error (Connect): tcp connect error: Connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(name: &'static str, v: &str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        retry_after(
            &h,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
        )
    }

    #[test]
    fn retry_after_takes_any_value_without_panicking() {
        assert_eq!(hint("retry-after", "2"), Some(Duration::from_secs(2)));
        assert_eq!(
            hint("retry-after", " 0.5 "),
            Some(Duration::from_millis(500))
        );
        assert_eq!(hint("retry-after", "1e300"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            hint("retry-after", "99999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(hint("retry-after", "-3"), None);
        assert_eq!(hint("retry-after", "NaN"), None);
        assert_eq!(hint("retry-after", "inf"), None);
        assert_eq!(hint("retry-after", "soon"), None);
        assert_eq!(
            hint("retry-after-ms", "1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(hint("retry-after-ms", "1e308"), Some(MAX_RETRY_AFTER));
        // 2001-09-09T01:46:40Z is the injected now; ten seconds later:
        assert_eq!(
            hint("retry-after", "Sun, 09 Sep 2001 01:46:50 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            hint("retry-after", "Sun, 09 Sep 1990 01:46:50 GMT"),
            Some(Duration::ZERO)
        );
    }
}
