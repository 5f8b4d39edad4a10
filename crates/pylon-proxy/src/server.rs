//! The HTTP surface: routes, request-id layers, and serving with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

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
use crate::{app, health, ingress, ProxyError};

/// All of Pylon's HTTP routes; `control` (the admin API, docs) is mounted beside the data plane.
pub fn router(gw: Arc<Gateway>, control: Router) -> Router {
    let origins = gw.cors_origins.clone();
    let hsts = gw.hsts;
    let metrics_here = gw.metrics_on_main;
    let data_plane = Router::new()
        .route("/v1/chat/completions", post(ingress::chat))
        .route("/v1/messages", post(ingress::messages))
        .route("/v1/embeddings", post(ingress::embeddings))
        .route("/v1/models", get(ingress::models))
        .route("/v1/{*rest}", any(unknown_v1))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(health::readyz))
        .route("/startupz", get(health::startupz))
        .route("/health", get(health::health))
        .fallback(app::proxy);
    let data_plane = if metrics_here {
        data_plane.route("/metrics", get(health::metrics))
    } else {
        data_plane
    }
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
    let app = if hsts {
        app.layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        ))
    } else {
        app
    };
    match cors(&origins) {
        Some(layer) => app.layer(layer),
        None => app,
    }
}

/// `/metrics` alone, for `[metrics] listen`.
pub fn metrics_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .with_state(gw)
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

/// Like [`serve`], over TLS. `shutdown` starts a graceful stop; the caller bounds its length.
pub async fn serve_tls(
    listener: TcpListener,
    tls: crate::tls::Tls,
    gw: Arc<Gateway>,
    control: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(gw, control).into_make_service_with_connect_info::<SocketAddr>();
    let std_listener = listener.into_std()?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(None);
    });
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls.config).acceptor(NoDelay);
    axum_server::from_tcp(std_listener)?
        .acceptor(acceptor)
        .handle(handle)
        .serve(app)
        .await
}

/// Sets `TCP_NODELAY` on each accepted connection before the TLS handshake (see [`serve`]).
#[derive(Clone, Copy)]
struct NoDelay;

impl<S: Send + 'static> axum_server::accept::Accept<tokio::net::TcpStream, S> for NoDelay {
    type Stream = tokio::net::TcpStream;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(tokio::net::TcpStream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let _ = stream.set_nodelay(true);
        std::future::ready(Ok((stream, service)))
    }
}

/// A plain-HTTP listener that sends every request to the same host and path over HTTPS.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().fallback(move |headers: http::HeaderMap, uri: Uri| async move {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        // Drop any port the client used for HTTP; add the HTTPS one unless it is the default.
        let name = match host.rsplit_once(':') {
            Some((name, port))
                if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(']')
                    || name.starts_with('[') && name.ends_with(']') =>
            {
                name
            }
            _ => host,
        };
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        match HeaderValue::from_str(&format!("https://{name}{port}{path}")) {
            Ok(location) => (
                StatusCode::PERMANENT_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response(),
            Err(_) => StatusCode::BAD_REQUEST.into_response(),
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
