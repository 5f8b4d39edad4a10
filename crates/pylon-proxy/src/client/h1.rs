//! HTTP/1.1 connections to a provider's own host, pooled per worker on hyper's connection API.
//!
//! hyper-util's pooled client spent ~12k instructions a request on our path: its pool key is
//! hashed (SipHash, byte by byte) at each checkout and check-in, and each HTTP/1 answer spawns
//! a task that waits to put the connection back. A provider's calls all go to one host, so
//! here the pool is a stack of idle connections per worker: the most recent is taken, and the
//! answer's body puts it back when it is dropped, if hyper says the connection wants another
//! request (it does only once the whole answer was read and the server kept it open).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use tower::ServiceExt;

use super::{BoxError, Egress};
use crate::worker::PerWorker;
use pylon_telemetry::metrics::IDLE_CONNECTIONS_DROPPED;

type Sender = SendRequest<Full<Bytes>>;

/// How long a connection may sit idle before it is closed rather than reused (providers close
/// theirs after a minute or two; reusing one they are closing costs a failed attempt).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per worker; more are closed when they come back.
const MAX_IDLE: usize = 1024;

/// The pool for one destination (`scheme://authority`).
pub(crate) struct H1 {
    scheme: Scheme,
    authority: Authority,
    /// Where the connector dials.
    dst: Uri,
    /// The `Host` header every request gets.
    host: HeaderValue,
    connector: HttpsConnector<Egress>,
    idle: PerWorker<Arc<Idle>>,
}

impl H1 {
    /// A pool for `base`'s scheme and host, or `None` if `base` names no host.
    pub fn new(base: &Uri, connector: HttpsConnector<Egress>, workers: usize) -> Option<H1> {
        let scheme = base.scheme()?.clone();
        let authority = base.authority()?.clone();
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => HeaderValue::from_str(authority.as_str()),
            _ => HeaderValue::from_str(authority.host()),
        }
        .ok()?;
        let dst = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        Some(H1 {
            scheme,
            authority,
            dst,
            host,
            connector,
            idle: PerWorker::new(workers, || Arc::new(Idle::new(MAX_IDLE))),
        })
    }

    /// Whether `uri` goes to this pool's destination.
    pub fn serves(&self, uri: &Uri) -> bool {
        uri.scheme() == Some(&self.scheme) && uri.authority() == Some(&self.authority)
    }

    /// Sends `req` (an absolute URI for this destination) on an idle connection, or a new one.
    pub async fn send(&self, mut req: Request<Full<Bytes>>) -> Result<Response<Body>, BoxError> {
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host.clone());
        origin_form(req.uri_mut());
        let idle = self.idle.get();
        while let Some(mut tx) = idle.take() {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(Body::pooled(resp, tx, idle)),
                // The server closed it before the request was written: nothing reached the
                // provider, so the request goes on another connection.
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: the connect and handshake states are kilobytes, and inline they would be part
        // of every request's future (copied at each move) though most requests reuse one.
        Box::pin(self.send_on_new(req, idle)).await
    }

    /// Opens a connection and sends `req` on it.
    async fn send_on_new(
        &self,
        req: Request<Full<Bytes>>,
        idle: &Arc<Idle>,
    ) -> Result<Response<Body>, BoxError> {
        let io = self.connector.clone().oneshot(self.dst.clone()).await?;
        let (mut tx, conn) = http1::handshake(io).await?;
        tokio::spawn(async move {
            // Its errors reach the request (or the next one) through `tx`.
            let _ = conn.await;
        });
        let resp = tx.send_request(req).await?;
        Ok(Body::pooled(resp, tx, idle))
    }
}

/// The URI as an HTTP/1 request line carries it to an origin server: path and query only.
fn origin_form(uri: &mut Uri) {
    if let Some(pq) = uri.path_and_query().cloned() {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(pq);
        if let Ok(u) = Uri::from_parts(parts) {
            *uri = u;
        }
    }
}

/// One worker's idle connections, most recently used last, at most `cap` of them.
pub(crate) struct Idle {
    conns: Mutex<VecDeque<(Sender, Instant)>>,
    cap: usize,
}

impl Idle {
    fn new(cap: usize) -> Idle {
        Idle {
            conns: Mutex::default(),
            cap,
        }
    }

    /// The most recently used connection that can take a request now.
    fn take(&self) -> Option<Sender> {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((tx, since)) = conns.pop_back() {
            // Dropped here: closed by the server, or idle so long the server is likely closing.
            if tx.is_ready() && now.duration_since(since) < IDLE_TIMEOUT {
                return Some(tx);
            }
        }
        None
    }

