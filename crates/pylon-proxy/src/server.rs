//! The HTTP surface: routes, request-id layers, and serving with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use pylon_types::Dialect;
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::snapshot::Gateway;
use crate::{app, ingress, ProxyError};

/// All of Pylon's HTTP routes.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(ingress::chat))
        .route("/v1/messages", post(ingress::messages))
        .route("/v1/embeddings", post(ingress::embeddings))
        .route("/v1/models", get(ingress::models))
        .route("/v1/{*rest}", any(unknown_v1))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(app::proxy)
        .with_state(gw)
        // Outermost first on the way in: an id is set (or kept) before anything else runs,
        // and copied onto every response, errors included.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
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
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(gw).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
