//! API errors in the two client dialects: OpenAI's `{"error":{…}}` and Anthropic's `{"type":"error",…}`.
//!
//! The SDKs pick their exception class from the status code, so the kind decides the status and
//! both bodies; the message says what happened and what to do.

use serde_json::json;

/// Which API shape the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    /// OpenAI's Responses API: OpenAI's error body, and a typed `error` event in streams.
    Responses,
}

/// The class of an API error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    PermissionDenied,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    /// A provider answered with an error or a broken response.
    Upstream,
    /// No provider could be tried (all circuit breakers open).
    Unavailable,
    /// Providers did not answer in time.
    Timeout,
    /// The client did not send its request in time.
    ClientTimeout,
    Internal,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RateLimited => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Upstream => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::ClientTimeout => 408,
        }
    }

    /// The kind that best matches an HTTP status.
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => ErrorKind::Authentication,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            413 => ErrorKind::PayloadTooLarge,
            429 => ErrorKind::RateLimited,
            400..=499 => ErrorKind::InvalidRequest,
            503 | 529 => ErrorKind::Unavailable,
            504 => ErrorKind::Timeout,
            _ => ErrorKind::Upstream,
        }
    }

    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::NotFound
            | ErrorKind::PayloadTooLarge
            | ErrorKind::ClientTimeout => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Upstream | ErrorKind::Unavailable | ErrorKind::Timeout => "upstream_error",
            ErrorKind::Internal => "server_error",
        }
    }

    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::ClientTimeout => "invalid_request_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Unavailable => "overloaded_error",
            ErrorKind::Upstream | ErrorKind::Timeout | ErrorKind::Internal => "api_error",
        }
    }
}

/// An error ready to be written to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// Machine-readable code, e.g. `model_not_found`.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            code,
            message: message.into(),
        }
    }

    /// The JSON body in the given dialect.
    pub fn body(&self, dialect: Dialect) -> serde_json::Value {
        match dialect {
            Dialect::OpenAi | Dialect::Responses => json!({"error": {
                "message": self.message,
                "type": self.kind.openai_type(),
                "param": null,
                "code": self.code,
            }}),
            Dialect::Anthropic => json!({"type": "error", "error": {
                "type": self.kind.anthropic_type(),
                "message": self.message,
            }}),
        }
    }

    /// The error as one SSE event that ends a stream in the given dialect.
    pub fn sse_event(&self, dialect: Dialect) -> String {
        match dialect {
            Dialect::OpenAi => format!("data: {}\n\n", self.body(dialect)),
            Dialect::Anthropic => format!("event: error\ndata: {}\n\n", self.body(dialect)),
            Dialect::Responses => format!(
                "event: error\ndata: {}\n\n",
                json!({"type": "error", "code": self.code, "message": self.message,
                    "param": null, "sequence_number": 0})
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_carry_message_and_type() {
        let e = ApiError::new(ErrorKind::NotFound, "model_not_found", "no model `x`");
        insta::assert_json_snapshot!(e.body(Dialect::OpenAi), @r###"
        {
          "error": {
            "code": "model_not_found",
            "message": "no model `x`",
            "param": null,
            "type": "invalid_request_error"
          }
        }
        "###);
        insta::assert_json_snapshot!(e.body(Dialect::Anthropic), @r###"
        {
          "error": {
            "message": "no model `x`",
            "type": "not_found_error"
          },
          "type": "error"
        }
        "###);
    }

    #[test]
    fn status_round_trips_for_client_errors() {
        for s in [400, 401, 403, 404, 413, 429] {
            assert_eq!(ErrorKind::from_status(s).status(), s);
        }
    }
}
