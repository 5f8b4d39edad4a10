//! App routes: a plain reverse proxy for the application (HTTP/1.1, HTTP/2, WebSocket, SSE).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use pylon_types::Dialect;

use crate::gateway::{Arm, Gateway};
use crate::snapshot::AppRoute;
use crate::ProxyError;

/// Headers that describe one connection and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The fallback handler: proxies to the longest matching app route, or answers 404.
pub(crate) async fn proxy(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let snap = gw.snapshot();
    let Some(route) = snap.routes.iter().find(|r| matches(&r.prefix, &path)) else {
        return ProxyError::NoRoute(path).into_response(Dialect::OpenAi);
    };
    let (parts, body) = req.into_parts();
    let ip = crate::limits::client_ip(&parts, &gw.settings().trusted_proxies);
    if let Err((status, reason, msg)) = admit(route, ip, &parts.headers) {
        gw.metrics
            .rejected
            .with_label_values(&[reason, "route"])
            .inc();
        return refusal(status, msg);
    }
    if let Some(rpm) = route.rpm {
        if let Some(limited) = crate::limits::admit_route(&gw, &route.prefix, rpm, ip).await {
            return limited;
        }
    }
    // Held until the answer's body ends (or the tunnel closes), so a slow download counts.
    let permit = match &route.slots {
        None => None,
        Some(slots) => match slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                gw.metrics
                    .rejected
                    .with_label_values(&["route_busy", "route"])
                    .inc();
                let mut resp = refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this route is at its limit of requests in progress; retry shortly",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            }
        },
    };
    let started = std::time::Instant::now();
    let m = &gw.metrics;
    m.in_flight
        .with_label_values(&[route.prefix.as_str()])
        .inc();
    let arm = snap.route_rollouts.get(&route.prefix).and_then(|c| {
        let state = gw.rollout(&c.spec.name)?;
        let caller = crate::rollout::Caller {
            principal: None,
            user: None,
            parts: &parts,
            ip,
        };
        let arm = caller.arm(&c.spec, state.weights().0);
        Some((state, arm, &c.upstream))
    });
    let upstream = arm.as_ref().map_or(&route.upstream, |(_, a, u)| match a {
        Arm::Candidate => u,
        Arm::Stable => &route.upstream,
    });
    let req = Request::from_parts(parts, body);
    let arm_name = arm.as_ref().map_or("", |(_, a, _)| a.as_str());
    let mut resp = match crate::app_cache::Lookup::new(route, &req, arm_name, &m.edge_cache) {
        Some(lookup) => match lookup.hit(req.headers()) {
            Some(hit) => hit,
            None => {
                let resp = respond(route, upstream, req, permit).await;
                lookup.keep(with_header_rules(route, resp)).await
            }
        },
        None => with_header_rules(route, respond(route, upstream, req, permit).await),
    };
    if let Some((state, arm, _)) = &arm {
        let error = resp.status().is_server_error();
        state.observe(
            *arm,
            error,
            started.elapsed().as_secs_f64() * 1000.0,
            None,
            0.0,
        );
        resp.headers_mut()
            .insert("x-pylon-arm", http::HeaderValue::from_static(arm.as_str()));
    }
    m.in_flight
        .with_label_values(&[route.prefix.as_str()])
        .dec();
    let class = pylon_telemetry::status_class(resp.status().as_u16());
    m.requests
        .with_label_values(&[route.prefix.as_str(), "-", "-", class])
        .inc();
    m.request_duration
        .with_label_values(&[route.prefix.as_str(), "-"])
        .observe(started.elapsed().as_secs_f64());
    resp.extensions_mut().insert(crate::server::AppRoute);
    if route.compress {
        resp.extensions_mut().insert(crate::server::Compress);
    }
    resp
}

