//! The live dashboard at `/dashboard`: a page and its assets embedded in the binary (no CDN,
//! works offline), a login that trades the admin token for a session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` under TLS), and a server-sent-events stream that pushes every
//! figure on screen each second. The page acts through the admin API with its session: reads
//! freely, and every state-changing call must carry the session's CSRF token.

mod snapshot;

pub(crate) use snapshot::Executive;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::Control;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The session cookie's name.
pub(crate) const COOKIE: &str = "pylon_session";
/// The header a state-changing call carries its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-pylon-csrf";
/// Sessions held at most (the oldest go first); each lasts this long.
const MAX_SESSIONS: usize = 1000;
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// How often the stream pushes.
const PUSH: Duration = Duration::from_secs(1);

/// The strictest policy the page works with: its own scripts and styles only, no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

struct Session {
    csrf: String,
    expires: Instant,
}

/// Logged-in dashboard sessions, by the hash of their cookie (the cookie itself is not kept).
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// What a request's session allows.
pub(crate) enum Access {
    /// No (valid) session.
    None,
    /// Reads; writes only with the CSRF token.
    Session { csrf_ok: bool },
}

impl Sessions {
    fn open(&self) -> Option<(String, String)> {
        let (id, csrf) = (random_token()?, random_token()?);
        let mut map = self.map.lock().ok()?;
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            pylon_proxy::hash_key(&id),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION,
            },
        );
        Some((id, csrf))
    }

    fn csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers)?;
        let map = self.map.lock().ok()?;
        map.get(&pylon_proxy::hash_key(id))
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.csrf.clone())
    }

    fn close(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut map)) = (cookie(headers), self.map.lock()) {
            map.remove(&pylon_proxy::hash_key(id));
        }
    }

    /// What the request's cookie (and CSRF header) allow.
    pub(crate) fn access(&self, headers: &HeaderMap) -> Access {
        let Some(csrf) = self.csrf(headers) else {
            return Access::None;
        };
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Access::Session {
            csrf_ok: bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())),
        }
    }
}

/// The dashboard's routes.
pub(crate) fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route(
            "/dashboard/app.js",
            get(|| asset(APP_JS, "text/javascript")),
        )
        .route("/dashboard/app.css", get(|| asset(APP_CSS, "text/css")))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/session", get(session))
        .route("/dashboard/stream", get(stream))
        .with_state(control)
}

async fn index() -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message}}))).into_response()
}

/// Trades the admin token for a session: `{"token": "…"}` → a cookie and `{"csrf": "…"}`.
async fn login(State(c): State<Arc<Control>>, req: Request) -> Response {
    let Some(expected) = c.admin_token else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the admin API is disabled: set PYLON_ADMIN_TOKEN or [admin] token_file",
        );
    };
    let secure = pylon_proxy::over_tls(req.extensions());
    let body = match axum::body::to_bytes(req.into_body(), 4096).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "the login is too large"),
    };
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_owned));
    let Some(token) = token else {
        return error(
            StatusCode::BAD_REQUEST,
            "send {\"token\": \"<admin token>\"}",
        );
    };
    if !bool::from(pylon_proxy::hash_key(token.trim()).ct_eq(&expected)) {
        return error(StatusCode::UNAUTHORIZED, "the admin token is wrong");
    }
    let Some((id, csrf)) = c.sessions.open() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no session could be made; retry",
        );
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut r = Json(json!({"csrf": csrf})).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(c): State<Arc<Control>>, headers: HeaderMap) -> Response {
    if !matches!(
        c.sessions.access(&headers),
        Access::Session { csrf_ok: true }
    ) {
        return error(
            StatusCode::FORBIDDEN,
            "log out with the session's CSRF token",
        );
    }
    c.sessions.close(&headers);
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("pylon_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// The session's CSRF token after a reload (`null`: not logged in; a 200 either way, so a
/// fresh page logs no failed request).
async fn session(State(c): State<Arc<Control>>, headers: HeaderMap) -> Response {
    Json(json!({"csrf": c.sessions.csrf(&headers)})).into_response()
}

/// Every figure on screen, pushed each second.
async fn stream(State(c): State<Arc<Control>>, headers: HeaderMap) -> Response {
    if c.sessions.csrf(&headers).is_none() {
        return error(StatusCode::UNAUTHORIZED, "log in");
    }
    let state = snapshot::Live::new(c);
    let events = futures_util::stream::unfold(state, |mut state| async move {
        let data = state.next().await;
        tokio::time::sleep(PUSH).await;
        Some((
            Ok::<_, std::convert::Infallible>(Event::default().event("snapshot").data(data)),
            state,
        ))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
