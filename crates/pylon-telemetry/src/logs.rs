//! The log writer: each line is copied into one bounded buffer that a background thread writes
//! out in batches. A line costs the request path a short lock and a copy — never a syscall, an
//! allocation per line, or waking a thread (a channel per line cost a wake-up each: 7 % of the
//! gateway's CPU under load went to the old writer's thread).

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

/// Lines dropped because the buffer was full (stdout slower than the log rate), process-wide;
/// reported as `pylon_bounded_drops_total{what="log_line"}`.
pub static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// The flusher is woken early once this much is buffered.
const WAKE_AT: usize = 64 * 1024;
/// Most bytes buffered; lines beyond are dropped and counted.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;
/// The longest a line waits to be written.
const INTERVAL: Duration = Duration::from_millis(50);

struct Shared {
    buf: Mutex<Vec<u8>>,
    flusher: OnceLock<Thread>,
    stop: AtomicBool,
}

impl Shared {
    fn push(&self, line: &[u8]) {
        let Ok(mut buf) = self.buf.lock() else {
            return;
        };
        if buf.len() + line.len() > MAX_BUFFERED {
            drop(buf);
            DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = buf.len();
        buf.extend_from_slice(line);
        let wake = before < WAKE_AT && buf.len() >= WAKE_AT;
        drop(buf);
        if wake {
            if let Some(t) = self.flusher.get() {
                t.unpark();
            }
        }
    }
}

/// Hands out writers for the log subscriber (`tracing_subscriber`'s `MakeWriter`).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes what is buffered and stops the flusher when dropped (at exit).
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// A writer whose lines go to `out` from a background thread.
    pub fn new(mut out: impl Write + Send + 'static) -> (LogWriter, FlushGuard) {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
            flusher: OnceLock::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pylon-log".into())
            .spawn(move || {
                let mut spare: Vec<u8> = Vec::with_capacity(WAKE_AT * 2);
                loop {
                    let stop = s.stop.load(Ordering::Acquire);
                    if let Ok(mut buf) = s.buf.lock() {
                        std::mem::swap(&mut *buf, &mut spare);
                    }
                    if !spare.is_empty() {
                        // Nowhere to report a failed write to stdout; the lines are lost.
                        let _ = out.write_all(&spare).and_then(|()| out.flush());
                        spare.clear();
                        // A burst's buffer is not kept for good.
                        if spare.capacity() > 4 * WAKE_AT {
                            spare = Vec::with_capacity(WAKE_AT * 2);
                        }
                    }
                    if stop {
                        return;
                    }
                    std::thread::park_timeout(INTERVAL);
                }
            })
            .ok();
        if let Some(t) = &thread {
            let _ = shared.flusher.set(t.thread().clone());
        }
        (
            LogWriter {
                shared: shared.clone(),
            },
            FlushGuard { shared, thread },
        )
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// One event's writer: the formatter writes its whole line in one call.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.push(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.shared)
    }
}

/// One JSON object per event, fields at the top level:
/// `{"timestamp":…,"level":"INFO","message":…,<fields>,"target":…}`. Built in a per-thread
/// `String` with plain pushes and integer/float printers, then handed over in one write: the
/// generic JSON formatter went through serde and an I/O adaptor per value (5 % of the gateway's
/// CPU under load), and writing each piece through the subscriber's `dyn Write` cost ~500
/// instructions a field.
pub struct JsonLines;

/// A line's buffer is kept for the thread's next line unless it grew past this.
const KEEP_LINE: usize = 64 * 1024;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        thread_local! {
            static LINE: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
        }
        let mut line = LINE.take();
        line.clear();
        json_line(&mut line, event, std::time::SystemTime::now());
        let written = w.write_str(&line);
        if line.capacity() <= KEEP_LINE {
            LINE.set(line);
        }
        written
    }
}

/// `event` as one JSON object and a newline.
fn json_line(out: &mut String, event: &tracing::Event<'_>, now: std::time::SystemTime) {
    let meta = event.metadata();
    out.push_str("{\"timestamp\":\"");
    timestamp(out, now);
    out.push_str("\",\"level\":\"");
    out.push_str(meta.level().as_str());
    out.push('"');
    event.record(&mut JsonFields(out));
    out.push_str(",\"target\":");
    escaped(out, meta.target());
    out.push_str("}\n");
}

/// RFC 3339 in UTC with microseconds (`2026-12-07T13:05:09.123456Z`). The part up to the
/// seconds is formatted once per second per thread.
fn timestamp(out: &mut String, now: std::time::SystemTime) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != secs {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days as i64);
            cell.1.clear();
            // Writing to a String cannot fail.
            let _ = write!(
                cell.1,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            );
            cell.0 = secs;
        }
        out.push_str(&cell.1);
    });
    let mut n = since.subsec_micros();
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend(digits.iter().map(|&d| char::from(d)));
    out.push('Z');
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes each field as `,"name":value`.
struct JsonFields<'a>(&'a mut String);

impl JsonFields<'_> {
    /// `,"name":` then `value` as is (a JSON number, literal or string already quoted).
    fn raw(&mut self, field: &tracing::field::Field, value: &str) {
        self.name(field);
        self.0.push_str(value);
    }

    fn name(&mut self, field: &tracing::field::Field) {
        self.0.push_str(",\"");
        self.0.push_str(field.name());
        self.0.push_str("\":");
    }
}