/// The route's own admission rules: denied and allowed networks, and a declared body size over
/// the route's limit. Err: the status, the metric reason and what the client is told.
fn admit(
    route: &AppRoute,
    ip: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, &'static str, &'static str)> {
    if !route.deny.is_empty() || !route.allow.is_empty() {
        let inside = |nets: &[(std::net::IpAddr, u8)]| {
            ip.is_some_and(|ip| {
                let ip = ip.to_canonical();
                nets.iter().any(|n| pylon_config::cidr_contains(*n, ip))
            })
        };
        if inside(&route.deny) || (!route.allow.is_empty() && !inside(&route.allow)) {
            return Err((
                StatusCode::FORBIDDEN,
                "ip_denied",
                "your address may not use this route",
            ));
        }
    }
    if let Some(max) = route.max_body_bytes {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this route accepts",
            ));
        }
    }
    Ok(())
}

/// A plain-text refusal of Pylon's own on an app route.
fn refusal(status: StatusCode, msg: &'static str) -> Response {
    let mut resp = Response::new(Body::from(msg));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Removes the route's hidden headers, then adds its response headers the application did not
/// set — on successful and redirect answers only, as nginx's `add_header` does, so an error is
/// never made cacheable for a year.
pub(crate) fn with_header_rules(route: &AppRoute, mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for name in &route.hide_headers {
        h.remove(name);
    }
    let status = resp.status().as_u16();
    if matches!(status, 200..=206 | 301..=304 | 307 | 308) {
        let h = resp.headers_mut();
        for (name, value) in &route.response_headers {
            if !h.contains_key(name) {
                h.insert(name.clone(), value.clone());
            }
        }
    }
    resp
}

async fn respond(
    route: &AppRoute,
    upstream: &Uri,
    req: Request,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match forward(route, upstream, req, permit).await {
        Ok(resp) => resp,
        Err((status, msg)) => {
            tracing::warn!(target: "pylon::app", request_id, prefix = %route.prefix, error = %msg, "app route failed");
            let mut resp = Response::new(Body::from(msg));
            *resp.status_mut() = status;
            resp
        }
    }
}

/// `/app/` matches `/app/x` and `/app`; `/app` matches `/app/x` but not `/apple`.
fn matches(prefix: &str, path: &str) -> bool {
    let bare = prefix.trim_end_matches('/');
    path.starts_with(prefix)
        || path == bare
        || (path.starts_with(bare) && path[bare.len()..].starts_with('/'))
}

fn upstream_uri(route: &AppRoute, upstream: &Uri, uri: &Uri) -> Result<Uri, (StatusCode, String)> {
    let path = uri.path();
    let rest = if route.strip_prefix {
        let stripped = path
            .strip_prefix(route.prefix.trim_end_matches('/'))
            .unwrap_or(path);
        if stripped.starts_with('/') {
            stripped.to_owned()
        } else {
            format!("/{stripped}")
        }
    } else {
        path.to_owned()
    };
    let base = upstream.path().trim_end_matches('/');
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let scheme = upstream.scheme_str().unwrap_or("http");
    let authority = upstream.authority().map(|a| a.as_str()).unwrap_or("");
    format!("{scheme}://{authority}{base}{rest}{query}")
        .parse()
        .map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                "the request path cannot be forwarded".to_owned(),
            )
        })
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(h);
    }
}

