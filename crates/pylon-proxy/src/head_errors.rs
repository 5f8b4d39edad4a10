//! hyper answers a request head it cannot parse (400) or one too large (431) by itself, with an
//! empty body, before any of Pylon's code runs. This wrapper around a connection recognises those
//! two answers on their way out and sends them with a body in the API's error shape instead, so a
//! client sees the same kind of error whatever layer refused it.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// hyper's own answers, as it writes them (its `date` header follows).
const BAD_HEAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n";
const BIG_HEAD: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n";

/// What is sent in their place.
const BAD_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 165\r\n\r\n{\"error\":{\"code\":\"malformed_request\",\"message\":\"the HTTP request line or headers could not be parsed; check the client\",\"param\":null,\"type\":\"invalid_request_error\"}}";
const BIG_ANSWER: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 159\r\n\r\n{\"error\":{\"code\":\"headers_too_large\",\"message\":\"the request headers are too large; send fewer or smaller headers\",\"param\":null,\"type\":\"invalid_request_error\"}}";

/// A connection whose outgoing bare 400/431 heads are replaced by API-shaped answers.
pub(crate) struct HeadErrors<I> {
    inner: I,
    /// A replacement being written: its bytes, how far, and the length hyper asked to write.
    pending: Option<(&'static [u8], usize, usize)>,
}

impl<I> HeadErrors<I> {
    pub(crate) fn new(inner: I) -> Self {
        HeadErrors {
            inner,
            pending: None,
        }
    }
}

fn replacement(first: &[u8]) -> Option<&'static [u8]> {
    if first.starts_with(BAD_HEAD) {
        Some(BAD_ANSWER)
    } else if first.starts_with(BIG_HEAD) {
        Some(BIG_ANSWER)
    } else {
        None
    }
}

impl<I: AsyncWrite + Unpin> HeadErrors<I> {
    /// Writes the rest of a replacement; `Ready(Ok(n))` with the length hyper wrote once done.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some((bytes, done, claimed)) = self.pending {
            if done == bytes.len() {
                // Stays set: hyper closes the connection after these answers.
                return Poll::Ready(Ok(claimed));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => self.pending = Some((bytes, done + n, claimed)),
                other => return other,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeadErrors<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadErrors<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.pending.is_none() {
            match replacement(buf) {
                Some(r) => self.pending = Some((r, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.drive(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.pending.is_none() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            match replacement(first) {
                Some(r) => {
                    let claimed = bufs.iter().map(|b| b.len()).sum();
                    self.pending = Some((r, 0, claimed));
                }
                None => return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            }
        }
        self.drive(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.drive(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.drive(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answers_carry_their_exact_content_length() {
        for answer in [BAD_ANSWER, BIG_ANSWER] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{head}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(v["error"]["message"].as_str().is_some());
        }
    }

    #[tokio::test]
    async fn bare_heads_are_replaced_and_others_pass_through() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(4096);
        let mut w = HeadErrors::new(a);
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        w.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n")
            .await
            .unwrap();
        w.shutdown().await.unwrap();
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            "{out}"
        );
        assert!(
            out.ends_with(std::str::from_utf8(BIG_ANSWER).unwrap()),
            "{out}"
        );
    }
}
