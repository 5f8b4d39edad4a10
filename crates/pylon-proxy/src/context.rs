//! The per-request context every phase after ingress takes: which endpoint, the body and what
//! was parsed from it, the headers to forward, the request's record and its cache write.

use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use http::HeaderValue;
use pylon_providers::{anthropic, responses, TranslateError};
use pylon_types::openai::ChatRequest;
use pylon_types::Dialect;

use crate::log::Record;
use crate::ProxyError;

/// Which endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Messages,
    Embeddings,
    /// OpenAI's Responses API.
    Responses,
    /// OpenAI's legacy text completions (pass-through only).
    Completions,
}

impl Api {
    /// `gen_ai.operation.name`.
    pub fn operation(self) -> &'static str {
        match self {
            Api::Chat | Api::Messages | Api::Responses => "chat",
            Api::Embeddings => "embeddings",
            Api::Completions => "text_completion",
        }
    }

    pub fn route(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Messages => "/v1/messages",
            Api::Embeddings => "/v1/embeddings",
            Api::Responses => "/v1/responses",
            Api::Completions => "/v1/completions",
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Api::Messages => Dialect::Anthropic,
            Api::Responses => Dialect::Responses,
            Api::Chat | Api::Embeddings | Api::Completions => Dialect::OpenAi,
        }
    }
}

/// The per-request context threaded through route → upstream → respond.
pub(crate) struct Call {
    pub api: Api,
    /// The body exactly as the client sent it.
    pub body: Bytes,
    pub model: String,
    /// Where the model value sits in `body`, for pass-through with the model replaced.
    pub model_span: Range<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// The client asked for the provider's rate-limit headers (`x-pylon-provider-headers`).
    pub provider_headers: bool,
    /// Headers forwarded upstream: request id, trace context, Anthropic version and betas.
    pub forward: Vec<(http::HeaderName, HeaderValue)>,
    /// The end user the application names (chat `user`, Messages `metadata.user_id`).
    pub user: Option<String>,
    pub canonical: OnceLock<Result<ChatRequest, String>>,
    /// What a Responses API request carries beyond its bytes.
    pub responses: Option<Box<ResponsesCall>>,
    pub record: Option<Record>,
    /// Where a successful answer is stored, when the model is cached and this is a miss.
    pub cache: Option<crate::cache::Write>,
}

impl Call {
    /// The request as canonical OpenAI chat, parsed on first use (only translations need it).
    pub fn canonical(&self) -> Result<&ChatRequest, ProxyError> {
        let parsed = self
            .canonical
            .get_or_init(|| match (self.api, &self.responses) {
                // Parsed whole only here, when a translation needs it: a block type the
                // translation does not know is refused by name.
                (Api::Messages, _) => anthropic::parse_for_translation(&self.body)
                    .map(anthropic::to_chat)
                    .map_err(|e| e.to_string()),
                (_, Some(r)) => responses::to_chat(&r.request, &r.items).map_err(|e| e.to_string()),
                _ => serde_json::from_slice::<ChatRequest>(&self.body)
                    .map_err(|e| format!("chat request does not match the schema: {e}")),
            });
        parsed
            .as_ref()
            .map_err(|e| ProxyError::Invalid(TranslateError::Unsupported(e.clone())))
    }

    pub fn record(&mut self) -> Option<&mut Record> {
        self.record.as_mut()
    }
}

/// A Responses API request: the body as JSON (translation and the response store need it), its
/// conversation, and how the answer is kept.
pub(crate) struct ResponsesCall {
    pub request: serde_json::Value,
    /// The input items, after the conversation of `previous_response_id` when Pylon holds it.
    pub items: Vec<serde_json::Value>,
    /// `items` include a stored conversation: OpenAI providers get the body rebuilt with them.
    pub expanded: bool,
    /// A `previous_response_id` Pylon does not hold: only an OpenAI provider may know it.
    pub unknown_previous: Option<String>,
    /// Keep the answer (`store`, default true).
    pub store: bool,
    /// Whose stored responses it may continue (set once authenticated).
    pub owner: String,
    /// The id a translated answer gets (OpenAI providers' answers keep theirs).
    pub id: String,
    pub created_at: u64,
}

impl ResponsesCall {
    /// The id and echo fields of a translated answer.
    pub fn meta(&self) -> responses::Meta {
        responses::Meta {
            id: self.id.clone(),
            created_at: self.created_at,
            request: self.request.clone(),
        }
    }
}

/// Client headers every provider receives; others only where `forward_headers` names them.
pub(crate) const FORWARDED: [http::HeaderName; 4] = [
    crate::server::X_REQUEST_ID,
    TRACEPARENT,
    http::HeaderName::from_static("tracestate"),
    ANTHROPIC_VERSION,
];

/// W3C trace context: the client's, or our attempt span's when tracing.
pub(crate) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// Anthropic's API version; its presence also marks a client speaking Anthropic's dialect.
pub(crate) const ANTHROPIC_VERSION: http::HeaderName =
    http::HeaderName::from_static("anthropic-version");
/// A client's request for the provider's rate-limit headers.
pub(crate) const PROVIDER_HEADERS: http::HeaderName =
    http::HeaderName::from_static("x-pylon-provider-headers");

/// The scheme a request arrived over, for `X-Forwarded-Proto` on app routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Secure(pub bool);

/// Whether the provider speaks the client's dialect, so bodies pass through untranslated.
pub(crate) fn passthrough(api: Api, p: &crate::snapshot::Provider) -> bool {
    match api {
        Api::Chat | Api::Embeddings | Api::Completions => p.kind.openai_wire(),
        Api::Responses => p.kind.openai_wire() && p.responses_api,
        Api::Messages => p.kind == pylon_config::ProviderKind::Anthropic,
    }
}
