//! Server-sent events: framing a byte stream into whole events, and parsing one event.
//!
//! The relay forwards only whole events, so an upstream failure mid-event can still be followed
//! by a well-formed error event instead of a torn line.

use bytes::{Bytes, BytesMut};

/// The largest unfinished event a [`Framer`] holds by default.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// An event grew past the framer's limit without ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an event grew past {0} bytes without ending")]
pub struct TooLarge(pub usize);

/// Cuts a byte stream at event boundaries (a blank line), holding at most `max` bytes of an
/// unfinished event.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    max: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::with_limit(MAX_EVENT_BYTES)
    }
}

impl Framer {
    /// A framer holding at most `max` bytes of an unfinished event.
    pub fn with_limit(max: usize) -> Self {
        Framer {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Feeds a chunk; returns the whole events now available (boundaries included), if any.
    ///
    /// A chunk that is itself whole events, the usual case, is returned without copying. Only
    /// the new bytes are searched for a boundary, so an event arriving in many small pieces
    /// costs time linear in its size.
    pub fn push(&mut self, chunk: Bytes) -> Result<Option<Bytes>, TooLarge> {
        if self.buf.is_empty() && ends_with_boundary(&chunk) {
            return Ok(Some(chunk));
        }
        // What is held has no boundary; one may end up to 3 bytes back (`\r\n\r\n`).
        let from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(&chunk);
        match last_boundary(&self.buf, from) {
            Some(end) => Ok(Some(self.buf.split_to(end).freeze())),
            None if self.buf.len() > self.max => {
                self.buf = BytesMut::new();
                Err(TooLarge(self.max))
            }
            None => Ok(None),
        }
    }

    /// Bytes of an unfinished event still held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

fn ends_with_boundary(b: &[u8]) -> bool {
    b.ends_with(b"\n\n") || b.ends_with(b"\r\n\r\n")
}

/// Index just past the last blank line that ends at or after `from`.
fn last_boundary(b: &[u8], from: usize) -> Option<usize> {
    (from.max(1)..b.len()).rev().find_map(|i| {
        if b[i] != b'\n' {
            return None;
        }
        if b[i - 1] == b'\n' || (i >= 2 && b[i - 1] == b'\r' && b[i - 2] == b'\n') {
            Some(i + 1)
        } else {
            None
        }
    })
}

/// One parsed event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, if any.
    pub name: Option<&'a str>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// Splits whole events into single events (without parsing them).
pub fn events(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = block;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let end = (0..rest.len()).find(|&i| {
            rest[i] == b'\n'
                && (rest[i + 1..].starts_with(b"\n") || rest[i + 1..].starts_with(b"\r\n"))
        });
        let (event, next) = match end {
            Some(i) => {
                let skip = if rest[i + 1] == b'\r' { 3 } else { 2 };
                (&rest[..i], &rest[(i + skip).min(rest.len())..])
            }
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if !event.iter().all(|c| c.is_ascii_whitespace()) {
            return Some(event);
        }
    })
}

/// Parses one event's lines. Invalid UTF-8 lines are skipped.
pub fn parse(event: &[u8]) -> Event<'_> {
    let mut out = Event::default();
    let mut first = true;
    for line in event.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => out.name = Some(value),
            "data" => {
                if !first {
                    out.data.push('\n');
                }
                out.data.push_str(value);
                first = false;
            }
            _ => {}
        }
    }
    out
}

/// Writes one event with an optional name and a one-line JSON data field.
pub fn write(out: &mut Vec<u8>, name: Option<&str>, data: &str) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_passes_whole_chunks_and_joins_torn_ones() {
        let mut f = Framer::default();
        assert_eq!(
            f.push(Bytes::from_static(b"data: a\n\n")).unwrap().unwrap(),
            "data: a\n\n"
        );
        assert!(f.push(Bytes::from_static(b"data: b")).unwrap().is_none());
        assert_eq!(
            f.push(Bytes::from_static(b"c\n\ndata: d"))
                .unwrap()
                .unwrap(),
            "data: bc\n\n"
        );
        assert_eq!(f.pending(), 7);
        assert_eq!(
            f.push(Bytes::from_static(b"\r\n\r\n")).unwrap().unwrap(),
            "data: d\r\n\r\n"
        );
    }

    #[test]
    fn any_split_of_a_stream_gives_the_same_events() {
        let whole: &[u8] = b"data: one\n\nevent: x\ndata: two\r\n\r\ndata: three\n\n";
        for piece in 1..whole.len() {
            let mut f = Framer::default();
            let mut out = Vec::new();
            for chunk in whole.chunks(piece) {
                if let Some(b) = f.push(Bytes::copy_from_slice(chunk)).unwrap() {
                    out.extend_from_slice(&b);
                }
            }
            assert_eq!(out, whole, "pieces of {piece}");
            assert_eq!(f.pending(), 0);
        }
    }

    #[test]
    fn an_endless_event_is_refused_at_the_limit() {
        let mut f = Framer::with_limit(1024);
        let mut refused = None;
        for i in 0..100 {
            if let Err(e) = f.push(Bytes::from(vec![b'x'; 100])) {
                refused = Some((i, e));
                break;
            }
        }
        assert_eq!(refused, Some((10, TooLarge(1024))));
        assert_eq!(f.pending(), 0, "what was held is let go");
    }

    #[test]
    fn events_split_and_parse() {
        let block = b"event: message_start\ndata: {\"a\":1}\n\n: comment\ndata: x\ndata: y\n\ndata: z\r\n\r\n";
        let evs: Vec<_> = events(block).map(parse).collect();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].name, Some("message_start"));
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[1].data, "x\ny");
        assert_eq!(evs[2].data, "z");
    }
}
