//! `[server]`: the listener, its TLS and the edge limits (timeouts, connection and request caps).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[server]`: the listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long `/readyz` answers 503 while requests are still accepted, so load
    /// balancers stop routing here before the listener closes.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Most messages one chat request may carry.
    #[serde(default = "default_max_messages")]
    pub max_messages: usize,
    /// Largest single message (its JSON content, in bytes).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Origins allowed to call Pylon from a browser (CORS); empty: no cross-origin access.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Compress Pylon's own JSON and pages (admin API, dashboard, docs, OFREP) for clients that
    /// accept gzip, brotli or zstd; the AI endpoints' answers are never compressed.
    #[serde(default = "yes")]
    pub compression: bool,
    /// Terminate TLS on `listen` (TLS 1.2 and 1.3 only).
    #[serde(default)]
    pub tls: Option<Tls>,
    /// A client must send a request's headers (and finish a TLS handshake) within this.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client must send a whole request body within this (408 otherwise).
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Open client connections; more get one 503 with `Retry-After` and are closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// AI requests in progress (open streams included); more get 503 with `Retry-After`.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// Concurrent streams one HTTP/2 client connection may open.
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: u32,
    /// Data-plane threads, each with its own runtime and upstream connections; 0: one per
    /// available core.
    #[serde(default)]
    pub workers: usize,
    /// Reload the config file when it changes (checked every second), as SIGHUP does.
    #[serde(default)]
    pub watch_config: bool,
    /// Every connection on `listen` starts with a PROXY protocol header (v1 or v2, as AWS NLB
    /// and HAProxy send it): its source address is the client's. Connections without one are
    /// closed, so only the load balancer can reach this listener.
    #[serde(default)]
    pub proxy_protocol: bool,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    20_000
}
fn default_max_requests() -> usize {
    10_000
}
fn default_http2_max_streams() -> u32 {
    256
}

/// `[server.tls]`: certificate files (re-read on SIGHUP), or certificates obtained and renewed
/// over ACME.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain (not with `acme`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; not with `acme`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Also listen here in plain HTTP and redirect every request to HTTPS (ACME's HTTP-01
    /// challenges are answered here).
    #[serde(default)]
    pub redirect_http: Option<SocketAddr>,
    /// A DER OCSP response for the certificate, stapled to handshakes and re-read with it (keep
    /// it fresh with `openssl ocsp … -respout` from cron, then SIGHUP).
    #[serde(default)]
    pub ocsp_file: Option<PathBuf>,
    /// Obtain and renew the certificate from an ACME CA (RFC 8555, e.g. Let's Encrypt).
    #[serde(default)]
    pub acme: Option<Acme>,
}

/// `acme = { … }`: automatic certificates. The certificate and its encrypted private key live
/// in the store, so every instance sharing it serves the same certificate and one of them (the
/// lease holder) renews it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// The CA's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Contact address for the account (expiry warnings from the CA).
    #[serde(default)]
    pub email: Option<String>,
    /// Names the certificate covers; the first one names it.
    pub domains: toml::Spanned<Vec<String>>,
    /// How the CA checks control of each name: `http-01` (on `redirect_http`, which must be
    /// reachable on port 80) or `tls-alpn-01` (on `listen`, port 443).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// PEM roots to trust for the directory's HTTPS (a private or test CA); default: the
    /// public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Renew when this little time is left; default a third of the certificate's lifetime
    /// (30 days of a 90-day certificate).
    #[serde(default, with = "humantime_serde")]
    pub renew_before: Option<Duration>,
    /// How often each instance compares its certificate with the store's and decides whether
    /// to renew.
    #[serde(default = "default_acme_check", with = "humantime_serde")]
    pub check_interval: Duration,
}

fn default_acme_check() -> Duration {
    Duration::from_secs(600)
}

/// The ACME challenge Pylon answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl AcmeChallenge {
    /// The name in pylon.toml and in RFC 8555.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

fn default_max_messages() -> usize {
    2_000
}
fn default_max_message_bytes() -> usize {
    2 * 1024 * 1024
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    8 * 1024 * 1024
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            shutdown_grace: default_grace(),
            shutdown_delay: Duration::ZERO,
            max_messages: default_max_messages(),
            max_message_bytes: default_max_message_bytes(),
            cors_origins: Vec::new(),
            compression: true,
            tls: None,
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_connections: default_max_connections(),
            max_requests: default_max_requests(),
            http2_max_streams: default_http2_max_streams(),
            workers: 0,
            watch_config: false,
            proxy_protocol: false,
        }
    }
}

fn yes() -> bool {
    true
}
