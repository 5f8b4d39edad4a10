//! The relay of a committed stream: reads the provider's events under deadlines that hold
//! whatever the client does, re-encodes them for the client's wire format, and settles the
//! accounting when the stream ends, however it ends.

use std::time::{Duration, Instant};

use crate::client::Body as UpstreamBody;
use bytes::Bytes;
use http_body_util::BodyExt;
use pylon_config::ProviderKind;
use pylon_providers::assemble::Assembler;
use pylon_providers::stream::{Decoder, Encoder, Framer};
use pylon_providers::{openai, responses, sse};
use pylon_types::anthropic::StreamEvent;
use pylon_types::openai::{Chunk, Usage};
use pylon_types::{ApiError, ErrorKind};

use pylon_telemetry::trace::Attribute;
use pylon_telemetry::SpanHandle;

use crate::breaker::InFlight;
use crate::context::Api;
use crate::conversation::Keep;
use crate::log::Record;

/// Events buffered between the relay and a client's connection.
pub(super) const RELAY_BUFFER: usize = 8;

/// Drives a committed stream to its end, handing each piece to the client's connection.
pub(super) async fn pump(mut relay: Relay, tx: tokio::sync::mpsc::Sender<Bytes>) {
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
pub(super) enum RelayError {
    #[error("the provider sent nothing for {0}")]
    Timeout(&'static str),
    #[error("the provider connection broke: {0}")]
    Broken(String),
    #[error("{0}")]
    Provider(#[from] pylon_providers::TranslateError),
}

/// Moves whole SSE events from the provider to the client, translating when dialects differ.
pub(super) struct Relay {
    pub(super) body: UpstreamBody,
    pub(super) framer: Framer,
    pub(super) codec: Option<(Decoder, Encoder)>,
    pub(super) wire: ProviderKind,
    pub(super) idle: Duration,
    pub(super) deadline: Instant,
    pub(super) usage: Option<Usage>,
    pub(super) done: bool,
    pub(super) failed: bool,
    pub(super) events: u64,
    pub(super) scratch: Vec<Chunk>,
    pub(super) dialect_api: Api,
    pub(super) record: Option<Record>,
    /// The cache write, the answer assembled so far, and who is answering.
    pub(super) cache: Option<(crate::cache::Write, Assembler, String, String)>,
    /// Coalesced followers of this stream read what it relays from here.
    pub(super) live: Option<std::sync::Arc<crate::cache::Live>>,
    pub(super) _in_flight: InFlight,
    /// Stream timing for metrics and the stream span, once committed.
    pub(super) observed: Option<Observed>,
    /// Usage was asked for upstream on the client's behalf: its chunk is not passed on.
    pub(super) strip_usage: bool,
    /// Where a Responses API answer is kept once the stream has finished.
    pub(super) keep: Option<Keep>,
}

/// What a committed stream reports as it goes and when it ends.
pub(super) struct Observed {
    /// `pylon_inter_token_latency_seconds` for this model and provider.
    pub(super) gap: pylon_telemetry::prometheus::Histogram,
    pub(super) last_event: Instant,
    pub(super) attempt_started: Instant,
    /// Upstream time of earlier attempts.
    pub(super) upstream_before: Duration,
    pub(super) target: String,
    pub(super) span: Option<SpanHandle>,
}

impl Relay {
    /// The next bytes for the client; `None` at the end.
    pub(super) async fn next(&mut self, wait: Duration) -> Result<Option<Bytes>, RelayError> {
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
