//! Respond: turn a provider's successful answer into the client's response, whole or streamed.
//!
//! Streams are relayed event by event as they arrive; the client's reads pace the upstream reads
//! (backpressure), and dropping the client's body drops the upstream connection (cancellation).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pylon_config::ProviderKind;
use pylon_providers::assemble::Assembler;
use pylon_providers::stream::{Decoder, Encoder, Framer};
use pylon_providers::{anthropic, bedrock, embeddings, gemini, openai, responses, sse};
use pylon_types::anthropic::StreamEvent;
use pylon_types::openai::{ChatResponse, Chunk, Usage};
use pylon_types::{ApiError, ErrorKind};

use pylon_telemetry::trace::Attribute;
use pylon_telemetry::SpanHandle;

use crate::breaker::InFlight;
use crate::context::passthrough;
use crate::context::{Api, Call};
use crate::conversation::Keep;
use crate::error::Failure;
use crate::log::Record;
use crate::snapshot::Target;

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
    use std::io::Write as _;
    let ms = rec.overhead().as_secs_f64() * 1000.0;
    // Formatted on the stack: this runs for every answer.
    let mut buf = [0u8; 24];
    let mut w = &mut buf[..];
    if write!(w, "{ms:.3}").is_ok() {
        let n = 24 - w.len();
        if let Ok(v) = HeaderValue::from_bytes(&buf[..n]) {
            resp.headers_mut().insert(OVERHEAD, v);
        }
    }
}

/// Pylon's own time on a request, in milliseconds.
const OVERHEAD: HeaderName = HeaderName::from_static("x-pylon-overhead-ms");

