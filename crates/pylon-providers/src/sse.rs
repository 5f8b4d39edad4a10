//! Server-sent events: framing a byte stream into whole events, and parsing one event.
//!
//! The relay forwards only whole events, so an upstream failure mid-event can still be followed
//! by a well-formed error event instead of a torn line.

use bytes::{Bytes, BytesMut};

/// Cuts a byte stream at event boundaries (a blank line).
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    /// Feeds a chunk; returns the whole events now available (boundaries included), if any.
    ///
    /// A chunk that is itself whole events, the usual case, is returned without copying.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.buf.is_empty() && ends_with_boundary(&chunk) {
            return Some(chunk);
        }
        self.buf.extend_from_slice(&chunk);
        let end = last_boundary(&self.buf)?;
        Some(self.buf.split_to(end).freeze())
    }

    /// Bytes of an unfinished event still held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

fn ends_with_boundary(b: &[u8]) -> bool {
    b.ends_with(b"\n\n") || b.ends_with(b"\r\n\r\n")
}

/// Index just past the last blank line.
fn last_boundary(b: &[u8]) -> Option<usize> {
    (1..b.len()).rev().find_map(|i| {
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
            f.push(Bytes::from_static(b"data: a\n\n")).unwrap(),
            "data: a\n\n"
        );
        assert!(f.push(Bytes::from_static(b"data: b")).is_none());
        assert_eq!(
            f.push(Bytes::from_static(b"c\n\ndata: d")).unwrap(),
            "data: bc\n\n"
        );
        assert_eq!(f.pending(), 7);
        assert_eq!(
            f.push(Bytes::from_static(b"\r\n\r\n")).unwrap(),
            "data: d\r\n\r\n"
        );
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