impl tracing::field::Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &tracing::field::Field, v: f64) {
        if v.is_finite() {
            self.raw(field, ryu::Buffer::new().format_finite(v));
        } else {
            self.raw(field, "null");
        }
    }
    fn record_i64(&mut self, field: &tracing::field::Field, v: i64) {
        self.raw(field, itoa::Buffer::new().format(v));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, v: u64) {
        self.raw(field, itoa::Buffer::new().format(v));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, v: bool) {
        self.raw(field, if v { "true" } else { "false" });
    }
    fn record_str(&mut self, field: &tracing::field::Field, v: &str) {
        self.name(field);
        escaped(self.0, v);
    }
    fn record_debug(&mut self, field: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.name(field);
        self.0.push('"');
        // Writing to a String cannot fail.
        let _ = write!(Escape(&mut *self.0), "{v:?}");
        self.0.push('"');
    }
}

/// Writes `s` as a JSON string, quotes included.
fn escaped(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

/// Bytes that cannot stand as themselves inside a JSON string: controls, `"` and `\`.
static ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Whether any of the eight bytes in `w` must be escaped: a control (below 0x20), `"` or `\`.
/// Per-byte tests of a whole word at once (exact: no false positives or negatives).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
    below_space
        || zero_byte(w ^ (ONES * u64::from(b'"')))
        || zero_byte(w ^ (ONES * u64::from(b'\\')))
}

/// `s` escaped for the inside of a JSON string.
fn escape_into(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    // Most values need no escaping: whole words are checked first, then one push.
    let mut clean = 0;
    for word in bytes.chunks_exact(8) {
        let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
        if word_needs_escape(w) {
            break;
        }
        clean += 8;
    }
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        if !ESCAPE[usize::from(b)] {
            continue;
        }
        out.push_str(&s[from..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
}

/// Escapes what is written through it (a `Debug` value's text).
struct Escape<'a>(&'a mut String);

impl std::fmt::Write for Escape<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared sink standing in for stdout.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_and_the_guard_writes_the_rest() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::new(sink.clone());
        for i in 0..1000 {
            w.shared.push(format!("line {i}\n").as_bytes());
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "line 999");
    }

    #[test]
    fn a_full_buffer_drops_and_counts_whole_lines() {
        // A writer whose output never drains: the flusher is stuck in the first write.
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (release, rx) = std::sync::mpsc::channel();
        let (w, guard) = LogWriter::new(Stuck(rx));
        let line = vec![b'x'; 1024];
        let before = DROPPED_LINES.load(Ordering::Relaxed);
        for _ in 0..(3 * MAX_BUFFERED / 1024) {
            w.shared.push(&line);
        }
        let buffered = w.shared.buf.lock().unwrap().len();
        assert!(buffered <= MAX_BUFFERED, "{buffered}");
        assert_eq!(buffered % 1024, 0, "only whole lines are kept");
        assert!(DROPPED_LINES.load(Ordering::Relaxed) - before >= MAX_BUFFERED as u64 / 1024);
        drop(release);
        drop(guard);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u32| {
            let mut s = String::new();
            timestamp(
                &mut s,
                std::time::UNIX_EPOCH + Duration::new(secs, micros * 1_000),
            );
            s
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_795_400_000, 123_456), "2026-11-23T02:13:20.123456Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        // The cached second is replaced, not reused, when the second changes.
        assert_eq!(at(951_782_401, 0), "2000-02-29T00:00:01.000000Z");
    }

    #[test]
    fn each_byte_to_escape_is_found_at_every_position_of_a_word() {
        // Safe neighbours on both sides of each class boundary, and UTF-8 high bytes.
        let safe = [b' ', b'!', b'#', b'[', b']', 0x7f, 0xc3, 0xff];
        assert!(!word_needs_escape(u64::from_le_bytes(safe)));
        for b in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..8 {
                let mut word = safe;
                word[at] = b;
                assert!(
                    word_needs_escape(u64::from_le_bytes(word)),
                    "{b:#x} at {at}"
                );
            }
        }
    }

    proptest::proptest! {
        /// The word test agrees with the byte table on every word.
        #[test]
        fn word_test_agrees_with_the_byte_table(w in proptest::prelude::any::<u64>()) {
            let by_byte = w.to_le_bytes().iter().any(|&b| ESCAPE[usize::from(b)]);
            proptest::prop_assert_eq!(word_needs_escape(w), by_byte);
        }

        /// Any string, controls and quotes included, reads back as itself.
        #[test]
        fn escaped_strings_read_back_as_themselves(s in "\\PC*|[\\x00-\\x7f]*") {
            let mut out = String::new();
            escaped(&mut out, &s);
            let back: String = serde_json::from_str(&out).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn json_lines_are_valid_json_with_fields_at_the_top_level() {
        use tracing_subscriber::layer::SubscriberExt;
        let sink = Sink::default();
        let (writer, guard) = LogWriter::new(sink.clone());
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(writer),
        );
        tracing::subscriber::with_default(subscriber, || {
            let id = "req-1";
            let missing: Option<&str> = None;
            tracing::warn!(
                target: "pylon::request",
                request_id = %id,
                status = 502u16,
                latency_ms = 1.5,
                ratio = f64::NAN,
                stream = true,
                delta = -3i64,
                small = 1e-7,
                whole = 2.0,
                error = "quote \" back\\slash\nnew line\u{1}",
                missing,
                "request {}",
                "done"
            );
        });
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "pylon::request");
        assert_eq!(v["message"], "request done");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["status"], 502);
        assert_eq!(v["latency_ms"], 1.5);
        assert!(v["ratio"].is_null());
        assert_eq!(v["stream"], true);
        assert_eq!(v["delta"], -3);
        assert_eq!(v["small"], 1e-7);
        assert_eq!(v["whole"], 2.0);
        assert_eq!(v["error"], "quote \" back\\slash\nnew line\u{1}");
        assert!(v.get("missing").is_none());
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
