//! The HTTP surface: routes, request-id layers, and serving with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::serve::ListenerExt;
use axum::Router;
use http::{header, HeaderValue};
use pylon_types::Dialect;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::snapshot::Gateway;
use crate::{app, ingress, ProxyError};

/// All of Pylon's HTTP routes; `control` (the admin API, docs) is mounted beside the data plane.
pub fn router(gw: Arc<Gateway>, control: Router) -> Router {
    let origins = gw.cors_origins.clone();
    let data_plane = Router::new()
        .route("/v1/chat/completions", post(ingress::chat))
        .route("/v1/messages", post(ingress::messages))
        .route("/v1/embeddings", post(ingress::embeddings))
        .route("/v1/models", get(ingress::models))
        .route("/v1/{*rest}", any(unknown_v1))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(app::proxy)
        .with_state(gw);
    let app = control
        .merge(data_plane)
        .layer(axum::middleware::map_response(strict_csp_on_html))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // Outermost first on the way in: an id is set (or kept) before anything else runs,
        // and copied onto every response, errors included.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(FastRequestId));
    match cors(&origins) {
        Some(layer) => app.layer(layer),
        None => app,
    }
}

/// HTML pages (the API docs) may load only what Pylon itself serves.
async fn strict_csp_on_html(mut resp: Response) -> Response {
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/html"));
    if html {
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        );
    }
    resp
}

/// CORS for the configured browser origins only; none configured, no CORS headers at all.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if list.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([
                http::Method::GET,
                http::Method::POST,
                http::Method::PUT,
                http::Method::DELETE,
            ])
            .allow_headers(tower_http::cors::Any)
            .expose_headers(tower_http::cors::Any)
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Request ids as random (version 4) UUIDs from a thread-local PRNG: unique enough for
/// correlation, and unlike the OS generator it costs no system call per request.
#[derive(Clone, Copy)]
struct FastRequestId;

impl MakeRequestId for FastRequestId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let bits = (fastrand::u128(..) & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid::Uuid::from_u128(bits)
            .hyphenated()
            .encode_lower(&mut buf);
        http::HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}

async fn unknown_v1(uri: Uri) -> Response {
    ProxyError::NoRoute(uri.path().to_owned()).into_response(Dialect::OpenAi)
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ready".into_response()
    }
}

/// Serves until `shutdown` resolves, then stops accepting and waits for in-flight requests and
/// streams to finish (the caller bounds that wait with its grace period).
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    control: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(gw, control).into_make_service_with_connect_info::<SocketAddr>();
    // Streams write many small chunks; Nagle's algorithm would hold each one back for an ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