async fn forward(
    route: &AppRoute,
    upstream: &Uri,
    mut req: Request,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Response, (StatusCode, String)> {
    let upgrade = is_upgrade(req.headers());
    let upgrade_proto = req.headers().get(header::UPGRADE).cloned();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let uri = upstream_uri(route, upstream, req.uri())?;
    let (mut parts, body) = req.into_parts();

    // HTTP/2 clients name the host in `:authority`, not `Host`.
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let secure = parts
        .extensions
        .get::<crate::context::Secure>()
        .is_some_and(|s| s.0);
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if let Some(ip) = peer {
        let xff = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
    }
    let proto = if secure { "https" } else { "http" };
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if route.forwarded {
        let element = forwarded_element(peer, host.as_ref(), proto);
        let value = match parts
            .headers
            .get(header::FORWARDED)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {element}"),
            None => element,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert(header::FORWARDED, v);
        }
    }
    if let Some(h) = host {
        if route.preserve_host {
            parts.headers.insert(header::HOST, h.clone());
        }
        parts.headers.insert("x-forwarded-host", h);
    }
    if let (true, Some(proto)) = (upgrade, upgrade_proto) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto);
    }
    parts.uri = uri;
    // HTTP/2 clients may arrive here; the upstream connection decides its own version.
    parts.version = http::Version::HTTP_11;
    if route.http2 {
        parts.version = http::Version::HTTP_2;
    }
    let body = match route.max_body_bytes {
        _ if upgrade => Body::empty(),
        Some(max) => Body::new(http_body_util::Limited::new(body, max)),
        None => body,
    };
    let upstream_req = hyper::Request::from_parts(parts, body);

    let started = Instant::now();
    let t = route.timeouts;
    let mut resp =
        match tokio::time::timeout(t.first_byte, route.client.get().request(upstream_req)).await {
            Err(_) => {
                return Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    "the application did not answer in time".into(),
                ))
            }
            Ok(Err(e)) if body_too_large(&e) => {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than this route accepts".into(),
                ))
            }
            Ok(Err(e)) => {
                return Err((
                    StatusCode::BAD_GATEWAY,
                    format!("the application is unreachable: {e}"),
                ))
            }
            Ok(Ok(r)) => r,
        };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err((
                StatusCode::BAD_GATEWAY,
                "the application switched protocols unasked".into(),
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let idle = t.idle;
        tokio::spawn(async move {
            let _permit = permit;
            let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                return;
            };
            tunnel(TokioIo::new(client), TokioIo::new(upstream), idle).await;
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let idle = t.idle;
    let deadline = t.total.map(|d| started + d);
    let stream = futures_util::stream::unfold(Some((body, permit)), move |state| async move {
        let (mut body, permit) = state?;
        let wait = deadline.map_or(idle, |d| {
            idle.min(d.saturating_duration_since(Instant::now()))
        });
        loop {
            return match tokio::time::timeout(wait, body.frame()).await {
                Err(_) => Some((Err(std::io::Error::other("app route timed out")), None)),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Some((Ok(data), Some((body, permit)))),
                    Err(_) => continue,
                },
            };
        }
    });
    // Fused: a layer that polls once more after the end (a compressor flushing) gets `None`.
    let stream = futures_util::StreamExt::fuse(stream);
    Ok(Response::from_parts(parts, Body::from_stream(stream)))
}

/// One element of RFC 7239's `Forwarded` header: `for`, `host` and `proto`, quoted where the
/// grammar needs it (IPv6 addresses, ports).
fn forwarded_element(
    peer: Option<std::net::IpAddr>,
    host: Option<&HeaderValue>,
    proto: &str,
) -> String {
    let mut e = String::new();
    match peer {
        Some(std::net::IpAddr::V6(ip)) => e.push_str(&format!("for=\"[{ip}]\"")),
        Some(ip) => e.push_str(&format!("for={ip}")),
        None => e.push_str("for=unknown"),
    }
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        if !h.contains(['"', '\\']) {
            e.push_str(&format!(";host=\"{h}\""));
        }
    }
    e.push_str(&format!(";proto={proto}"));
    e
}

/// Whether sending the body failed because it passed the route's size limit.
fn body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Copies both ways until both sides close, or until neither side sent anything for `idle`
/// (a WebSocket nobody uses must not hold two connections forever).
async fn tunnel<A, B>(a: A, b: B, idle: Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let both = async {
        let _ = tokio::join!(
            copy_noting(&mut ar, &mut bw, &last, start),
            copy_noting(&mut br, &mut aw, &last, start)
        );
    };
    let watchdog = async {
        loop {
            let quiet_until = Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            let now = start.elapsed();
            if now >= quiet_until {
                return;
            }
            tokio::time::sleep(quiet_until - now).await;
        }
    };
    tokio::select! {
        () = both => {}
        () = watchdog => {}
    }
}

/// Copies `r` to `w` until `r` closes, noting when bytes last passed (ms since `start`).
async fn copy_noting<R, W>(
    r: &mut R,
    w: &mut W,
    last: &std::sync::atomic::AtomicU64,
    start: Instant,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        last.store(
            start.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}
