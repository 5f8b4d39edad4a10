//! The edge under hostile or unlucky peers: slowloris headers, trickled bodies, heads hyper
//! refuses (400/431 in the API's shape), connection and
//! request caps with 503 shedding, clients that stop reading, idle WebSockets, a cancelled
//! coalescing leader, an HTTP/2 provider with a stream limit, a CA file and a CONNECT proxy,
//! and `X-Forwarded-Proto` behind Pylon's own TLS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pylon_providers::mock::Behaviour;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

fn one_provider(mock: &MockServer, server: &str, provider: &str) -> String {
    format!(
        r#"
[server]
{server}

[auth]
mode = "none"

[[providers]]
name = "a"
kind = "openai"
base_url = "http://{}/v1"
{provider}

[[models]]
name = "m"
targets = [ {{ provider = "a", model = "mock-a" }} ]
"#,
        mock.addr
    )
}

/// Reads until the peer closes the connection (or `within` passes); what was read.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, tcp.read_to_end(&mut out)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn slow_headers_and_trickled_bodies_are_cut_off() {
    let mock = MockServer::start().await;
    let gw = Gateway::from_text(&one_provider(
        &mock,
        "header_read_timeout = \"300ms\"\nbody_read_timeout = \"300ms\"",
        "",
    ))
    .await;
    // Slowloris: half a request head, then nothing.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        read_until_closed(&mut tcp, Duration::from_secs(5))
            .await
            .is_some(),
        "the connection was closed"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // A body that never completes: 408 in the API's shape.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout"), "{answer}");
    assert_eq!(mock.stats().requests, 0);
}

#[tokio::test]
async fn heads_hyper_refuses_get_an_api_shaped_error() {
    let mock = MockServer::start().await;
    let gw = Gateway::from_text(&one_provider(&mock, "", "")).await;
    for (head, status, code) in [
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nbroken header\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            [
                &b"GET /livez HTTP/1.1\r\nhost: x\r\nx-big: "[..],
                &vec![b'a'; 600_000],
                b"\r\n\r\n",
            ]
            .concat(),
            431,
            "headers_too_large",
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        // The server may answer and close before all of an oversize head is sent.
        let _ = tcp.write_all(&head).await;
        let answer = read_until_closed(&mut tcp, Duration::from_secs(5))
            .await
            .unwrap_or_default();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(v["error"]["code"], code);
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert_eq!(mock.stats().requests, 0);
}

#[tokio::test]
async fn connections_over_the_cap_get_a_503_with_retry_after() {
    let mock = MockServer::start().await;
    let gw = Gateway::from_text(&one_provider(&mock, "max_connections = 2", "")).await;
    let _held: Vec<_> =
        futures_util::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(gw.addr)))
            .await;
    let mut resp = None;
    for _ in 0..50 {
        let r = gw.chat(hello("m")).await;
        if r.status() == 503 {
            resp = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = resp.expect("a third connection is shed");
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    drop(_held);
    let mut counted = false;
    for _ in 0..50 {
        if get_text(&gw, "/metrics")
            .await
            .contains("pylon_shed_total{what=\"connections\"}")
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted, "shed connections are counted");
}

#[tokio::test]
async fn requests_over_the_cap_are_shed_with_503() {
    let mock = MockServer::start().await;
    mock.set(Behaviour {
        chunk_delay: Duration::from_millis(300),
        ..Behaviour::default()
    });
    let gw = Gateway::from_text(&one_provider(&mock, "max_requests = 2", "")).await;
    // Two streams in progress fill the gateway.
    let mut open = Vec::new();
    for _ in 0..2 {
        let resp = gw.chat(hello_stream("m")).await;
        assert_eq!(resp.status(), 200);
        open.push(resp);
    }
    let resp = gw.chat(hello("m")).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(get_text(&gw, "/metrics")
        .await
        .contains("pylon_shed_total{what=\"requests\"} 1"));
    // Once they finish, requests are served again.
    for r in open {
        assert!(r.text().await.unwrap().contains("[DONE]"));
    }
    assert_eq!(gw.chat(hello("m")).await.status(), 200);
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_hold_the_provider() {
    let mock = MockServer::start().await;
    // About 25 MB of stream: far more than the socket buffers between client and gateway.
    let word = "x".repeat(64 * 1024);
    mock.set(Behaviour {
        reply: Some(format!("{word} ")),
        repeat: 400,
        ..Behaviour::default()
    });
    let gw = Gateway::from_text(&one_provider(&mock, "", "timeouts = { idle = \"300ms\" }")).await;
    let resp = gw.chat(hello_stream("m")).await;
    assert_eq!(resp.status(), 200);
    // Hold the response without reading it.
    let cancelled = eventually(Duration::from_secs(10), || {
        mock.stats().streams_cancelled == 1
    })
    .await;
    assert!(
        cancelled,
        "the provider stream was cancelled while the client held it"
    );
    assert!(get_text(&gw, "/metrics")
        .await
        .contains("pylon_bounded_drops_total{what=\"stalled_client\"} 1"));
    drop(resp);
}

#[tokio::test]
async fn an_idle_websocket_is_closed() {
    use axum::extract::ws::WebSocketUpgrade;
    use axum::response::IntoResponse;
    async fn ws(upgrade: WebSocketUpgrade) -> impl IntoResponse {
        upgrade
            .on_upgrade(|mut socket| async move { while let Some(Ok(_)) = socket.recv().await {} })
    }
    let app = axum::Router::new().route("/ws", axum::routing::get(ws));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gw = Gateway::from_text(&format!(
        "[auth]\nmode = \"none\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"http://{app_addr}\"\ntimeouts = {{ idle = \"300ms\" }}\n"
    ))
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(end.is_ok(), "the idle tunnel was closed");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_cancelled_coalescing_leader_hands_over_to_one_follower() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let text = format!("{TWO_MOCKS}\n[cache]\nenabled = true\n")
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let gw = Gateway::from_text(&text).await;
    b.set(Behaviour {
        latency: Duration::from_millis(800),
        ..Behaviour::default()
    });
    let body = json!({"model": "b-only", "temperature": 0,
                      "messages": [{"role": "user", "content": format!("herd {}", uuid::Uuid::new_v4())}]});
    let url = gw.url("/v1/chat/completions");
    let leader = {
        let (url, body) = (url.clone(), body.clone());
        tokio::spawn(async move {
            client()
                .post(url)
                .json(&body)
                .timeout(Duration::from_millis(300))
                .send()
                .await
        })
    };
    assert!(eventually(Duration::from_secs(2), || b.stats().requests == 1).await);
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { client().post(url).json(&body).send().await.unwrap() })
        })
        .collect();
    assert!(
        leader.await.unwrap().is_err(),
        "the leader's client gave up"
    );
    for f in followers {
        assert_eq!(f.await.unwrap().status(), 200);
    }
    assert_eq!(
        b.stats().requests,
        2,
        "one follower took over the call; the others waited for it"
    );
}

