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
/// `{"timestamp":…,"level":"INFO","message":…,<fields>,"target":…}`. Written straight into the
/// line buffer with `write_str` and integer/float printers: the generic JSON formatter went
/// through serde and an I/O adaptor per value (5 % of the gateway's CPU under load), and `write!`
/// per field still cost more than a request's whole routing.
pub struct JsonLines;

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
        w.write_str("{\"timestamp\":\"")?;
        timestamp(&mut w, std::time::SystemTime::now())?;
        let meta = event.metadata();
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_char('"')?;
        let mut fields = JsonFields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        escaped(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

/// RFC 3339 in UTC with microseconds (`2026-12-07T13:05:09.123456Z`). The part up to the
/// seconds is formatted once per second per thread.
fn timestamp(w: &mut dyn std::fmt::Write, now: std::time::SystemTime) -> std::fmt::Result {
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
            write!(
                cell.1,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            )?;
            cell.0 = secs;
        }
        w.write_str(&cell.1)
    })?;
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // Six ASCII digits.
    w.write_str(std::str::from_utf8(&digits).map_err(|_| std::fmt::Error)?)?;
    w.write_char('Z')
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
struct JsonFields<'a, 'w> {
    w: &'a mut tracing_subscriber::fmt::format::Writer<'w>,
    result: std::fmt::Result,
}

impl JsonFields<'_, '_> {
    /// `,"name":` then `value` as is (a JSON number, literal or string already quoted).
    fn raw(&mut self, field: &tracing::field::Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| self.w.write_str(value));
        }
    }

    fn name(&mut self, field: &tracing::field::Field) -> std::fmt::Result {
        self.w.write_str(",\"")?;
        self.w.write_str(field.name())?;
        self.w.write_str("\":")
    }
}

impl tracing::field::Visit for JsonFields<'_, '_> {
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
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| escaped(&mut *self.w, v));
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| self.w.write_char('"'))
                .and_then(|()| write!(Escape(&mut *self.w), "{v:?}"))
                .and_then(|()| self.w.write_char('"'));
        }
    }
}

/// Writes `s` as a JSON string, quotes included.
fn escaped(w: &mut dyn std::fmt::Write, s: &str) -> std::fmt::Result {
    w.write_char('"')?;
    Escape(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what is written through it for the inside of a JSON string.
struct Escape<'a>(&'a mut dyn std::fmt::Write);

impl std::fmt::Write for Escape<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let bytes = s.as_bytes();
        let mut from = 0;
        // Most values need no escaping: one scan, one write.
        while let Some(at) = bytes[from..]
            .iter()
            .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        {
            let i = from + at;
            self.0.write_str(&s[from..i])?;
            match bytes[i] {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                b => write!(self.0, "\\u{b:04x}")?,
            }
            from = i + 1;
        }
        self.0.write_str(&s[from..])
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
            )
            .unwrap();
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
