//! The one place where data-plane errors become HTTP responses, in the client's dialect.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, StatusCode};
use pylon_providers::TranslateError;
use pylon_types::{ApiError, Dialect, ErrorKind};

/// A failed data-plane request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The body exceeds `server.max_body_bytes`.
    #[error("request body is larger than the limit of {limit} bytes (server.max_body_bytes)")]
    TooLarge { limit: usize },
    /// The client did not send its whole body in time.
    #[error("the request body did not arrive within {}s (server.body_read_timeout)", .0.as_secs())]
    BodyTimeout(Duration),
    /// The body could not be read from the client.
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// The body is not a valid request.
    #[error("invalid request: {0}")]
    Invalid(#[from] TranslateError),
    /// No model of that name, and not a `provider/model` of a known provider.
    #[error("model `{0}` does not exist; GET /v1/models lists the configured names, or send `provider/model`")]
    UnknownModel(String),
    /// The model's providers cannot serve this kind of request.
    #[error("{0}")]
    Unsupported(String),
    /// A provider rejected the request itself (a 4xx other than 408/429): retrying would not help.
    #[error("provider `{provider}` rejected the request with status {status}")]
    Rejected {
        status: StatusCode,
        provider: String,
        message: String,
        /// The provider's own body, sent unchanged when it already speaks the client's dialect.
        passthrough: Option<Bytes>,
    },
    /// Every target and fallback failed.
    #[error("{message}")]
    Exhausted {
        kind: ErrorKind,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A rate limit or concurrency limit is reached.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    /// A hard budget is spent.
    #[error("{0}")]
    OverBudget(String),
    /// Shared limit state is unreachable and the config says to refuse.
    #[error("rate-limit state (Redis) is unreachable and limits.on_redis_failure = \"reject\"; retry shortly")]
    LimitsUnavailable,
    /// No key, or a key that does not authenticate.
    #[error("{0}")]
    Unauthorized(String),
    /// The key may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A budget applies but the request's price is unknown: refused, never served free.
    #[error("{0}")]
    Unpriced(String),
    /// A server limit (connections, requests in flight) is reached: shed with 503.
    #[error("{0}")]
    Overloaded(String),
    /// No such endpoint.
    #[error("no endpoint {0}")]
    NoRoute(String),
    /// A stored response that does not exist, has expired, or belongs to another key.
    #[error("response with id '{0}' not found (stored responses are kept for responses.ttl and only for the key that made them)")]
    NoResponse(String),
}

impl ProxyError {
    /// A stable class for grouping errors in the request log and traces.
    pub fn class(&self) -> &'static str {
        match self {
            ProxyError::TooLarge { .. } => "too_large",
            ProxyError::BodyRead(_) | ProxyError::Invalid(_) => "invalid_request",
            ProxyError::BodyTimeout(_) => "body_timeout",
            ProxyError::UnknownModel(_) => "unknown_model",
            ProxyError::Unsupported(_) => "unsupported",
            ProxyError::Rejected { .. } => "upstream_rejected",
            ProxyError::Exhausted { kind, .. } => match kind {
                ErrorKind::Timeout => "upstream_timeout",
                ErrorKind::RateLimited => "upstream_rate_limited",
                ErrorKind::Unavailable => "upstream_unavailable",
                _ => "upstream_error",
            },
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::OverBudget(_) => "over_budget",
            ProxyError::LimitsUnavailable => "limits_unavailable",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::Unpriced(_) => "unpriced_model",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::NoRoute(_) => "not_found",
            ProxyError::NoResponse(_) => "response_not_found",
        }
    }

    /// The error as it is shown to clients.
    pub fn api(&self) -> ApiError {
        let (kind, code) = match self {
            ProxyError::TooLarge { .. } => (ErrorKind::PayloadTooLarge, "request_too_large"),
            ProxyError::BodyTimeout(_) => (ErrorKind::ClientTimeout, "request_timeout"),
            ProxyError::BodyRead(_) | ProxyError::Invalid(_) => {
                (ErrorKind::InvalidRequest, "invalid_request")
            }
            ProxyError::UnknownModel(_) => (ErrorKind::NotFound, "model_not_found"),
            ProxyError::Unsupported(_) => (ErrorKind::InvalidRequest, "unsupported"),
            ProxyError::Rejected { status, .. } => {
                (ErrorKind::from_status(status.as_u16()), "upstream_rejected")
            }
            ProxyError::Exhausted { kind, .. } => (*kind, "upstream_unavailable"),
            ProxyError::NoRoute(_) => (ErrorKind::NotFound, "not_found"),
            ProxyError::NoResponse(_) => (ErrorKind::NotFound, "response_not_found"),
            ProxyError::Unauthorized(_) => (ErrorKind::Authentication, "invalid_api_key"),
            ProxyError::RateLimited { .. } => (ErrorKind::RateLimited, "rate_limit_exceeded"),
            ProxyError::OverBudget(_) => (ErrorKind::RateLimited, "insufficient_quota"),
            ProxyError::LimitsUnavailable => (ErrorKind::Unavailable, "limits_unavailable"),
            ProxyError::Forbidden(_) => (ErrorKind::PermissionDenied, "model_not_allowed"),
            ProxyError::Unpriced(_) => (ErrorKind::PermissionDenied, "model_unpriced"),
            ProxyError::Overloaded(_) => (ErrorKind::Unavailable, "overloaded"),
        };
        let message = match self {
            ProxyError::Rejected {
                message, provider, ..
            } => format!("provider `{provider}`: {message}"),
            other => other.to_string(),
        };
        ApiError::new(kind, code, message)
    }

    /// The HTTP response in the client's dialect.
    pub fn into_response(self, dialect: Dialect) -> Response {
        if let ProxyError::Rejected {
            status,
            passthrough: Some(body),
            ..
        } = &self
        {
            return json(*status, body.clone());
        }
        let api = self.api();
        let status = match &self {
            ProxyError::Rejected { status, .. } => *status,
            _ => {
                StatusCode::from_u16(api.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        };
        let mut resp = json(status, Bytes::from(api.body(dialect).to_string()));
        let retry_after = match &self {
            ProxyError::Exhausted { retry_after, .. } => *retry_after,
            ProxyError::RateLimited { retry_after, .. } => Some(*retry_after),
            ProxyError::LimitsUnavailable | ProxyError::Overloaded(_) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        };
        if let Some(d) = retry_after {
            let secs = d.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = secs.to_string().parse() {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        match self {
            ProxyError::RateLimited { headers, .. } => {
                for (name, value) in headers {
                    resp.headers_mut().insert(name, value);
                }
            }
            // Waiting does not help a spent budget: tell the SDKs not to retry.
            ProxyError::OverBudget(_) => {
                resp.headers_mut()
                    .insert("x-should-retry", http::HeaderValue::from_static("false"));
            }
            _ => {}
        }
        resp
    }
}

/// Client input as error messages quote it: at most 64 characters, so a huge or hostile value
/// never grows a response, a log line or a stored row.
pub(crate) fn quote(input: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = input.chars().take(MAX).collect();
    if input.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

fn json(status: StatusCode, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Why a config could not become a running gateway.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A credential contains characters that cannot go in an HTTP header.
    #[error("the api_key of provider `{0}` contains characters not allowed in an HTTP header")]
    BadCredential(String),
    /// The TLS setup failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// `data.redis_url` is not a usable Redis URL.
    #[error("data.redis_url: {0}")]
    Redis(String),
    #[error(transparent)]
    Metrics(#[from] pylon_telemetry::MetricsError),
    #[error(transparent)]
    Tracing(#[from] pylon_telemetry::TraceError),
}

/// Why one attempt failed in a way another target might not.
#[derive(Debug)]
pub(crate) enum Failure {
    Connect(String),
    Timeout(&'static str),
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        message: String,
    },
    /// The response broke off or was malformed before anything reached the client.
    Broken(String),
    /// The provider refused Pylon's own credential (401/403): an operator problem, never the
    /// client's, so the provider's text (which may quote the key) is not passed on.
    Credential {
        provider: String,
        status: StatusCode,
    },
    /// Pylon has no usable credential for the provider (AWS credentials not loaded yet).
    NoCredential(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connection failed: {e}"),
            Failure::Timeout(phase) => write!(f, "timed out waiting for {phase}"),
            Failure::Status {
                status, message, ..
            } => write!(f, "answered {status}: {message}"),
            Failure::Broken(e) => write!(f, "response broke off: {e}"),
            Failure::NoCredential(e) => write!(f, "no credential to send: {e}"),
            Failure::Credential { provider, status } => write!(
                f,
                "provider `{provider}` refused Pylon's credential ({status}); an operator must check its api_key"
            ),
        }
    }
}