#[tokio::test]
async fn thousands_of_streams_spread_over_http2_connections() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mock = pylon_providers::mock::Mock::new();
    tokio::spawn(pylon_providers::mock::serve_h2(listener, mock.clone(), 100));
    // Each stream lasts ~1 s: a single connection (100 streams at a time) would leave most
    // requests queued past their first-byte timeout.
    mock.set(Behaviour {
        chunk_delay: Duration::from_millis(100),
        reply: Some("a b c d e f g h i j".into()),
        ..Behaviour::default()
    });
    let gw = Gateway::from_text(&format!(
        r#"
[auth]
mode = "none"

[limits]
ip_rpm = 0

[[providers]]
name = "h2"
kind = "openai"
base_url = "http://{addr}/v1"
http2 = true
connections = 8
timeouts = {{ first_byte = "1500ms" }}

[[models]]
name = "m"
targets = [ {{ provider = "h2", model = "mock" }} ]
retries = 0
"#
    ))
    .await;
    let ok = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..600)
        .map(|_| {
            let (url, ok) = (gw.url("/v1/chat/completions"), ok.clone());
            tokio::spawn(async move {
                let resp = client().post(url).json(&hello_stream("m")).send().await;
                if let Ok(r) = resp {
                    if r.status() == 200 && r.text().await.unwrap_or_default().contains("[DONE]") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 600, "every stream completed");
    let stats = mock.stats();
    assert_eq!(stats.streams_completed, 600);
    assert!(stats.connections >= 6, "{} connections", stats.connections);
}

/// A TLS mock provider with a certificate for `localhost` made here; its PEM.
async fn tls_mock() -> (SocketAddr, Arc<pylon_providers::mock::Mock>, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = ck.cert.pem();
    let key = rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mock = pylon_providers::mock::Mock::new();
    let app = pylon_providers::mock::router(mock.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(tower::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let mut app = app.clone();
                        async move {
                            use tower::Service;
                            app.call(req.map(axum::body::Body::new)).await
                        }
                    },
                ));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, mock, pem)
}

/// An HTTP CONNECT proxy that counts the tunnels it opened.
async fn connect_proxy() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = Arc::new(AtomicU64::new(0));
    let count = tunnels.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let Some(target) = head
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split(' ').next())
                else {
                    return;
                };
                let target = target.replace("localhost", "127.0.0.1");
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, tunnels)
}