    fn put(&self, tx: Sender) {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        // The oldest are at the front: those past the idle timeout, or beyond the bound, close.
        while conns
            .front()
            .is_some_and(|(tx, since)| tx.is_closed() || now.duration_since(*since) >= IDLE_TIMEOUT)
        {
            conns.pop_front();
        }
        if conns.len() >= self.cap {
            conns.pop_front();
            IDLE_CONNECTIONS_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        conns.push_back((tx, now));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// An answer's body; on drop, its connection goes back to the pool if it can be reused.
pub(crate) struct Body {
    inner: Incoming,
    back: Option<(Sender, Arc<Idle>)>,
}

impl Body {
    fn pooled(resp: Response<Incoming>, tx: Sender, idle: &Arc<Idle>) -> Response<Body> {
        resp.map(|inner| Body {
            inner,
            back: Some((tx, Arc::clone(idle))),
        })
    }

    /// A body whose connection is not ours to return (hyper-util's client owns it).
    pub fn plain(inner: Incoming) -> Body {
        Body { inner, back: None }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // Ready means hyper read the whole answer and the connection stays open; an answer
        // dropped half-read leaves it busy, and hyper closes it.
        if let Some((tx, idle)) = self.back.take() {
            if tx.is_ready() {
                idle.put(tx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How the test server treats each connection after its first answer.
    #[derive(Clone, Copy)]
    enum Then {
        KeepAlive,
        /// Closes the connection without saying so (`Connection: close` missing), as a server
        /// timing out an idle connection does.
        Close,
        /// Declares a long body, sends a little of it, and stalls.
        Stall,
    }

    /// A raw HTTP/1.1 server on loopback: its base URL and how many connections it accepted.
    async fn server(then: Then) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while memchr::memmem::find(&buf, b"\r\n\r\n").is_none() {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let answer: &[u8] = match then {
                            Then::Stall => b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npart",
                            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        };
                        if sock.write_all(answer).await.is_err() {
                            return;
                        }
                        match then {
                            Then::KeepAlive => {}
                            Then::Close => return,
                            Then::Stall => std::future::pending::<()>().await,
                        }
                    }
                });
            }
        });
        (base, accepted)
    }

    fn pool(base: &Uri) -> H1 {
        let o = super::super::Options {
            connect: Duration::from_secs(5),
            ..Default::default()
        };
        H1::new(base, super::super::connector(&o).unwrap(), 1).unwrap()
    }

    fn get(base: &Uri) -> Request<Full<Bytes>> {
        Request::get(format!("{base}v1/models"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn read_whole(p: &H1, base: &Uri) -> Bytes {
        let resp = p.send(get(base)).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn answers_read_to_the_end_reuse_one_connection() {
        let (base, accepted) = server(Then::KeepAlive).await;
        let p = pool(&base);
        assert!(p.serves(&get(&base).uri().clone()));
        for _ in 0..5 {
            assert_eq!(read_whole(&p, &base).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(p.idle.get().len(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_without_an_error() {
        let (base, accepted) = server(Then::Close).await;
        let p = pool(&base);
        for _ in 0..3 {
            assert_eq!(read_whole(&p, &base).await, "ok");
            // Let the connection's task see the close before the next request.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_answer_dropped_half_read_does_not_return_its_connection() {
        let (base, accepted) = server(Then::Stall).await;
        let p = pool(&base);
        for _ in 0..2 {
            let mut body = p.send(get(&base)).await.unwrap().into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), "part");
            drop(body);
            assert_eq!(p.idle.get().len(), 0, "a busy connection is never pooled");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_beyond_the_bound_are_closed_and_counted() {
        let (base, accepted) = server(Then::KeepAlive).await;
        let mut p = pool(&base);
        p.idle = PerWorker::new(1, || Arc::new(Idle::new(2)));
        let before = IDLE_CONNECTIONS_DROPPED.load(Ordering::Relaxed);
        // Three answers held at once take three connections; two fit back in the pool.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(p.send(get(&base)).await.unwrap());
        }
        for resp in held {
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(p.idle.get().len(), 2);
        assert!(IDLE_CONNECTIONS_DROPPED.load(Ordering::Relaxed) > before);
    }

    #[tokio::test]
    async fn other_hosts_and_schemes_are_not_served() {
        let p = pool(&"http://127.0.0.1:9".parse().unwrap());
        assert!(!p.serves(&"http://127.0.0.1:10/x".parse().unwrap()));
        assert!(!p.serves(&"https://127.0.0.1:9/x".parse().unwrap()));
        assert!(p.serves(&"http://127.0.0.1:9/x?y=1".parse().unwrap()));
    }
}
