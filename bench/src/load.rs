//! The load generator: closed loop at a concurrency, open loop at a fixed rate, held streams.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client(max_idle: usize) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(http)
}

/// What one run measured.
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64
    }
}

/// A target URL and the bearer token to send, if any.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub bearer: Option<String>,
}

/// One request, body read to the end; the latency in microseconds, or `None` on failure.
pub async fn one(client: &HttpClient, to: &Endpoint, body: &Bytes) -> Option<u64> {
    let started = Instant::now();
    let mut req = hyper::Request::post(&to.url).header("content-type", "application/json");
    if let Some(token) = &to.bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(Full::new(body.clone())).ok()?;
    let resp = client.request(req).await.ok()?;
    let ok = resp.status().is_success();
    let _ = resp.into_body().collect().await.ok()?;
    ok.then(|| started.elapsed().as_micros() as u64)
}

// Constant, valid bounds (1 µs to 60 s, 3 significant digits): construction cannot fail.
#[allow(clippy::expect_used)]
fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Makes each request of a load run.
pub type MakeRequest = Arc<dyn Fn() -> hyper::Request<Full<Bytes>> + Send + Sync>;

/// One request from `make`, body read to the end; the latency in microseconds, or `None` on
/// failure (a status other than 2xx or 304, or an error).
pub async fn send(client: &HttpClient, make: &MakeRequest) -> Option<u64> {
    let started = Instant::now();
    let resp = client.request(make()).await.ok()?;
    let ok = resp.status().is_success() || resp.status() == hyper::StatusCode::NOT_MODIFIED;
    let _ = resp.into_body().collect().await.ok()?;
    ok.then(|| started.elapsed().as_micros() as u64)
}

/// `concurrency` workers sending back to back for `duration`.
pub async fn closed_loop(
    client: &HttpClient,
    url: &Endpoint,
    body: Bytes,
    concurrency: usize,
    duration: Duration,
) -> Outcome {
    let to = url.clone();
    let make: MakeRequest = Arc::new(move || {
        let mut req = hyper::Request::post(&to.url).header("content-type", "application/json");
        if let Some(token) = &to.bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req.body(Full::new(body.clone()))
            .unwrap_or_else(|_| hyper::Request::new(Full::new(Bytes::new())))
    });
    closed_loop_of(client, make, concurrency, duration).await
}