#[tokio::test]
async fn a_private_ca_and_a_connect_proxy_reach_a_tls_provider() {
    let (addr, mock, pem) = tls_mock().await;
    let dir = temp_dir("ca");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    let (proxy, tunnels) = connect_proxy().await;
    let provider = |extra: &str| {
        format!(
            "[auth]\nmode = \"none\"\n\n[[providers]]\nname = \"tls\"\nkind = \"openai\"\nbase_url = \"https://localhost:{}/v1\"\n{extra}\n\n[[models]]\nname = \"m\"\ntargets = [ {{ provider = \"tls\", model = \"mock\" }} ]\nretries = 0\n",
            addr.port()
        )
    };
    // Without the CA the certificate is not trusted.
    let gw = Gateway::from_text(&provider("")).await;
    assert_eq!(gw.chat(hello("m")).await.status(), 502);
    assert_eq!(mock.stats().requests, 0);
    // With it, directly and through the proxy.
    let gw = Gateway::from_text(&provider(&format!("ca_file = \"{}\"", ca.display()))).await;
    assert_eq!(gw.chat(hello("m")).await.status(), 200);
    let gw = Gateway::from_text(&provider(&format!(
        "ca_file = \"{}\"\nproxy = \"http://{proxy}\"",
        ca.display()
    )))
    .await;
    assert_eq!(gw.chat(hello("m")).await.status(), 200);
    assert_eq!(tunnels.load(Ordering::Relaxed), 1, "went through the proxy");
    assert_eq!(mock.stats().requests, 2);
}

#[tokio::test]
async fn x_forwarded_proto_is_https_behind_pylons_tls() {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let echo = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        axum::Json(json!({"proto": h("x-forwarded-proto"), "host": h("x-forwarded-host")}))
    });
    tokio::spawn(async move { axum::serve(app, echo).await });

    let dir = temp_dir("tls-edge");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = ck.cert.pem();
    std::fs::write(dir.join("cert.pem"), &pem).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let text = format!(
        "[data]\ndir = \"{}\"\n[auth]\nmode = \"none\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"http://{app_addr}\"\n",
        dir.join("data").display()
    );
    let config = pylon_config::parse(&text, "test.toml", &|_| None).unwrap();
    let (gw, control) = pylon_control::bootstrap(&config, pylon_control::Env::default())
        .await
        .unwrap();
    let tls =
        pylon_proxy::tls::Tls::load(&dir.join("cert.pem"), &dir.join("key.pem"), None).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::mem::forget(
        pylon_proxy::Workers::start(listener, Some(tls), gw, pylon_control::router(control))
            .unwrap(),
    );
    for http2 in [false, true] {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .resolve("localhost", addr);
        if http2 {
            b = b.http2_prior_knowledge();
        } else {
            b = b.http1_only();
        }
        let seen: Value = b
            .build()
            .unwrap()
            .get(format!("https://localhost:{}/x", addr.port()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["proto"], "https", "http2: {http2}");
        assert_eq!(
            seen["host"],
            format!("localhost:{}", addr.port()),
            "http2: {http2}"
        );
    }
}

/// Writes a self-signed P-256 certificate for localhost valid for `days` into `dir`.
fn short_lived_cert(dir: &std::path::Path, days: u32) {
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .args(["-days", &days.to_string(), "-subj", "/CN=localhost"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn certificate_expiry_is_a_health_item_and_a_metric_renewed_by_reload() {
    let dir = temp_dir("tls-expiry");
    short_lived_cert(&dir, 3);
    let (gw, control) = Gateway::with_admin("[auth]\nmode = \"none\"\n", None).await;
    let tls =
        pylon_proxy::tls::Tls::load(&dir.join("cert.pem"), &dir.join("key.pem"), None).unwrap();
    control.set_tls(tls);
    let item = |h: &Value| h["checks"]["tls:certificate"][0].clone();
    let health_of = || async {
        let r = client().get(gw.url("/health")).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    };
    let health = health_of().await;
    assert_eq!(item(&health)["status"], "warn", "{health}");
    assert_eq!(item(&health)["observedValue"], 2);
    assert_eq!(health["status"], "warn");
    let metrics = client()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let not_after: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pylon_tls_certificate_not_after_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 2 * 86_400..=now + 3 * 86_400 + 60).contains(&not_after),
        "{not_after}"
    );

    // Renewed on disk, then a reload (SIGHUP's path) serves it and the warning clears.
    short_lived_cert(&dir, 90);
    let _ = control.reload_config().await;
    let health = health_of().await;
    assert_eq!(item(&health)["status"], "pass", "{health}");
    assert_eq!(item(&health)["observedValue"], 89);
}
