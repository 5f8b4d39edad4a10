//! `[[providers]]`: upstream model APIs, how Pylon reaches them and their timeouts.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::Secret;

/// `[[providers]]`: an upstream model API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: Spanned<String>,
    pub kind: ProviderKind,
    /// Defaults to the kind's public API.
    #[serde(default)]
    pub base_url: Option<Spanned<String>>,
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Clients may address `name/model` directly (off by default: such a model has no
    /// configured limits, and is priced only if the price table knows its name).
    #[serde(default)]
    pub direct: bool,
    /// Extra PEM CA certificates to trust for this provider (a corporate CA or a private
    /// gateway), besides the public roots.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Speak HTTP/2 to this provider over `connections` connections (each multiplexes streams
    /// up to the server's limit). Off: an HTTP/1.1 connection pool that grows with load.
    #[serde(default)]
    pub http2: bool,
    /// HTTP/2 connections kept to this provider; a request takes the least busy one.
    #[serde(default = "default_connections")]
    pub connections: u32,
    /// An HTTP CONNECT proxy for this provider (`http://user:pass@host:port`); unset: the
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` environment.
    #[serde(default)]
    pub proxy: Option<Secret>,
    /// Client headers forwarded to this provider besides the request id, the trace context and
    /// `anthropic-version` (e.g. `anthropic-beta`, which can change what a request costs).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Azure OpenAI: the `api-version` (default `2024-10-21`); `v1` uses the version-less
    /// `/openai/v1/` API, where the body's model names the deployment.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Azure OpenAI with Microsoft Entra ID: a file holding a bearer token (kept fresh by a
    /// sidecar or workload identity), re-read every 30 s; instead of `api_key`.
    #[serde(default)]
    pub token_file: Option<Spanned<PathBuf>>,
    /// AWS Bedrock: region and credentials (SigV4).
    #[serde(default)]
    pub aws: Option<Aws>,
    /// OpenAI and Azure: the server has the Responses API (`/responses`). Off for
    /// OpenAI-compatible servers without it: Responses requests are translated to chat.
    #[serde(default = "yes")]
    pub responses_api: bool,
}

fn yes() -> bool {
    true
}

/// `aws = { … }` of a Bedrock provider. Credentials: these keys if set, else the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else a web identity
/// (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, exchanged with STS and renewed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aws {
    pub region: String,
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// A web identity: the role to assume and the token file (default: `AWS_ROLE_ARN` and
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`, as EKS sets them).
    #[serde(default)]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub web_identity_token_file: Option<PathBuf>,
    /// The STS endpoint for web identity (default `https://sts.<region>.amazonaws.com`).
    #[serde(default)]
    pub sts_url: Option<String>,
}

pub(crate) fn default_connections() -> u32 {
    8
}

impl Provider {
    /// The base URL, or the kind's public default (Bedrock: its region's runtime endpoint).
    pub fn base_url(&self) -> String {
        match (&self.base_url, self.kind, &self.aws) {
            (Some(u), _, _) => u.get_ref().clone(),
            (None, ProviderKind::Bedrock, Some(aws)) => {
                format!("https://bedrock-runtime.{}.amazonaws.com", aws.region)
            }
            (None, kind, _) => kind.default_base_url().to_owned(),
        }
    }
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server (Ollama, vLLM, …).
    Openai,
    Anthropic,
    Gemini,
    /// Azure OpenAI: OpenAI's wire format on deployment paths, `api-key` or Entra ID auth.
    Azure,
    /// AWS Bedrock's Converse API, signed with SigV4.
    Bedrock,
}

impl ProviderKind {
    /// The public API base URL of this kind.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Openai => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Gemini => "https://generativelanguage.googleapis.com/v1beta",
            // Every Azure resource has its own endpoint: `base_url` is required (validated).
            ProviderKind::Azure => "https://invalid.openai.azure.com",
            // Per region: built from `aws.region` when base_url is unset.
            ProviderKind::Bedrock => "https://bedrock-runtime.us-east-1.amazonaws.com",
        }
    }

    /// Speaks OpenAI's wire format (bodies pass through to it untranslated).
    pub fn openai_wire(self) -> bool {
        matches!(self, ProviderKind::Openai | ProviderKind::Azure)
    }
}

/// Upstream timeouts; unset fields take the defaults of where they are used.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default, with = "humantime_serde")]
    pub connect: Option<Duration>,
    /// Until the response headers (and, for streams, the first chunk) arrive.
    #[serde(default, with = "humantime_serde")]
    pub first_byte: Option<Duration>,
    /// Longest silence between two chunks of a body.
    #[serde(default, with = "humantime_serde")]
    pub idle: Option<Duration>,
    /// The whole exchange.
    #[serde(default, with = "humantime_serde")]
    pub total: Option<Duration>,
    /// A non-stream answer, from sending the request to its last byte. Its headers come only
    /// when generation is done, so this, not `first_byte`, bounds it (providers only).
    #[serde(default, with = "humantime_serde")]
    pub response: Option<Duration>,
}

/// Timeouts with every field resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedTimeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    /// `None`: no bound (long-lived app connections such as WebSockets).
    pub total: Option<Duration>,
    /// A whole non-stream answer (providers).
    pub response: Duration,
}

impl Timeouts {
    /// Defaults for model providers: 2s connect, 30s first byte and idle (streams), 600s total
    /// and 600s for a whole non-stream answer.
    pub fn for_provider(&self) -> ResolvedTimeouts {
        let total = self.total.unwrap_or(Duration::from_secs(600));
        ResolvedTimeouts {
            connect: self.connect.unwrap_or(Duration::from_secs(2)),
            first_byte: self.first_byte.unwrap_or(Duration::from_secs(30)),
            idle: self.idle.unwrap_or(Duration::from_secs(30)),
            total: Some(total),
            response: self.response.unwrap_or(total),
        }
    }

    /// Defaults for app routes: 2s connect, 60s first byte, 300s idle, no total (SSE, WebSockets).
    pub fn for_route(&self) -> ResolvedTimeouts {
        ResolvedTimeouts {
            connect: self.connect.unwrap_or(Duration::from_secs(2)),
            first_byte: self.first_byte.unwrap_or(Duration::from_secs(60)),
            idle: self.idle.unwrap_or(Duration::from_secs(300)),
            total: self.total,
            response: self.total.unwrap_or(Duration::MAX),
        }
    }
}