/// `concurrency` workers sending `make`'s requests back to back for `duration`.
pub async fn closed_loop_of(
    client: &HttpClient,
    make: MakeRequest,
    concurrency: usize,
    duration: Duration,
) -> Outcome {
    let shared = Arc::new(Mutex::new((hist(), 0u64, 0u64)));
    let end = Instant::now() + duration;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, make, shared) = (client.clone(), make.clone(), shared.clone());
            tokio::spawn(async move {
                let (mut h, mut ok, mut err) = (hist(), 0, 0);
                while Instant::now() < end {
                    match send(&client, &make).await {
                        Some(us) => {
                            let _ = h.record(us);
                            ok += 1;
                        }
                        None => err += 1,
                    }
                }
                let mut s = shared.lock().await;
                let _ = s.0.add(&h);
                s.1 += ok;
                s.2 += err;
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    let s = shared.lock().await;
    Outcome {
        ok: s.1,
        errors: s.2,
        elapsed,
        hist: s.0.clone(),
    }
}

/// One connection, one request at a time, from a thread of its own with blocking socket calls:
/// at concurrency 1 the async client's own scheduling (its connection task on another worker
/// thread, wake-ups between them) added tens of µs of jitter to every hop's tail.
pub async fn sequential(to: &Endpoint, body: Bytes, duration: Duration) -> Outcome {
    let to = to.clone();
    let run = tokio::task::spawn_blocking(move || {
        let mut h = hist();
        let (mut ok, mut errors) = (0u64, 0u64);
        let started = Instant::now();
        let Some(mut conn) = Sequential::connect(&to, &body) else {
            return Outcome {
                ok,
                errors: 1,
                elapsed: started.elapsed(),
                hist: h,
            };
        };
        let end = started + duration;
        while Instant::now() < end {
            let t = Instant::now();
            // nginx closes a keep-alive connection after `keepalive_requests` answers.
            let reconnect = match conn.exchange() {
                Some(answer) => {
                    if answer.ok {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                    answer.close
                }
                None => {
                    errors += 1;
                    true
                }
            };
            if reconnect {
                match Sequential::connect(&to, &body) {
                    Some(c) => conn = c,
                    None => break,
                }
            }
        }
        Outcome {
            ok,
            errors,
            elapsed: started.elapsed(),
            hist: h,
        }
    });
    run.await.unwrap_or_else(|_| Outcome {
        ok: 0,
        errors: 1,
        elapsed: duration,
        hist: hist(),
    })
}

/// How one exchange ended.
struct Answer {
    /// A 2xx status.
    ok: bool,
    /// The server closes the connection after this answer.
    close: bool,
}

/// A keep-alive HTTP/1.1 connection sending one prepared POST again and again.
struct Sequential {
    stream: std::net::TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Sequential {
    fn connect(to: &Endpoint, body: &[u8]) -> Option<Sequential> {
        let uri: hyper::Uri = to.url.parse().ok()?;
        let authority = uri.authority()?.as_str().to_owned();
        let stream = std::net::TcpStream::connect(&authority).ok()?;
        stream.set_nodelay(true).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        let mut request = format!(
            "POST {} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            uri.path(),
            body.len()
        );
        if let Some(token) = &to.bearer {
            request.push_str(&format!("authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        Some(Sequential {
            stream,
            request,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends the request and reads the whole answer; `None` if the connection failed.
    fn exchange(&mut self) -> Option<Answer> {
        use std::io::Write;
        self.stream.write_all(&self.request).ok()?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .ok()?
            .to_ascii_lowercase();
        let ok = head.get(9..10) == Some("2");
        let close = head
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("close"));
        let length = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        match length {
            Some(n) => {
                while self.buf.len() < head_end + n {
                    self.fill()?;
                }
            }
            // Chunked: read until the last chunk's empty line.
            None => {
                while !self.buf[head_end..].ends_with(b"0\r\n\r\n") {
                    self.fill()?;
                }
            }
        }
        Some(Answer { ok, close })
    }

    fn fill(&mut self) -> Option<()> {
        use std::io::Read;
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).ok()?;
        (n > 0).then(|| self.buf.extend_from_slice(&chunk[..n]))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Requests started at a fixed rate regardless of answers (open loop); latency counts from the
/// scheduled start, so a stall is not hidden (no coordinated omission).
pub async fn fixed_rate(
    client: &HttpClient,
    url: &Endpoint,
    body: Bytes,
    rate: u32,
    duration: Duration,
) -> Outcome {
    let shared = Arc::new(Mutex::new((hist(), 0u64, 0u64)));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, url, body, shared) =
            (client.clone(), url.clone(), body.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let r = one(&client, &url, &body).await;
            let mut s = shared.lock().await;
            match r {
                Some(_) => {
                    let _ = s.0.record(scheduled.elapsed().as_micros() as u64);
                    s.1 += 1;
                }
                None => s.2 += 1,
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let s = shared.lock().await;
    Outcome {
        ok: s.1,
        errors: s.2,
        elapsed,
        hist: s.0.clone(),
    }
}

/// Opens `n` streaming requests at once and holds them open; calls `sample` while all are live.
pub async fn held_streams(
    url: &Endpoint,
    body: Bytes,
    n: usize,
    sample_after: Duration,
    sample: impl FnOnce(),
) -> (u64, u64) {
    let client = client(n);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move { one(&client, &url, &body).await.is_some() })
        })
        .collect();
    tokio::time::sleep(sample_after).await;
    sample();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    (ok, n as u64 - ok)
}
