//! OpenTelemetry traces exported over OTLP (HTTP or gRPC). Off by default; when off the data
//! plane holds no tracer and does no tracing work at all.

use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use pylon_config::OtlpProtocol;

pub use opentelemetry::KeyValue as Attribute;

/// The OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export to {endpoint}: {reason}")]
pub struct TraceError {
    endpoint: String,
    reason: String,
}

/// The process's tracer; clones share one exporter.
#[derive(Clone)]
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::Tracer,
}

impl Tracer {
    /// Builds the exporter and a batching processor that runs on the current Tokio runtime.
    pub fn new(cfg: &pylon_config::Tracing) -> Result<Tracer, TraceError> {
        let err = |e: &dyn std::fmt::Display| TraceError {
            endpoint: cfg.endpoint.clone(),
            reason: e.to_string(),
        };
        let exporter = match cfg.protocol {
            OtlpProtocol::Http => {
                // reqwest is built without a bundled crypto provider; Pylon uses ring everywhere.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let base = cfg.endpoint.trim_end_matches('/');
                // The collector's well-known path, unless the endpoint already names one.
                let url = if base.ends_with("/v1/traces") {
                    base.to_owned()
                } else {
                    format!("{base}/v1/traces")
                };
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(reqwest::Client::new())
                    .with_endpoint(url)
                    .build()
            }
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(cfg.endpoint.clone())
                .build(),
        }
        .map_err(|e| err(&e))?;
        let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_scheduled_delay(cfg.export_every)
            .build();
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("pylon");
        Ok(Tracer { provider, tracer })
    }

    /// Exports what is buffered and stops; called once at shutdown.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(target: "pylon::trace", error = %e, "trace export did not shut down cleanly");
        }
    }

    /// Starts a request's server span, continuing the client's `traceparent` when there is one.
    pub fn request(&self, name: String, headers: &HeaderMap, attrs: Vec<KeyValue>) -> SpanHandle {
        let parent = TraceContextPropagator::new().extract(&HeaderRead(headers));
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &parent);
        SpanHandle {
            cx: parent.with_span(span),
            tracer: self.tracer.clone(),
        }
    }
}

/// A live span and what is needed to start its children.
pub struct SpanHandle {
    cx: Context,
    tracer: opentelemetry_sdk::trace::Tracer,
}

impl SpanHandle {
    /// Starts a child span now.
    pub fn child(&self, name: String, kind: SpanKind, attrs: Vec<KeyValue>) -> SpanHandle {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &self.cx);
        SpanHandle {
            cx: self.cx.with_span(span),
            tracer: self.tracer.clone(),
        }
    }

    /// Records a finished child step (auth, limits) from timestamps taken around it.
    pub fn step(&self, name: &'static str, start: SystemTime, error: Option<&str>) {
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .start_with_context(&self.tracer, &self.cx);
        if let Some(e) = error {
            span.set_status(Status::error(e.to_owned()));
        }
        span.end();
    }

    /// Adds attributes.
    pub fn set(&self, attrs: impl IntoIterator<Item = KeyValue>) {
        let span = self.cx.span();
        for kv in attrs {
            span.set_attribute(kv);
        }
    }

    /// Marks the span failed.
    pub fn fail(&self, message: &str) {
        self.cx.span().set_status(Status::error(message.to_owned()));
    }

    /// Ends the span now.
    pub fn end(&self) {
        self.cx.span().end();
    }

    /// The W3C `traceparent` naming this span, for the upstream request.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        let mut out = HeaderWrite(None);
        TraceContextPropagator::new().inject_context(&self.cx, &mut out);
        out.0
    }

    /// The trace id in hex, for log lines.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }
}

struct HeaderRead<'a>(&'a HeaderMap);

impl Extractor for HeaderRead<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Captures only `traceparent`; the client's `tracestate` is forwarded as it came.
struct HeaderWrite(Option<HeaderValue>);

impl Injector for HeaderWrite {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = HeaderValue::from_str(&value).ok();
        }
    }
}

pub use opentelemetry::trace::SpanKind as Kind;
