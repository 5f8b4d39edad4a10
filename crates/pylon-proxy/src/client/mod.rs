//! Outbound HTTP clients: TLS with the public roots plus configured CAs, TCP and HTTP/2
//! keep-alives, an optional CONNECT proxy, for HTTP/2 providers several connections, and for
//! HTTP/1 providers a pool of our own (`h1`).

mod h1;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::error::BuildError;
use crate::worker::PerWorker;

pub(crate) use h1::Body;

/// Any error of a connection or a request on it (the chain says which).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TCP connection, directly or through an HTTP CONNECT proxy.
#[derive(Clone)]
pub(crate) enum Egress {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

impl tower::Service<Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Egress::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Egress::Tunnel(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Egress::Direct(c) => {
                let f = c.call(dst);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            Egress::Tunnel(c) => {
                let f = c.call(dst);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
        }
    }
}

/// An HTTPS-capable client over [`Egress`].
pub(crate) type HttpsClient<B> = Client<HttpsConnector<Egress>, B>;

/// How to build one client.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options<'a> {
    pub connect: Duration,
    /// Offer HTTP/2 in ALPN (TLS) or speak it with prior knowledge (`h2c`, plain `http://`).
    pub http2: bool,
    /// Only HTTP/2 (prior knowledge on plain connections).
    pub http2_only: bool,
    /// PEM file with extra CA certificates.
    pub ca_file: Option<&'a std::path::Path>,
    /// An HTTP CONNECT proxy (`http://user:pass@host:port`).
    pub proxy: Option<Uri>,
    pub proxy_auth: Option<http::HeaderValue>,
}

/// One client per data-plane worker, built from `o` (the TLS set-up is shared; each has its
/// own connection pool).
pub(crate) fn build<B>(
    o: &Options<'_>,
    workers: usize,
) -> Result<PerWorker<HttpsClient<B>>, BuildError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let connector = connector(o)?;
    Ok(PerWorker::new(workers, || client(connector.clone(), o)))
}

fn connector(o: &Options<'_>) -> Result<HttpsConnector<Egress>, BuildError> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(o.connect));
    http.set_nodelay(true);
    // A dead peer (a NAT that forgot the flow, a provider host gone) is noticed by the kernel.
    http.set_keepalive(Some(Duration::from_secs(30)));
    http.enforce_http(false);
    let egress = match &o.proxy {
        None => Egress::Direct(http),
        Some(uri) => {
            let mut t = Tunnel::new(uri.clone(), http);
            if let Some(auth) = &o.proxy_auth {
                t = t.with_auth(auth.clone());
            }
            Egress::Tunnel(t)
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = o.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| BuildError::Tls(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| BuildError::Tls(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| BuildError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    Ok(match (o.http2_only, o.http2) {
        (true, _) => builder.enable_http2().wrap_connector(egress),
        (false, true) => builder.enable_http1().enable_http2().wrap_connector(egress),
        (false, false) => builder.enable_http1().wrap_connector(egress),
    })
}

fn client<B>(connector: HttpsConnector<Egress>, o: &Options<'_>) -> HttpsClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        // HTTP/2 pings find a dead connection before every stream on it stalls.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .http2_keep_alive_while_idle(true);
    if o.http2_only {
        b.http2_only(true);
    }
    b.build(connector)
}

/// The proxy for `base` from the config, else from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`.
pub(crate) fn proxy_for(
    base: &str,
    configured: Option<&str>,
) -> Result<Option<(Uri, Option<http::HeaderValue>)>, BuildError> {
    let dst: Uri = base
        .parse()
        .map_err(|e| BuildError::Tls(format!("base_url `{base}`: {e}")))?;
    let matcher = match configured {
        Some(p) => hyper_util::client::proxy::matcher::Matcher::builder()
            .all(p.to_owned())
            .build(),
        None => hyper_util::client::proxy::matcher::Matcher::from_env(),
    };
    Ok(matcher
        .intercept(&dst)
        .map(|i| (i.uri().clone(), i.basic_auth().cloned())))
}

/// A provider's connections. HTTP/1 calls to its own host go through [`h1::H1`]; HTTP/2 calls
/// spread over several hyper-util clients per worker, each holding its own connection, so the
/// streams of many requests use `n` connections per worker instead of queueing on one; calls to
/// other hosts (an STS endpoint) go through the first of those.
pub(crate) struct Pool {
    clients: PerWorker<Vec<HttpsClient<http_body_util::Full<bytes::Bytes>>>>,
    next: AtomicUsize,
    h1: Option<h1::H1>,
}

impl Pool {
    /// The connections to the provider at `base`.
    pub fn new(base: &str, n: usize, workers: usize, o: &Options<'_>) -> Result<Pool, BuildError> {
        let connector = connector(o)?;
        let h1 = match o.http2 {
            true => None,
            false => base
                .parse::<Uri>()
                .ok()
                .and_then(|b| h1::H1::new(&b, connector.clone(), workers)),
        };
        let n = if o.http2 { n.max(1) } else { 1 };
        let clients = PerWorker::new(workers, || {
            (0..n).map(|_| client(connector.clone(), o)).collect()
        });
        Ok(Pool {
            clients,
            next: AtomicUsize::new(0),
            h1,
        })
    }

    /// Sends `req` (an absolute URI) and returns the answer's head.
    pub async fn send(
        &self,
        req: http::Request<http_body_util::Full<bytes::Bytes>>,
    ) -> Result<http::Response<Body>, BoxError> {
        if let Some(h1) = self.h1.as_ref().filter(|h| h.serves(req.uri())) {
            return h1.send(req).await;
        }
        let mine = self.clients.get();
        let client = &mine[self.next.fetch_add(1, Ordering::Relaxed) % mine.len()];
        Ok(client.request(req).await?.map(Body::plain))
    }
}
