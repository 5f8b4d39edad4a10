//! Starts mock providers and a gateway wired to them; small helpers for requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pylon_providers::mock::{Behaviour, Mock, Stats};
use serde_json::{json, Value};

/// A running mock provider.
pub struct MockServer {
    pub addr: SocketAddr,
    pub mock: Arc<Mock>,
}

impl MockServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mock = Mock::new();
        tokio::spawn(pylon_providers::mock::serve(listener, mock.clone()));
        MockServer { addr, mock }
    }

    pub fn set(&self, b: Behaviour) {
        self.mock.set(b);
    }

    /// Every request answered with a 500: a provider that is down.
    pub fn fail_every_request(&self) {
        self.set(Behaviour {
            error_status: Some(500),
            error_rate: 1.0,
            ..Behaviour::default()
        });
    }

    pub fn stats(&self) -> Stats {
        self.mock.stats()
    }
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts a gateway from config text; `{a}` and `{b}` are replaced by the two mocks' addresses.
    pub async fn start(config: &str, a: &MockServer, b: &MockServer) -> Self {
        let text = config
            .replace("{a}", &a.addr.to_string())
            .replace("{b}", &b.addr.to_string());
        Self::from_text(&text).await
    }

    pub async fn from_text(text: &str) -> Self {
        Self::with_admin(text, None).await.0
    }

    /// Starts a gateway the way `pylon serve` does (store, key index, admin API), with a fresh
    /// SQLite data dir unless the text names one, and returns its control plane too.
    pub async fn with_admin(
        text: &str,
        admin_token: Option<&str>,
    ) -> (Self, Arc<pylon_control::Control>) {
        let env = pylon_control::Env {
            admin_token: admin_token.map(str::to_owned),
            ..Default::default()
        };
        Self::with_env(text, env).await
    }

    /// Like [`Gateway::with_admin`], with every environment secret given.
    pub async fn with_env(
        text: &str,
        env: pylon_control::Env,
    ) -> (Self, Arc<pylon_control::Control>) {
        let text = if text.contains("[data]") {
            text.to_owned()
        } else {
            format!("[data]\ndir = \"{}\"\n{text}", temp_dir("data").display())
        };
        let config = pylon_config::parse(&text, "test.toml", &|_| None).unwrap();
        let (gw, control) = pylon_control::bootstrap(&config, env).await.unwrap();
        tokio::spawn(control.clone().refresh_loop(config.auth.refresh));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = pylon_control::router(control.clone());
        // The data plane on its own worker threads, as `pylon serve` runs it; they serve until
        // the test process ends.
        std::mem::forget(pylon_proxy::Workers::start(listener, None, gw, admin).unwrap());
        (Gateway { addr }, control)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn chat(&self, body: Value) -> reqwest::Response {
        client()
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// A gateway in front of two mocks, `a` and `b`, with these models:
/// `a-only` (a, falls back to `b-only`, re-sent after a timeout), `b-only`, `a-strict` (a, no fallback),
/// `claude` (a, anthropic kind), `gemini` (a, gemini kind).
pub const TWO_MOCKS: &str = r#"
[server]
max_body_bytes = 4096

[auth]
mode = "none"

[resilience]
breaker_failures = 3
breaker_cooldown = "300ms"
backoff = "1ms"
max_backoff = "5ms"
max_retry_after = "2s"

[[providers]]
name = "a"
kind = "openai"
base_url = "http://{a}/v1"
api_key = "sk-provider-a"
timeouts = { connect = "500ms", first_byte = "400ms", idle = "400ms", total = "5s", response = "400ms" }

[[providers]]
name = "b"
kind = "openai"
base_url = "http://{b}/v1"
api_key = "sk-provider-b"

[[providers]]
name = "a-anthropic"
kind = "anthropic"
base_url = "http://{a}"
api_key = "sk-ant-provider"

[[providers]]
name = "a-gemini"
kind = "gemini"
base_url = "http://{a}/v1beta"
api_key = "gemini-provider"

[[models]]
name = "a-only"
targets = [ { provider = "a", model = "mock-a" } ]
fallbacks = ["b-only"]
retries = 0
resend_on_timeout = true

[[models]]
name = "b-only"
targets = [ { provider = "b", model = "mock-b" } ]

[[models]]
name = "a-strict"
targets = [ { provider = "a", model = "mock-a" } ]
retries = 1

[[models]]
name = "claude"
targets = [ { provider = "a-anthropic", model = "mock-claude" } ]

[[models]]
name = "gemini"
targets = [ { provider = "a-gemini", model = "mock-gemini" } ]
"#;

pub async fn two_mocks() -> (MockServer, MockServer, Gateway) {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let gw = Gateway::start(TWO_MOCKS, &a, &b).await;
    (a, b, gw)
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

pub fn hello_stream(model: &str) -> Value {
    json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "hello"}]})
}

/// Polls `cond` until it holds or `within` passes; a readiness wait, not a fixed sleep.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

pub fn provider_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-pylon-provider")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pylon-e2e-{what}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The value of one un-labelled (or fully labelled) series in `/metrics`, 0 when absent.
pub async fn metric(gw: &Gateway, series: &str) -> f64 {
    get_text(gw, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `GET` an admin path with the admin token; the JSON answer.
pub async fn admin_get(gw: &Gateway, token: &str, path: &str) -> Value {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A fresh schema in the test PostgreSQL: the admin pool, the base URL and the schema name.
/// Panics (never skips) when PostgreSQL is unreachable.
pub async fn pg_schema() -> (sqlx::AnyPool, String, String) {
    let base = std::env::var("PYLON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required: {e}"));
    let schema = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    (admin, base, schema)
}

/// A port free on 127.0.0.1 a moment ago, for configs that must name theirs before start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET` a path without credentials; the body as text.
pub async fn get_text(gw: &Gateway, path: &str) -> String {
    client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// POSTs `body` to an admin path; the status and the JSON answer.
pub async fn admin_post(gw: &Gateway, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let resp = client()
        .post(gw.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Creates a virtual key through the admin API; the key's secret.
pub async fn create_key_with(gw: &Gateway, admin_token: &str, body: Value) -> String {
    let (status, v) = admin_post(gw, admin_token, "/admin/v1/keys", &body).await;
    assert_eq!(status, 201);
    v["key"].as_str().unwrap().to_owned()
}

/// A chat request for `model` with a key.
pub async fn chat_as(gw: &Gateway, key: &str, model: &str) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&hello(model))
        .send()
        .await
        .unwrap()
}

/// A TCP proxy to `target` that can be cut (`true`: new and open connections are dropped).
pub async fn cuttable_proxy(
    target: &str,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cut.clone();
    let target = target.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                continue; // dropped: the connection closes at once
            }
            let target = target.clone();
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                tokio::select! {
                    _ = copy => {}
                    _ = async { while !flag.load(std::sync::atomic::Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(20)).await } } => {}
                }
            });
        }
    });
    (addr, cut)
}

/// Receives webhook events; answers `status` to each.
pub async fn webhook_receiver(
    status: axum::http::StatusCode,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .fallback(
            |axum::extract::State((seen, status)): axum::extract::State<(
                std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
                axum::http::StatusCode,
            )>,
             axum::Json(v): axum::Json<Value>| async move {
                seen.lock().unwrap().push(v);
                status
            },
        )
        .with_state((seen.clone(), status));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}
