//! The HTTP surface: routes, request-id layers, and serving with graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use http::{header, HeaderValue};
use pylon_types::Dialect;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::context::Secure;
use crate::gateway::Gateway;
use crate::{app, conversation, count, health, ingress, ofrep, pipeline, ProxyError};

/// What the per-connection service returns for one request.
type ServiceFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

/// Marks an app route's answer as one to compress (the route's `compress`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compress;

/// Compresses what is worth it: larger than 1 KiB, not already compressed, not an image, not an
/// event stream (SSE must stay live), and — on app routes — only for routes that ask.
#[derive(Debug, Clone, Copy)]
struct Worth;

impl tower_http::compression::Predicate for Worth {
    fn should_compress<B: http_body::Body>(&self, response: &http::Response<B>) -> bool {
        use tower_http::compression::predicate::{NotForContentType, SizeAbove};
        let app_route = response.extensions().get::<AppRoute>().is_some();
        (!app_route || response.extensions().get::<Compress>().is_some())
            && SizeAbove::new(1024).should_compress(response)
            && NotForContentType::IMAGES.should_compress(response)
            && NotForContentType::SSE.should_compress(response)
            && NotForContentType::GRPC.should_compress(response)
            && ALREADY_COMPRESSED
                .iter()
                .all(|t| NotForContentType::const_new(t).should_compress(response))
    }
}

/// Content types that are compressed already: compressing them again only costs CPU.
const ALREADY_COMPRESSED: [&str; 6] = [
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/zstd",
    "application/octet-stream",
    "font/woff2",
];

/// An app route's answer (compressed only when the route says so).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AppRoute;

fn compression() -> tower_http::compression::CompressionLayer<Worth> {
    tower_http::compression::CompressionLayer::new()
        .gzip(true)
        .br(true)
        .zstd(true)
        // The codecs' "default" makes brotli 11, meant for files compressed once, not per
        // answer. At 4, gzip (zlib-rs) costs less CPU than nginx's gzip at 4, zstd less still,
        // brotli about 4× gzip (bench --only-edge); zstd wins ties in Accept-Encoding.
        .quality(tower_http::CompressionLevel::Precise(COMPRESSION_LEVEL))
        .compress_when(Worth)
}

/// The compression level for gzip, brotli and zstd alike.
pub const COMPRESSION_LEVEL: i32 = 4;

