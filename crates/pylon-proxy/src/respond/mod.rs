//! Respond: turn a provider's successful answer into the client's response, whole or streamed.
//!
//! Streams are relayed event by event as they arrive; the client's reads pace the upstream reads
//! (backpressure), and dropping the client's body drops the upstream connection (cancellation).

use std::time::{Duration, Instant};

use crate::client::Body as UpstreamBody;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use pylon_config::ProviderKind;
use pylon_providers::assemble::Assembler;
use pylon_providers::stream::{Decoder, Encoder, Framer};
use pylon_providers::{anthropic, bedrock, embeddings, gemini, openai, responses, sse};
use pylon_types::openai::ChatResponse;

use pylon_telemetry::SpanHandle;

use crate::breaker::InFlight;
use crate::context::passthrough;
use crate::context::{Api, Call};
use crate::conversation::Keep;
use crate::error::Failure;
use crate::log::Record;
use crate::snapshot::Target;

mod relay;

use relay::{pump, Observed, Relay, RelayError, RELAY_BUFFER};

/// Timing of one attempt, and its in-flight registration.
pub(crate) struct Ctx<'a> {
    pub started: Instant,
    pub deadline: Instant,
    pub in_flight: InFlight,
    /// The attempt's span, when tracing.
    pub span: Option<&'a SpanHandle>,
}

/// `x-pylon-overhead-ms`: Pylon's own time so far (elapsed minus time waiting on providers).
pub(crate) fn overhead_header(resp: &mut Response, rec: &Record) {
    if let Ok(v) = HeaderValue::from_str(&millis(rec.overhead())) {
        resp.headers_mut().insert(OVERHEAD, v);
    }
}

