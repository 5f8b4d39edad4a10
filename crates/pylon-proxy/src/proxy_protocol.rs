//! PROXY protocol (v1 text, v2 binary) on a listener behind a TCP load balancer: the header that
//! opens each connection names the client, whose address then stands in for the peer's in
//! limits, logs and forwarded headers.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A v2 header with TLVs may be long; nothing a load balancer sends comes near this.
const MAX_HEADER: usize = 4096;
/// The longest v1 header line, `\r\n` included (the specification's figure).
const V1_MAX: usize = 107;

/// Why a connection was closed before its first request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    #[error("the connection did not start with a PROXY protocol header")]
    Missing,
    #[error("the PROXY protocol header is malformed")]
    Malformed,
    #[error("the connection closed inside its PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `io`. Returns the client's address (`None` for a
/// `LOCAL` or `UNKNOWN` header: the balancer's own health check, whose peer address stays) and
/// the connection with any bytes read past the header put back in front.
pub(crate) async fn accept<S: AsyncRead + Unpin>(
    mut io: S,
) -> Result<(Option<SocketAddr>, Prefixed<S>), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf)? {
            Some((client, len)) => {
                let rest = buf.split_off(len);
                return Ok((client, Prefixed::new(rest, io)));
            }
            None if buf.len() >= MAX_HEADER => return Err(ProxyHeaderError::Malformed),
            None => {}
        }
    }
}

/// Parses a complete header at the start of `buf`: the client's address and the header's
/// length, or `None` when more bytes are needed.
fn parse(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyHeaderError> {
    use ppp::{HeaderResult, PartialResult};
    const V1: &[u8] = b"PROXY ";
    const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let n = buf.len().min(V2.len());
    if !V1.starts_with(&buf[..n.min(V1.len())]) && !V2.starts_with(&buf[..n]) {
        return Err(ProxyHeaderError::Missing);
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        // A v1 line is at most 107 bytes; one that ended and still does not parse is broken.
        let v1_ended =
            buf.starts_with(V1) && (buf.len() > V1_MAX || buf.windows(2).any(|w| w == b"\r\n"));
        return if v1_ended {
            Err(ProxyHeaderError::Malformed)
        } else {
            Ok(None)
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            use ppp::v1::Addresses;
            let client = match h.addresses {
                Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                Addresses::Unknown => None,
            };
            Ok(Some((client, h.header.len())))
        }
        HeaderResult::V2(Ok(h)) => {
            use ppp::v2::{Addresses, Command};
            let client = match (h.command, h.addresses) {
                (Command::Local, _) => None,
                (_, Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Ok(Some((client, h.len())))
        }
        _ => Err(ProxyHeaderError::Malformed),
    }
}

/// A connection with bytes already read from it put back in front of what follows.
pub(crate) struct Prefixed<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(head: Vec<u8>, inner: S) -> Self {
        Prefixed { head, at: 0, inner }
    }

    /// A connection without a PROXY header (one type for both kinds of listener).
    pub(crate) fn none(inner: S) -> Self {
        Prefixed::new(Vec::new(), inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(out.remaining());
            out.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_and_unknown() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        let (client, len) = parse(h).unwrap().unwrap();
        assert_eq!(client, Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(&h[len..], b"GET / HTTP/1.1\r\n");
        let (client, len) = parse(b"PROXY UNKNOWN\r\nG").unwrap().unwrap();
        assert_eq!((client, len), (None, 15));
    }

    #[test]
    fn incomplete_missing_and_garbage() {
        assert!(parse(b"PROXY TCP4 203.0").unwrap().is_none());
        assert!(parse(b"\r\n\r\n\0\r").unwrap().is_none());
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::Missing)
        ));
        for broken in [
            &b"PROXY TCP4 nonsense here at all\r\n"[..],
            b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\n",
            &[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(20),
        ] {
            assert!(
                matches!(parse(broken), Err(ProxyHeaderError::Malformed)),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    #[test]
    fn v2_ipv6_with_tlvs() {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend([0x21, 0x21, 0, 36 + 4]);
        h.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0; 11]).chain(&[7]));
        h.extend([0; 16]);
        h.extend(51000u16.to_be_bytes());
        h.extend(443u16.to_be_bytes());
        h.extend([1, 0, 1, b'h']);
        h.extend(b"rest");
        let (client, len) = parse(&h).unwrap().unwrap();
        assert_eq!(client, Some("[2001:db8::7]:51000".parse().unwrap()));
        assert_eq!(&h[len..], b"rest");
    }
}