/// All of Pylon's HTTP routes; `control` (the admin API, docs) is mounted beside the data plane.
pub fn router(gw: Arc<Gateway>, control: Router) -> Router {
    let origins = gw.cors_origins.clone();
    let hsts = gw.hsts;
    let metrics_here = gw.metrics_on_main;
    let own = gw.compression;
    // Pylon's own JSON and pages are compressed when the client accepts it; app routes when
    // their config asks; the AI endpoints never (their cost is per request, on the hot path).
    let control = if own {
        control.layer(compression())
    } else {
        control
    };
    let ofrep = if own {
        ofrep::routes().layer(compression())
    } else {
        ofrep::routes()
    };
    let apps = tower::ServiceBuilder::new()
        .layer(compression())
        .service(any(app::proxy).with_state(gw.clone()));
    let data_plane = Router::new()
        .route("/v1/chat/completions", post(pipeline::chat))
        .route("/v1/messages", post(pipeline::messages))
        .route("/v1/embeddings", post(pipeline::embeddings))
        .route("/v1/responses", post(pipeline::responses))
        .route("/v1/completions", post(pipeline::completions))
        .route("/v1/messages/count_tokens", post(count::count_tokens))
        .route("/v1/models/{*id}", get(ingress::model))
        .route(
            "/v1/responses/{id}",
            get(conversation::get).delete(conversation::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(conversation::input_items),
        )
        .route("/v1/models", get(ingress::models))
        .route("/v1/{*rest}", any(unknown_v1))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(health::readyz))
        .route("/startupz", get(health::startupz))
        .route("/health", get(health::health))
        .merge(ofrep)
        .fallback_service(apps);
    let data_plane = if metrics_here {
        data_plane.route("/metrics", get(health::metrics))
    } else {
        data_plane
    }
    .with_state(gw);
    let app = control
        .merge(data_plane)
        .layer(axum::middleware::map_response_with_state(
            hsts,
            security_headers,
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

/// `/metrics` alone, for `[metrics] listen`.
pub fn metrics_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .with_state(gw)
}

/// The security headers of every response, in one pass: no sniffing, framing or referrer; HSTS
/// behind TLS; and HTML pages (the API docs) may load only what Pylon itself serves. A header a
/// handler set itself is kept.
async fn security_headers(
    axum::extract::State(hsts): axum::extract::State<bool>,
    mut resp: Response,
) -> Response {
    add_security_headers(&mut resp, hsts);
    resp
}

/// What [`security_headers`] adds, for answers made without the router.
pub(crate) fn add_security_headers(resp: &mut Response, hsts: bool) {
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/html"));
    let h = resp.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
    if hsts {
        h.entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    }
    if html {
        // A page that sets its own, stricter policy (the dashboard) keeps it.
        h.entry(header::CONTENT_SECURITY_POLICY).or_insert(
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        );
    }
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

/// The request id header, set on every request that lacks one and copied onto its answer.
pub(crate) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Request ids as random (version 4) UUIDs from a thread-local PRNG: unique enough for
/// correlation, and unlike the OS generator it costs no system call per request.
#[derive(Clone, Copy)]
struct FastRequestId;

impl MakeRequestId for FastRequestId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        new_request_id().map(RequestId::new)
    }
}

/// A new request id (see [`FastRequestId`]).
pub(crate) fn new_request_id() -> Option<HeaderValue> {
    let bits = (fastrand::u128(..) & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::from_u128(bits)
        .hyphenated()
        .encode_lower(&mut buf);
    HeaderValue::from_str(text).ok()
}

async fn unknown_v1(uri: Uri) -> Response {
    ProxyError::NoRoute(uri.path().to_owned()).into_response(Dialect::OpenAi)
}

/// The data plane on `gw`'s worker threads, each with a single-threaded runtime of its own, all
/// accepting from `listener`. A request, the upstream connection it uses and the tasks it spawns
/// stay on one thread: no cross-thread wake-ups or work stealing on the request path, which
/// cost a multi-threaded runtime about a third more CPU per proxied request. Background work
/// (the ledger, key refresh, health checks) stays on the runtime that calls this.
pub struct Workers {
    stop: tokio::sync::watch::Sender<bool>,
    release: tokio::sync::watch::Sender<bool>,
    finished: Vec<tokio::sync::oneshot::Receiver<std::io::Result<()>>>,
}

impl Workers {
    /// Starts the workers; they serve until [`Workers::stop`].
    pub fn start(
        listener: std::net::TcpListener,
        tls: Option<crate::tls::Tls>,
        gw: Arc<Gateway>,
        control: Router,
    ) -> std::io::Result<Workers> {
        listener.set_nonblocking(true)?;
        let edge = gw.edge.clone();
        let app = router(gw.clone(), control);
        // The connection cap is the process's, not each worker's.
        let slots = Arc::new(tokio::sync::Semaphore::new(edge.max_connections));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (release, release_rx) = tokio::sync::watch::channel(false);
        let mut finished = Vec::with_capacity(edge.workers);
        for i in 0..edge.workers {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let listener = listener.try_clone()?;
            let (done, finished_rx) = tokio::sync::oneshot::channel();
            finished.push(finished_rx);
            let (tls, app, gw, edge, slots) = (
                tls.clone(),
                app.clone(),
                gw.clone(),
                edge.clone(),
                slots.clone(),
            );
            let (mut stop_rx, mut release_rx) = (stop_rx.clone(), release_rx.clone());
            std::thread::Builder::new()
                .name(format!("pylon-worker-{i}"))
                .spawn(move || {
                    crate::worker::set_index(i);
                    runtime.block_on(async move {
                        tokio::spawn(keep_timer_near());
                        let served = match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let stopped = async move {
                                    let _ = stop_rx.wait_for(|s| *s).await;
                                };
                                accept_loop(listener, tls, app, gw, edge, slots, stopped).await
                            }
                            Err(e) => Err(e),
                        };
                        let _ = done.send(served);
                        // Tasks spawned here (settlements, cache writes) run until released.
                        let _ = release_rx.wait_for(|r| *r).await;
                    });
                })?;
        }
        Ok(Workers {
            stop,
            release,
            finished,
        })
    }

    /// Stops accepting and waits until every worker's connections have ended (the caller
    /// bounds the wait); the first error any worker met, if one did.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        let mut result = Ok(());
        for f in self.finished.drain(..) {
            match f.await {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                _ => {}
            }
        }
        result
    }

    /// Lets the worker threads end once background work they hold has been drained.
    pub fn release(self) {
        let _ = self.release.send(true);
    }
}