/// `d` in milliseconds with three decimals (`12.345`), rounded to the microsecond. Integer
/// printing: float formatting with a precision cost more than the rest of the response's
/// headers together.
fn millis(d: std::time::Duration) -> String {
    let micros = (d.as_nanos() + 500) / 1_000;
    let mut out = String::with_capacity(16);
    out.push_str(itoa::Buffer::new().format(micros / 1_000));
    out.push('.');
    let frac = (micros % 1_000) as u16;
    for digit in [frac / 100, frac / 10 % 10, frac % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
    out
}

/// Pylon's own time on a request, in milliseconds.
const OVERHEAD: HeaderName = HeaderName::from_static("x-pylon-overhead-ms");

/// A non-stream answer: read whole (bounded by the idle and total timeouts), then translated.
pub(crate) async fn complete(
    call: &mut Call,
    target: &Target,
    resp: hyper::Response<UpstreamBody>,
    ctx: Ctx<'_>,
) -> Result<Response, Failure> {
    let p = &target.provider;
    let upstream = provider_headers(resp.headers(), call.provider_headers);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut ttfb = None;
    let declared = resp_len_hint(&body);
    if declared > MAX_RESPONSE_BYTES {
        return Err(too_large(call));
    }
    loop {
        let wait = p
            .timeouts
            .idle
            .min(ctx.deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => return Err(Failure::Timeout("the response body")),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(Failure::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => {
                ttfb.get_or_insert_with(|| ctx.started.elapsed());
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > MAX_RESPONSE_BYTES {
                        return Err(too_large(call));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    let ttfb = ttfb.unwrap_or_else(|| ctx.started.elapsed());
    let keep = Keep::of(call);
    let (out, usage) = if passthrough(call.api, p) {
        let usage = match p.kind {
            ProviderKind::Anthropic => anthropic::usage_of(&buf),
            _ if call.api == Api::Responses => responses::usage_of(&buf),
            _ => openai::usage_of(&buf),
        };
        // Parsed only for a Responses call that is stored: a tuple pattern would parse every
        // passthrough answer into a tree and throw it away.
        if let Some(k) = keep {
            if let Ok(v) = serde_json::from_slice(&buf) {
                k.put(v);
            }
        }
        (Bytes::from(buf), usage)
    } else if call.api == Api::Embeddings {
        let out = embeddings_from(p.kind, &buf, &call.body, &target.model)?;
        let usage = openai::usage_of(&out);
        (out, usage)
    } else {
        let chat = decode_response(p.kind, &buf, &target.model)?;
        let usage = chat.usage;
        let encoded = match (call.api, call.responses.as_deref()) {
            (Api::Messages, _) => serde_json::to_vec(&anthropic::response_from_openai(chat)),
            (Api::Responses, Some(r)) => {
                let v = responses::response_from_chat(&chat, &r.meta());
                let encoded = serde_json::to_vec(&v);
                if let Some(k) = keep {
                    k.put(v);
                }
                encoded
            }
            _ => serde_json::to_vec(&chat),
        };
        (
            Bytes::from(encoded.map_err(|e| Failure::Broken(e.to_string()))?),
            usage,
        )
    };
    target.health.success(ttfb);
    if let Some(rec) = call.record() {
        served(rec, target, ttfb);
        rec.usage = usage;
        if rec.prompt.is_some() {
            rec.completion = Some(out.clone());
        }
    }
    if let Some(w) = call.cache.take() {
        w.finish(
            out.clone(),
            usage.unwrap_or_default(),
            &p.name,
            &target.model,
        )
        .await;
    }
    drop(ctx.in_flight);
    let mut resp = response(target, "application/json", Body::from(out));
    resp.headers_mut().extend(upstream);
    Ok(resp)
}

/// The largest non-stream answer read into memory (a provider sending more is broken).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The body's declared length, if it says.
fn resp_len_hint(body: &UpstreamBody) -> usize {
    use http_body::Body as _;
    body.size_hint()
        .exact()
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn too_large(call: &Call) -> Failure {
    if let Some(rec) = call.record.as_ref() {
        rec.gw
            .metrics
            .bounded_drops
            .with_label_values(&["response_body"])
            .inc();
    }
    Failure::Broken(format!(
        "the answer is larger than {} MiB",
        MAX_RESPONSE_BYTES / (1024 * 1024)
    ))
}

/// A Gemini or Bedrock embedding answer in OpenAI's shape.
fn embeddings_from(
    kind: ProviderKind,
    buf: &[u8],
    request: &[u8],
    model: &str,
) -> Result<Bytes, Failure> {
    let broken = |e: String| Failure::Broken(format!("malformed {kind:?} embedding answer: {e}"));
    let resp: serde_json::Value = serde_json::from_slice(buf).map_err(|e| broken(e.to_string()))?;
    let req: serde_json::Value =
        serde_json::from_slice(request).map_err(|e| broken(e.to_string()))?;
    let out = match kind {
        ProviderKind::Gemini => embeddings::from_gemini(&resp, &req, model),
        _ => embeddings::from_bedrock(&resp, &req, model),
    }
    .map_err(|e| broken(e.to_string()))?;
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| broken(e.to_string()))
}

fn decode_response(kind: ProviderKind, buf: &[u8], model: &str) -> Result<ChatResponse, Failure> {
    let malformed =
        |e: serde_json::Error| Failure::Broken(format!("malformed {kind:?} response: {e}"));
    Ok(match kind {
        ProviderKind::Openai | ProviderKind::Azure => {
            serde_json::from_slice(buf).map_err(malformed)?
        }
        ProviderKind::Bedrock => {
            bedrock::response_to_openai(&serde_json::from_slice(buf).map_err(malformed)?, model)
        }
        ProviderKind::Anthropic => {
            anthropic::response_to_openai(serde_json::from_slice(buf).map_err(malformed)?)
        }
        ProviderKind::Gemini => {
            gemini::response_to_openai(serde_json::from_slice(buf).map_err(malformed)?, model)
        }
    })
}

fn served(rec: &mut Record, target: &Target, ttfb: Duration) {
    rec.status = 200;
    rec.outcome = "ok";
    rec.provider = Some(target.provider.name.clone());
    rec.served_model = Some(target.model.clone());
    rec.ttfb = Some(ttfb);
}

/// The provider's own request id, as `x-pylon-upstream-request-id`.
const UPSTREAM_ID: HeaderName = HeaderName::from_static("x-pylon-upstream-request-id");

/// Anthropic's request id.
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
/// OpenAI's time on the request.
const PROCESSING_MS: HeaderName = HeaderName::from_static("openai-processing-ms");

/// Provider response headers clients use: its request id (as `x-pylon-upstream-request-id`:
/// `x-request-id` is Pylon's own) and `openai-processing-ms` always; its rate-limit headers when
/// the client sent `x-pylon-provider-headers` — Anthropic's under their own names, OpenAI's
/// `x-ratelimit-*` prefixed `x-pylon-upstream-` (unprefixed, they are the key's limits in Pylon).
fn provider_headers(h: &HeaderMap, limits: bool) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(v) = h
        .get(crate::server::X_REQUEST_ID)
        .or_else(|| h.get(REQUEST_ID))
    {
        out.push((UPSTREAM_ID, v.clone()));
    }
    if let Some(v) = h.get(PROCESSING_MS) {
        out.push((PROCESSING_MS, v.clone()));
    }
    if !limits {
        return out;
    }
    for (name, v) in h {
        let n = name.as_str();
        if n.starts_with("anthropic-ratelimit-") {
            out.push((name.clone(), v.clone()));
        } else if n.starts_with("x-ratelimit-") {
            if let Ok(prefixed) = HeaderName::try_from(format!("x-pylon-upstream-{n}")) {
                out.push((prefixed, v.clone()));
            }
        }
    }
    out
}

/// The provider that answered.
const SERVED_BY: HeaderName = HeaderName::from_static("x-pylon-provider");
/// The provider's model that answered.
const SERVED_MODEL: HeaderName = HeaderName::from_static("x-pylon-served-model");

fn response(target: &Target, content_type: &'static str, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    // Room for the headers added on the way out (request id, limits, overhead): growing the map
    // rehashes it, 2 % of the gateway's CPU.
    *resp.headers_mut() = http::HeaderMap::with_capacity(16);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(v) = &target.served.provider {
        h.insert(SERVED_BY, v.clone());
    }
    if let Some(v) = &target.served.model {
        h.insert(SERVED_MODEL, v.clone());
    }
    resp
}

/// A stream: committed to the client only once the first event arrived, so a provider that fails
/// before that can still be replaced by the next target.
pub(crate) async fn stream(
    call: &mut Call,
    target: &Target,
    resp: hyper::Response<UpstreamBody>,
    ctx: Ctx<'_>,
) -> Result<Response, Failure> {
    let p = &target.provider;
    let upstream = provider_headers(resp.headers(), call.provider_headers);
    let codec = (!passthrough(call.api, p)).then(|| {
        let decoder = match p.kind {
            ProviderKind::Openai | ProviderKind::Azure => Decoder::OpenAi,
            ProviderKind::Bedrock => Decoder::Bedrock(bedrock::StreamDecoder::new(&target.model)),
            ProviderKind::Anthropic => Decoder::Anthropic(anthropic::StreamDecoder::default()),
            ProviderKind::Gemini => Decoder::Gemini(gemini::StreamDecoder::new(&target.model)),
        };
        let encoder = match (call.api, call.responses.as_deref()) {
            (Api::Messages, _) => Encoder::Anthropic(anthropic::StreamEncoder::default()),
            (Api::Responses, Some(r)) => {
                Encoder::Responses(Box::new(responses::StreamEncoder::new(r.meta())))
            }
            _ => Encoder::OpenAi {
                include_usage: call.include_usage,
            },
        };
        (decoder, encoder)
    });
    let mut relay = Relay {
        body: resp.into_body(),
        framer: match p.kind {
            ProviderKind::Bedrock => Framer::EventStream(Default::default()),
            _ => Framer::Sse(sse::Framer::default()),
        },
        codec,
        wire: p.kind,
        idle: p.timeouts.idle,
        deadline: ctx.deadline,
        usage: None,
        done: false,
        failed: false,
        events: 0,
        scratch: Vec::new(),
        dialect_api: call.api,
        record: None,
        _in_flight: ctx.in_flight,
        observed: None,
        // The stream is assembled for the cache as it passes; handed back if this attempt fails.
        cache: call.cache.take().map(|w| {
            (
                w,
                Assembler::default(),
                p.name.clone(),
                target.model.clone(),
            )
        }),
        live: None,
        keep: Keep::of(call),
        strip_usage: matches!(call.api, Api::Chat | Api::Completions)
            && p.kind == ProviderKind::Openai
            && !call.include_usage,
    };
    let first_wait = p.timeouts.first_byte.saturating_sub(ctx.started.elapsed());
    let first = match relay.next(first_wait).await {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(Failure::Broken("stream ended before any event".into())),
        Err(RelayError::Timeout(_)) => Err(Failure::Timeout("the first stream event")),
        Err(e) => Err(Failure::Broken(e.to_string())),
    };
    let first = match first {
        Ok(b) => b,
        Err(f) => {
            call.cache = relay.cache.take().map(|c| c.0);
            return Err(f);
        }
    };
    let ttfb = ctx.started.elapsed();
    target.health.success(ttfb);
    // Committed: followers waiting on this call may now follow the stream live.
    relay.live = relay
        .cache
        .as_ref()
        .and_then(|(w, ..)| w.flight.as_ref())
        .map(|f| f.live());
    if let Some(live) = &relay.live {
        live.start(call.include_usage);
        live.push(first.clone());
    }
    let mut overhead = None;
    if let Some(mut rec) = call.record.take() {
        served(&mut rec, target, ttfb);
        let m = &rec.gw.metrics;
        let labels = [rec.metric_model.as_str(), p.name.as_str()];
        m.time_to_first_token
            .with_label_values(&labels)
            .observe(ttfb.as_secs_f64());
        m.open_streams.inc();
        relay.observed = Some(Observed {
            gap: m.inter_token_latency.with_label_values(&labels),
            last_event: Instant::now(),
            attempt_started: ctx.started,
            upstream_before: rec.upstream,
            target: target.label.clone(),
            span: ctx.span.map(|s| {
                s.child(
                    "stream".to_owned(),
                    pylon_telemetry::trace::Kind::Internal,
                    Vec::new(),
                )
            }),
        });
        overhead = Some(
            rec.started
                .elapsed()
                .saturating_sub(rec.upstream + ttfb)
                .as_secs_f64()
                * 1000.0,
        );
        relay.record = Some(rec);
    }

    // The relay runs as its own task and hands events over a small channel: its deadlines hold
    // whatever the client does, and a client that stops reading is cut off after `idle`
    // instead of holding the provider connection, its slots and its followers forever.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(RELAY_BUFFER);
    tokio::spawn(pump(relay, tx));
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    // Fused: polled again after its end (by a layer), it says `None` instead of panicking.
    let rest = futures_util::StreamExt::fuse(rest);
    let body =
        futures_util::StreamExt::chain(futures_util::stream::once(async move { Ok(first) }), rest);
    let mut resp = response(target, "text/event-stream", Body::from_stream(body));
    resp.headers_mut().extend(upstream);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(v) = overhead.and_then(|ms| HeaderValue::from_str(&format!("{ms:.3}")).ok()) {
        resp.headers_mut().insert("x-pylon-overhead-ms", v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn overhead_is_milliseconds_with_three_decimals() {
        let ms = |nanos: u64| super::millis(Duration::from_nanos(nanos));
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(499), "0.000");
        assert_eq!(ms(500), "0.001");
        assert_eq!(ms(12_345_678), "12.346");
        assert_eq!(ms(7_050_000), "7.050");
        assert_eq!(ms(1_999_999_600), "2000.000");
    }
}