/// A non-stream answer: read whole (bounded by the idle and total timeouts), then translated.
pub(crate) async fn complete(
    call: &mut Call,
    target: &Target,
    resp: hyper::Response<Incoming>,
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
fn resp_len_hint(body: &Incoming) -> usize {
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

/// Provider response headers clients use: its request id (as `x-pylon-upstream-request-id`:
/// `x-request-id` is Pylon's own) and `openai-processing-ms` always; its rate-limit headers when
/// the client sent `x-pylon-provider-headers` — Anthropic's under their own names, OpenAI's
/// `x-ratelimit-*` prefixed `x-pylon-upstream-` (unprefixed, they are the key's limits in Pylon).
fn provider_headers(h: &HeaderMap, limits: bool) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(v) = h.get("x-request-id").or_else(|| h.get("request-id")) {
        out.push((UPSTREAM_ID, v.clone()));
    }
    if let Some(v) = h.get("openai-processing-ms") {
        out.push((HeaderName::from_static("openai-processing-ms"), v.clone()));
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
    resp: hyper::Response<Incoming>,
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

/// Events buffered between the relay and a client's connection.
const RELAY_BUFFER: usize = 8;

/// Drives a committed stream to its end, handing each piece to the client's connection.
async fn pump(mut relay: Relay, tx: tokio::sync::mpsc::Sender<Bytes>) {
    loop {
        let idle = relay.idle;
        let (piece, last) = match relay.next(idle).await {
            Ok(Some(b)) => (b, false),
            Ok(None) => {
                relay.free_slots().await;
                return;
            }
            Err(e) => {
                let event = relay.fail(e);
                relay.free_slots().await;
                (event, true)
            }
        };
        let wait = relay
            .idle
            .min(relay.deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, tx.send(piece)).await {
            Ok(Ok(())) if !last => {}
            Ok(Ok(())) => return,
            // The client went away: dropping the relay cancels the upstream call.
            Ok(Err(_)) => return,
            Err(_) => {
                relay.stalled();
                return;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("the provider sent nothing for {0}")]
    Timeout(&'static str),
    #[error("the provider connection broke: {0}")]
    Broken(String),
    #[error("{0}")]
    Provider(#[from] pylon_providers::TranslateError),
}

/// Moves whole SSE events from the provider to the client, translating when dialects differ.
struct Relay {
    body: Incoming,
    framer: Framer,
    codec: Option<(Decoder, Encoder)>,
    wire: ProviderKind,
    idle: Duration,
    deadline: Instant,
    usage: Option<Usage>,
    done: bool,
    failed: bool,
    events: u64,
    scratch: Vec<Chunk>,
    dialect_api: Api,
    record: Option<Record>,
    /// The cache write, the answer assembled so far, and who is answering.
    cache: Option<(crate::cache::Write, Assembler, String, String)>,
    /// Coalesced followers of this stream read what it relays from here.
    live: Option<std::sync::Arc<crate::cache::Live>>,
    _in_flight: InFlight,
    /// Stream timing for metrics and the stream span, once committed.
    observed: Option<Observed>,
    /// Usage was asked for upstream on the client's behalf: its chunk is not passed on.
    strip_usage: bool,
    /// Where a Responses API answer is kept once the stream has finished.
    keep: Option<Keep>,
}

/// What a committed stream reports as it goes and when it ends.
struct Observed {
    /// `pylon_inter_token_latency_seconds` for this model and provider.
    gap: pylon_telemetry::prometheus::Histogram,
    last_event: Instant,
    attempt_started: Instant,
    /// Upstream time of earlier attempts.
    upstream_before: Duration,
    target: String,
    span: Option<SpanHandle>,
}

impl Relay {
    /// The next bytes for the client; `None` at the end.
    async fn next(&mut self, wait: Duration) -> Result<Option<Bytes>, RelayError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            let (wait, phase) = if remaining < wait {
                (remaining, "the total timeout")
            } else {
                (wait, "the idle timeout")
            };
            let frame = match tokio::time::timeout(wait, self.body.frame()).await {
                Err(_) => return Err(RelayError::Timeout(phase)),
                Ok(Some(Err(e))) => return Err(RelayError::Broken(e.to_string())),
                Ok(None) => {
                    self.done = true;
                    let mut out = Vec::new();
                    if let Some((_, enc)) = &mut self.codec {
                        enc.finish(&mut out);
                        if let (Encoder::Responses(e), Some(k)) = (&*enc, self.keep.take()) {
                            if let Some(r) = e.response() {
                                k.put(r.clone());
                            }
                        }
                    }
                    if let (Some(live), false) = (&self.live, out.is_empty()) {
                        live.push(Bytes::from(out.clone()));
                    }
                    self.store().await;
                    return Ok((!out.is_empty()).then(|| Bytes::from(out)));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let events = match self.framer.push(data) {
                Ok(Some(events)) => events,
                Ok(None) => continue,
                Err(e) => {
                    if let Some(rec) = self.record.as_ref() {
                        rec.gw
                            .metrics
                            .bounded_drops
                            .with_label_values(&["sse_event"])
                            .inc();
                    }
                    return Err(RelayError::Broken(e.to_string()));
                }
            };
            if let Some(out) = self.process(events)? {
                if let Some(live) = &self.live {
                    live.push(out.clone());
                }
                let last = self.done || memchr::memmem::find(&out, b"[DONE]").is_some();
                if last && self.cache.is_some() {
                    self.store().await;
                }
                if let Some(o) = &mut self.observed {
                    let now = Instant::now();
                    o.gap
                        .observe(now.duration_since(o.last_event).as_secs_f64());
                    o.last_event = now;
                }
                return Ok(Some(out));
            }
        }
    }

    fn process(&mut self, events: Bytes) -> Result<Option<Bytes>, RelayError> {
        // Roughly one token per content event: the output estimate if the stream is cut short.
        self.events += memchr::memmem::find_iter(&events, b"data:").count() as u64;
        let Some((decoder, encoder)) = &mut self.codec else {
            self.scan_usage(&events);
            if let Some((_, asm, _, _)) = &mut self.cache {
                for raw in sse::events(&events) {
                    if let Ok(c) = serde_json::from_str::<Chunk>(&sse::parse(raw).data) {
                        asm.push(&c);
                    }
                }
            }
            if self.strip_usage && memchr::memmem::find(&events, b"\"usage\":{").is_some() {
                let mut kept = Vec::with_capacity(events.len());
                for raw in sse::events(&events) {
                    if !openai::is_usage_chunk(sse::parse(raw).data.as_bytes()) {
                        kept.extend_from_slice(raw);
                    }
                }
                return Ok((!kept.is_empty()).then(|| Bytes::from(kept)));
            }
            return Ok(Some(events));
        };
        let mut out = Vec::new();
        for raw in sse::events(&events) {
            let ev = sse::parse(raw);
            self.scratch.clear();
            let finished = decoder.decode(&ev, &mut self.scratch)?;
            for chunk in &self.scratch {
                if let Some(u) = chunk.usage {
                    self.usage = Some(u);
                }
                if let Some((_, asm, _, _)) = &mut self.cache {
                    asm.push(chunk);
                }
                encoder.encode(chunk, &mut out);
            }
            if finished {
                encoder.finish(&mut out);
                self.done = true;
                break;
            }
        }
        if let (true, Encoder::Responses(e)) = (self.done, &*encoder) {
            if let (Some(k), Some(r)) = (self.keep.take(), e.response()) {
                k.put(r.clone());
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }

    /// Stores the assembled stream in the cache before its last bytes reach the client, so an
    /// identical request right after is a hit. Only a stream that finished is stored.
    async fn store(&mut self) {
        let Some((w, asm, provider, served)) = self.cache.take() else {
            return;
        };
        if let Some(mut whole) = asm.finish() {
            if whole.usage.is_none() {
                whole.usage = self.usage;
            }
            let usage = whole.usage.unwrap_or_default();
            if let Ok(body) = serde_json::to_vec(&whole) {
                w.finish(Bytes::from(body), usage, &provider, &served).await;
            }
        }
    }

    /// Picks usage out of passed-through events without re-encoding them.
    fn scan_usage(&mut self, events: &[u8]) {
        if memchr::memmem::find(events, b"usage").is_none() {
            return;
        }
        for raw in sse::events(events) {
            let ev = sse::parse(raw);
            if self.dialect_api == Api::Responses {
                self.scan_responses(&ev.data);
                continue;
            }
            match self.wire {
                ProviderKind::Anthropic => match serde_json::from_str::<StreamEvent>(&ev.data) {
                    Ok(StreamEvent::MessageStart { message }) => {
                        self.usage = Some(message.usage.to_openai());
                    }
                    Ok(StreamEvent::MessageDelta { usage, .. }) => {
                        // The delta's input counts, when present, repeat or refine the start's.
                        let start = self.usage.unwrap_or_default();
                        let delta = usage.to_openai();
                        self.usage = Some(
                            Usage::new(
                                start.prompt_tokens.max(delta.prompt_tokens),
                                usage.output_tokens,
                            )
                            .with_cache(
                                start.cache_read_tokens.max(delta.cache_read_tokens),
                                start.cache_write_tokens.max(delta.cache_write_tokens),
                            ),
                        );
                    }
                    _ => {}
                },
                _ => {
                    if let Some(u) = openai::usage_of(ev.data.as_bytes()) {
                        self.usage = Some(u);
                    }
                }
            }
        }
    }

    /// A passed-through Responses stream: usage, and the whole response to keep, are in its
    /// final event.
    fn scan_responses(&mut self, data: &str) {
        const FINAL: [&str; 3] = [
            "\"response.completed\"",
            "\"response.incomplete\"",
            "\"response.failed\"",
        ];
        if !FINAL.iter().any(|f| data.contains(f)) {
            return;
        }
        if let Some(u) = responses::usage_of(data.as_bytes()) {
            self.usage = Some(u);
        }
        let completed = data.contains(FINAL[0]) || data.contains(FINAL[1]);
        if let (true, Some(k)) = (completed, self.keep.take()) {
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(data) {
                k.put(v["response"].take());
            }
        }
    }

    /// Frees the request's slots before the client's body ends (it ends once the pump returns).
    async fn free_slots(&mut self) {
        if let Some(r) = self.record.as_mut() {
            r.release_slots().await;
        }
    }

    /// The client stopped reading: the stream is abandoned (recorded as cancelled).
    fn stalled(&mut self) {
        if let Some(rec) = self.record.as_mut() {
            rec.error = Some(format!(
                "the client stopped reading the stream for {}s (the idle timeout); abandoned",
                self.idle.as_secs()
            ));
            rec.gw
                .metrics
                .bounded_drops
                .with_label_values(&["stalled_client"])
                .inc();
        }
    }

    /// Ends the stream with a well-formed error event in the client's dialect.
    fn fail(&mut self, e: RelayError) -> Bytes {
        self.done = true;
        self.failed = true;
        let kind = if matches!(e, RelayError::Timeout(_)) {
            ErrorKind::Timeout
        } else {
            ErrorKind::Upstream
        };
        let msg = format!("the stream was interrupted: {e}");
        if let Some(rec) = self.record.as_mut() {
            rec.error = Some(msg.clone());
        }
        let event = Bytes::from(
            ApiError::new(kind, "stream_interrupted", msg).sse_event(self.dialect_api.dialect()),
        );
        if let Some(live) = self.live.take() {
            live.push(event.clone());
            live.close();
        }
        event
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            live.close();
        }
        let outcome = match (self.done, self.failed) {
            (_, true) => "broken",
            (true, false) => "ok",
            (false, false) => "cancelled",
        };
        if let Some(rec) = self.record.as_mut() {
            rec.usage = self.usage;
            rec.streamed_events = self.events;
            rec.outcome = outcome;
            if let Some(o) = self.observed.take() {
                let took = o.attempt_started.elapsed();
                rec.upstream = o.upstream_before + took;
                let m = &rec.gw.metrics;
                m.open_streams.dec();
                let provider = rec.provider.as_deref().unwrap_or("-");
                m.upstream_duration
                    .with_label_values(&[provider, o.target.as_str(), outcome])
                    .observe(took.as_secs_f64());
                if let Some(span) = o.span {
                    span.set([
                        Attribute::new("pylon.stream.events", self.events as i64),
                        Attribute::new("pylon.outcome", outcome),
                    ]);
                    if self.failed {
                        span.fail("the stream was interrupted");
                    }
                    span.end();
                }
            }
        }
    }
}