/// Ticks every second for as long as the worker runs. Tokio wakes its driver (an eventfd write
/// and one more `epoll_wait`) whenever a timer is registered earlier than the driver's next
/// planned wake-up; without a near timer that is the connection pool's idle timer, a minute or
/// more away, so every request's own timeouts (seconds away) paid that at low concurrency. A
/// tick nearer than any request's timeout keeps the planned wake-up ahead of them.
async fn keep_timer_near() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Accepts connections within the connection cap, with a header-read timeout (slowloris), a
/// TLS handshake deadline, and graceful shutdown. Connections over the cap get one 503 with
/// `Retry-After` and are closed.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<crate::tls::Tls>,
    app: Router,
    gw: Arc<Gateway>,
    edge: crate::gateway::Edge,
    slots: Arc<tokio::sync::Semaphore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(edge.header_read_timeout))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(Some(edge.http2_max_streams))
        .keep_alive_interval(Some(std::time::Duration::from_secs(20)));
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let secure = tls.is_some();
    let direct = gw.cors_origins.is_empty();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(target: "pylon::server", error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let permit = slots.clone().try_acquire_owned().ok();
        let app = app.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let handshake = edge.header_read_timeout;
        let proxy_protocol = edge.proxy_protocol;
        let watcher = graceful.watcher();
        let gw = gw.clone();
        tokio::spawn(async move {
            let Some(permit) = permit else {
                gw.metrics.shed.with_label_values(&["connections"]).inc();
                let shed = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(overloaded())
                });
                let mut one = hyper::server::conn::http1::Builder::new();
                one.timer(TokioTimer::new())
                    .header_read_timeout(Some(handshake))
                    .keep_alive(false);
                if tls.is_none() && !proxy_protocol {
                    let _ = one
                        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(shed))
                        .await;
                }
                return;
            };
            // Behind a TCP load balancer the header names the client; within the same deadline
            // as a request head, or the connection is closed.
            let (peer, tcp) = if proxy_protocol {
                match tokio::time::timeout(handshake, crate::proxy_protocol::accept(tcp)).await {
                    Ok(Ok((client, io))) => (client.unwrap_or(peer), io),
                    Ok(Err(e)) => {
                        gw.metrics.proxy_protocol_errors.inc();
                        tracing::debug!(target: "pylon::server", %peer, error = %e, "connection closed");
                        return;
                    }
                    Err(_) => {
                        gw.metrics.proxy_protocol_errors.inc();
                        return;
                    }
                }
            } else {
                (peer, crate::proxy_protocol::Prefixed::none(tcp))
            };
            let draining = gw.clone();
            let service =
                tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req.extensions_mut().insert(Secure(secure));
                    // The AI endpoints skip the router when no layer of it is specific to them
                    // (CORS adds its headers to every answer, so with CORS all go through it).
                    let direct = (direct && req.method() == http::Method::POST)
                        .then(|| pipeline::api_of(req.uri().path()))
                        .flatten();
                    let mut app = app.clone();
                    let http1 = req.version() < http::Version::HTTP_2;
                    let gw = draining.clone();
                    // Boxed, so hyper's per-request state holds a pointer: the request's future
                    // is kilobytes, and hyper moves what the service returns.
                    let fut: ServiceFuture = Box::pin(async move {
                        use tower::Service;
                        let req = req.map(axum::body::Body::new);
                        let mut resp = match direct {
                            Some(api) => pipeline::direct(gw.clone(), req, api, gw.hsts).await,
                            None => app.call(req).await?,
                        };
                        // Draining: each keep-alive connection is closed after its next answer, by
                        // the server, so a client never sends into a connection being closed under it.
                        if http1 && gw.draining.load(std::sync::atomic::Ordering::Relaxed) {
                            resp.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok(resp)
                    });
                    fut
                });
            let service = TowerToHyperService::new(service);
            match tls {
                None => {
                    let io = TokioIo::new(crate::head_errors::HeadErrors::new(tcp));
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(tls) => {
                    let Ok(Some(stream)) =
                        tokio::time::timeout(handshake, tls_handshake(&tls, tcp)).await
                    else {
                        return;
                    };
                    let io = TokioIo::new(crate::head_errors::HeadErrors::new(stream));
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    // Busy HTTP/1 connections close themselves after their next answer (above); those still
    // open after a moment are idle, and are closed now (HTTP/2 ones get GOAWAY).
    let lame_duck = tokio::time::Instant::now() + LAME_DUCK;
    while graceful.count() > 0 && tokio::time::Instant::now() < lame_duck {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    graceful.shutdown().await;
    Ok(())
}

/// Completes a TLS handshake; `None` when it fails or was a TLS-ALPN-01 validation (answered
/// with the challenge certificate, then closed).
async fn tls_handshake<IO>(
    tls: &crate::tls::Tls,
    io: IO,
) -> Option<tokio_rustls::server::TlsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(challenges) = tls.alpn_challenges() else {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.get_inner());
        return acceptor.accept(io).await.ok();
    };
    // Read the ClientHello first: a CA validating this name offers only `acme-tls/1`.
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
        .await
        .ok()?;
    let hello = start.client_hello();
    let validation = hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == crate::tls::challenges::ACME_TLS_ALPN));
    if validation {
        let domain = hello.server_name()?.to_owned();
        let config = challenges.alpn01(&domain).await?;
        let mut stream = start.into_stream(config).await.ok()?;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        return None;
    }
    start.into_stream(tls.config.get_inner()).await.ok()
}

/// How long, once accepting stopped, keep-alive connections get to close after an answer
/// before idle ones are closed by the server.
const LAME_DUCK: std::time::Duration = std::time::Duration::from_secs(1);

/// The answer to a connection or request over Pylon's limits.
pub(crate) fn overloaded() -> Response {
    ProxyError::Overloaded("Pylon is at its connection or request limit; retry shortly".into())
        .into_response(Dialect::OpenAi)
}

/// A plain-HTTP listener that sends every request to the same host and path over HTTPS.
/// ACME HTTP-01 challenges are answered here rather than redirected.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    challenges: Option<Arc<crate::tls::challenges::Challenges>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = Router::new();
    if let Some(challenges) = challenges {
        app = app.route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                move |axum::extract::Path(token): axum::extract::Path<String>| async move {
                    match challenges.http01(&token).await {
                        Some(answer) => {
                            ([(header::CONTENT_TYPE, "application/octet-stream")], answer)
                                .into_response()
                        }
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                },
            ),
        );
    }
    let app = app.fallback(move |headers: http::HeaderMap, uri: Uri| async move {
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
