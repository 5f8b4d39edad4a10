//! Observability through the real HTTP surface: `/metrics` (checked by promtool and scraped by a
//! real Prometheus), OTLP spans, `/health`, `/readyz`, the request log and its admin API.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pylon_providers::mock::Behaviour;
use serde_json::Value;

use crate::harness::*;

const ADMIN: &str = "observe-admin-token";

/// promtool from Debian's `prometheus` package (installed by scripts/setup).
fn promtool() -> Command {
    Command::new("promtool")
}

async fn get_text(url: &str) -> (u16, String, String) {
    let resp = client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

/// The value of one series in a text exposition, found by its name and label fragments.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|f| l.contains(f)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_overhead_and_pass_promtool() {
    let (_a, _b, gw) = two_mocks().await;
    for _ in 0..3 {
        let resp = gw.chat(hello("b-only")).await;
        assert_eq!(resp.status(), 200);
        let overhead: f64 = resp.headers()["x-pylon-overhead-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.0..1000.0).contains(&overhead), "{overhead}");
    }
    let resp = gw.chat(hello_stream("b-only")).await;
    assert!(resp.headers().contains_key("x-pylon-overhead-ms"));
    resp.text().await.unwrap();
    assert_eq!(gw.chat(hello("no-such-model")).await.status(), 404);

    // The stream's series are written when it ends, just after the client read its last byte.
    let mut text = String::new();
    for _ in 0..100 {
        text = get_text(&gw.url("/metrics")).await.2;
        if sample(
            &text,
            "pylon_time_to_first_token_seconds_count",
            &["model=\"b-only\""],
        ) == Some(1.0)
            && sample(&text, "pylon_requests_total", &["model=\"b-only\""]) == Some(4.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = [
        "model=\"b-only\"",
        "provider=\"b\"",
        "status_class=\"2xx\"",
        "route=\"/v1/chat/completions\"",
    ];
    assert_eq!(
        sample(&text, "pylon_requests_total", &ok),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "pylon_requests_total",
            &["model=\"-\"", "status_class=\"4xx\""]
        ),
        Some(1.0),
        "an unknown model is counted without creating a series for its name"
    );
    assert!(!text.contains("no-such-model"));
    assert!(
        sample(
            &text,
            "pylon_tokens_total",
            &["model=\"b-only\"", "type=\"output\""]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        sample(
            &text,
            "pylon_overhead_seconds_count",
            &["route=\"/v1/chat/completions\""]
        ),
        Some(5.0)
    );
    assert!(
        sample(
            &text,
            "pylon_inter_token_latency_seconds_count",
            &["model=\"b-only\""]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &text,
            "pylon_circuit_breaker_state",
            &["target=\"a/mock-a\""]
        ),
        Some(0.0)
    );
    assert_eq!(sample(&text, "pylon_in_flight_requests", &[]), Some(0.0));
    assert_eq!(sample(&text, "pylon_open_streams", &[]), Some(0.0));
    assert!(text.contains("pylon_build_info{version=\""));
    assert!(text.contains("process_resident_memory_bytes"));

    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed; run scripts/setup");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn retries_fallbacks_and_open_breakers_show_in_metrics_health_and_readyz() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    a.set(Behaviour {
        error_status: Some(500),
        ..Behaviour::default()
    });
    let gw = Gateway::start(
        &TWO_MOCKS
            .replace("breaker_failures = 3", "breaker_failures = 2")
            .replace("breaker_cooldown = \"300ms\"", "breaker_cooldown = \"60s\""),
        &a,
        &b,
    )
    .await;
    let (status, ct, body) = get_text(&gw.url("/health")).await;
    assert_eq!(
        (status, ct.as_str()),
        (200, "application/health+json"),
        "{body}"
    );
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "pass", "{h}");
    assert_eq!(h["checks"]["store:responseTime"][0]["status"], "pass");

    // a-strict: retries = 1 against a failing target; a-only falls back to b-only.
    assert_eq!(gw.chat(hello("a-strict")).await.status(), 502);
    let text = get_text(&gw.url("/metrics")).await.2;
    assert_eq!(
        sample(&text, "pylon_retries_total", &["model=\"a-strict\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "pylon_circuit_breaker_state",
            &["model=\"a-strict\""]
        ),
        Some(2.0)
    );

    let resp = gw.chat(hello("a-only")).await;
    assert_eq!(provider_of(&resp), "b");
    let text = get_text(&gw.url("/metrics")).await.2;
    assert_eq!(
        sample(
            &text,
            "pylon_fallbacks_total",
            &["model=\"a-only\"", "fallback=\"b-only\""]
        ),
        Some(1.0),
        "{text}"
    );

    // Every model whose only target is open makes the gateway not ready, and /health says which.
    let (status, _, why) = get_text(&gw.url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(why.contains("circuit breaker is open"), "{why}");
    let (status, ct, body) = get_text(&gw.url("/health")).await;
    assert_eq!(ct, "application/health+json");
    assert_eq!(status, 503, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "fail");
    let a_checks = h["checks"]["provider:a"].as_array().unwrap();
    assert!(a_checks
        .iter()
        .any(|c| c["status"] == "warn" && c["output"].as_str().unwrap().contains("open")));
    assert_eq!(h["checks"]["provider:b"][0]["status"], "pass");
    for checks in h["checks"].as_object().unwrap().values() {
        for c in checks.as_array().unwrap() {
            assert!(
                ["pass", "warn", "fail"].contains(&c["status"].as_str().unwrap()),
                "{c}"
            );
            assert!(c["time"].is_string(), "{c}");
        }
    }
    assert_eq!(get_text(&gw.url("/livez")).await.0, 200);
    assert_eq!(get_text(&gw.url("/startupz")).await.0, 200);
}

#[tokio::test]
async fn a_real_prometheus_scrapes_pylon() {
    let (_a, _b, gw) = two_mocks().await;
    assert_eq!(gw.chat(hello("b-only")).await.status(), 200);
    let dir = temp_dir("prometheus");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pylon\n    static_configs:\n      - targets: ['{}']\n",
            gw.addr
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package) is installed; run scripts/setup");
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=sum(pylon_requests_total%7Bmodel%3D%22b-only%22%7D)"
    );
    let mut answer = Value::Null;
    for _ in 0..300 {
        if let Ok(resp) = client().get(&query).send().await {
            if let Ok(v) = resp.json::<Value>().await {
                if v["data"]["result"][0]["value"][1] == "1" {
                    answer = v;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(
        answer["data"]["result"][0]["value"][1], "1",
        "Prometheus read Pylon's counter"
    );
}

#[test]
fn shipped_prometheus_rules_and_config_pass_promtool() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = promtool()
            .args(&args)
            .current_dir(root)
            .output()
            .expect("promtool is installed; run scripts/setup");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/pylon.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let text = dashboard.to_string();
    for metric in [
        "pylon_requests_total",
        "pylon_time_to_first_token_seconds_bucket",
        "pylon_overhead_seconds_bucket",
        "pylon_cost_usd_total",
    ] {
        assert!(text.contains(metric), "the dashboard charts {metric}");
    }
}

/// An OTLP/HTTP receiver that keeps every span it is sent.
async fn otlp_receiver() -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let keep = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let keep = keep.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        keep.lock().unwrap().extend(ss.spans);
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, spans)
}

fn attr(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    let v = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match v {
        V::StringValue(s) => s.clone(),
        V::IntValue(i) => i.to_string(),
        V::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn otlp_spans_show_a_retry_and_a_fallback_and_the_traceparent_goes_upstream() {
    let (collector, spans) = otlp_receiver().await;
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    a.set(Behaviour {
        error_status: Some(500),
        ..Behaviour::default()
    });
    // a-only retries its failing target once, then falls back to b-only.
    let config = TWO_MOCKS.replace(
        "fallbacks = [\"b-only\"]\nretries = 0",
        "fallbacks = [\"b-only\"]\nretries = 1",
    ) + &format!("\n[tracing]\nenabled = true\nendpoint = \"http://{collector}\"\nexport_every = \"100ms\"\n");
    let gw = Gateway::start(&config, &a, &b).await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header(
            "traceparent",
            format!("00-{client_trace}-00f067aa0ba902b7-01"),
        )
        .json(&hello("a-only"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(provider_of(&resp), "b");
    resp.text().await.unwrap();

    let mut tree = Vec::new();
    for _ in 0..200 {
        tree = spans.lock().unwrap().clone();
        if tree.iter().any(|s| s.name.starts_with("chat /v1")) && tree.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let root = tree
        .iter()
        .find(|s| s.name == "chat /v1/chat/completions")
        .unwrap_or_else(|| {
            panic!(
                "request span in {:?}",
                tree.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        hex(&root.trace_id),
        client_trace,
        "continues the client's trace"
    );
    assert_eq!(hex(&root.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        attr(root, "gen_ai.request.model").as_deref(),
        Some("a-only")
    );
    assert_eq!(
        attr(root, "gen_ai.response.model").as_deref(),
        Some("mock-b")
    );
    assert_eq!(attr(root, "pylon.attempts").as_deref(), Some("3"));
    assert!(
        attr(root, "gen_ai.usage.input_tokens")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let children: Vec<_> = tree
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"auth") && names.contains(&"limits"),
        "{names:?}"
    );
    let mut attempts: Vec<_> = children
        .iter()
        .filter(|s| s.name.starts_with("chat mock-"))
        .collect();
    attempts.sort_by_key(|s| attr(s, "pylon.attempt"));
    let summary: Vec<(String, Option<String>, bool)> = attempts
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                attr(s, "pylon.provider"),
                s.status.as_ref().is_some_and(|st| st.code == 2),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("chat mock-a".to_owned(), Some("a".to_owned()), true),
            ("chat mock-a".to_owned(), Some("a".to_owned()), true),
            ("chat mock-b".to_owned(), Some("b".to_owned()), false),
        ],
        "first try, retry, fallback"
    );
    assert_eq!(
        attr(attempts[2], "gen_ai.system").as_deref(),
        Some("openai")
    );
    // The provider saw the fallback attempt's span as its parent.
    let upstream = b.stats().last_traceparent.unwrap();
    assert_eq!(
        upstream,
        format!("00-{client_trace}-{}-01", hex(&attempts[2].span_id))
    );
}

#[tokio::test]
async fn request_log_records_filters_pages_and_exports() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let text = TWO_MOCKS.replace("[auth]\nmode = \"none\"", "[auth]\nmode = \"keys\"")
        + "\n[request_log]\nflush = \"50ms\"\n";
    let text = text
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let (gw, _control) = Gateway::with_admin(&text, Some(ADMIN)).await;
    let key: Value = client()
        .post(gw.url("/admin/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "log-test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = key["key"].as_str().unwrap().to_owned();
    let key_id = key["id"].as_str().unwrap().to_owned();
    let send = |model: &'static str, rid: String| {
        let (url, secret) = (gw.url("/v1/chat/completions"), secret.clone());
        async move {
            client()
                .post(url)
                .bearer_auth(secret)
                .header("x-request-id", rid)
                .json(&hello(model))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for i in 0..5 {
        assert_eq!(send("b-only", format!("ok-{i}")).await, 200);
    }
    assert_eq!(send("nope", "bad-model".into()).await, 404);
    let unauth = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&hello("b-only"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    let list = |q: &str| {
        let url = gw.url(&format!("/admin/v1/requests?{q}"));
        async move { client().get(url).bearer_auth(ADMIN).send().await.unwrap() }
    };
    let mut page = Value::Null;
    for _ in 0..100 {
        page = list("limit=100").await.json().await.unwrap();
        if page["data"].as_array().unwrap().len() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Failed authentication is counted in metrics, never written to the request log.
    assert_eq!(page["data"].as_array().unwrap().len(), 6, "{page}");
    let by_key: Value = list(&format!("key={key_id}&status=2xx&limit=2"))
        .await
        .json()
        .await
        .unwrap();
    let rows = by_key["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let r = &rows[0];
    assert_eq!(r["model"], "b-only");
    assert_eq!(r["served_model"], "mock-b");
    assert_eq!(r["provider"], "b");
    assert_eq!(r["status"], 200);
    assert_eq!(r["attempts"], 1);
    assert!(r["input_tokens"].as_i64().unwrap() > 0 && r["latency_ms"].as_f64().unwrap() > 0.0);
    // Newest first, and the cursor continues where the page ended without overlap.
    let mut seen: Vec<String> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    let mut cursor = by_key["next"].as_str().unwrap().to_owned();
    loop {
        let p: Value = list(&format!("key={key_id}&status=2xx&limit=2&cursor={cursor}"))
            .await
            .json()
            .await
            .unwrap();
        seen.extend(
            p["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["request_id"].as_str().unwrap().to_owned()),
        );
        match p["next"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, (0..5).map(|i| format!("ok-{i}")).collect::<Vec<_>>());

    let errors: Value = list("error_class=unknown_model")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(errors["data"][0]["request_id"], "bad-model");

    let csv = list("format=csv&status=4xx").await;
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("at_ms,request_id,"));
    assert_eq!(lines.len(), 2, "{csv}");
    let jsonl = list("format=jsonl").await.text().await.unwrap();
    assert_eq!(
        jsonl
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).is_ok())
            .count(),
        6
    );

    assert_eq!(list("status=abc").await.status(), 400);
    assert_eq!(list("cursor=zzz").await.status(), 400);
    assert_eq!(list("limit=0").await.status(), 400);
    assert_eq!(list("format=xml").await.status(), 400);
    assert_eq!(
        client()
            .get(gw.url("/admin/v1/requests"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let groups = admin_get(&gw, ADMIN, "/admin/v1/errors").await;
    let classes: Vec<(&str, i64)> = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["error_class"].as_str().unwrap(),
                g["count"].as_i64().unwrap(),
            )
        })
        .collect();
    // Failed authentication is a metric, not an error group (a flood must not write).
    assert!(
        classes.contains(&("unknown_model", 1)) && !classes.iter().any(|c| c.0 == "unauthorized"),
        "{groups}"
    );

    let usage = admin_get(&gw, ADMIN, "/admin/v1/usage?group_by=model,provider,hour").await;
    let row = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["keys"] == serde_json::json!(["b-only", "b"]))
        .unwrap_or_else(|| panic!("{usage}"));
    assert_eq!(row["requests"], 5);
    assert!(row["bucket"].as_str().unwrap().ends_with(":00Z"));
}

#[tokio::test]
async fn active_provider_probes_show_in_health() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let text = (TWO_MOCKS.to_owned() + "\n[health]\nprobe_every = \"50ms\"\n")
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let gw = Gateway::from_text(&text).await;
    let mut h = Value::Null;
    for _ in 0..200 {
        h = serde_json::from_str(&get_text(&gw.url("/health")).await.2).unwrap();
        if h["checks"]["provider:b"][0]["probe"]["status"] == "pass" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h["checks"]["provider:b"][0]["probe"]["status"], "pass",
        "{h}"
    );
}
