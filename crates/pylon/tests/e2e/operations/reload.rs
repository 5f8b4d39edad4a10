//! Hot reload: SIGHUP and `POST /admin/v1/config/reload` under load.

use reqwest::Method;

use super::*;

fn breaker_state(metrics: &str, model: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("pylon_circuit_breaker_state{")
                && l.contains(&format!("model=\"{model}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_fail_no_request_and_bad_files_are_refused() {
    let mock = MockServer::start().await;
    let broken = MockServer::start().await;
    broken.set(pylon_providers::mock::Behaviour {
        error_status: Some(500),
        ..Default::default()
    });
    let flaky = format!(
        r#"
[resilience]
breaker_failures = 2
breaker_cooldown = "10m"

[[providers]]
name = "broken"
kind = "openai"
base_url = "http://{}/v1"
api_key = "sk-broken"

[[models]]
name = "flaky"
targets = [{{ provider = "broken", model = "x" }}]
"#,
        broken.addr
    );
    let text = |i: usize| {
        base_config(&mock, &format!("{flaky}\n[[models]]\nname = \"chat-{i}\"\ntargets = [{{ provider = \"m\", model = \"mock\" }}]\n"))
    };
    let gw = Serving::start("reload", &text(0));
    // Open the breaker of an unchanged provider's target: reloads must carry it over.
    for _ in 0..3 {
        let _ = client()
            .post(gw.url("/v1/chat/completions"))
            .json(&hello("flaky"))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        breaker_state(&gw.metrics().await, "flaky").as_deref(),
        Some("2")
    );

    let load = Load::start(&format!("http://{}", gw.addr), "chat", 16);
    load.flowing(200).await;
    let pid = gw.child.id();
    let mut refused = 0;
    for i in 1..=20 {
        let bad = i % 5 == 0;
        if bad {
            // An unknown setting on line 3: refused with file:line, nothing changes.
            let t = text(i).replacen("[server]\n", "[server]\nlisten_typo = 1\n", 1);
            rewrite(&gw.config, &t, &gw.data);
        } else {
            rewrite(&gw.config, &text(i), &gw.data);
        }
        if i % 2 == 0 {
            let (status, body) = gw.admin(Method::POST, "/admin/v1/config/reload").await;
            if bad {
                assert_eq!(status, 422, "{body}");
                let msg = body["error"]["message"].as_str().unwrap();
                assert!(msg.contains("pylon.toml:3:"), "file:line in {msg}");
                refused += 1;
            } else {
                assert_eq!(status, 200, "{body}");
                let applied: Vec<&str> = body["applied"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect();
                assert!(
                    applied.contains(&format!("models.chat-{i}").as_str()),
                    "{body}"
                );
                assert!(
                    !applied.iter().any(|a| a.starts_with("providers.")),
                    "{body}"
                );
            }
        } else {
            let before = gw.admin(Method::GET, "/admin/v1/config").await.1;
            signal(pid, "HUP");
            let deadline = Instant::now() + Duration::from_secs(10);
            let changed = loop {
                let now = gw.admin(Method::GET, "/admin/v1/config").await.1;
                if now["reloads"] != before["reloads"]
                    || now["last_failure"] != before["last_failure"]
                {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert!(changed, "SIGHUP reload {i} happened");
            if bad {
                refused += 1;
            }
        }
        if !bad {
            // The new model answers at once.
            let r = client()
                .post(gw.url("/v1/chat/completions"))
                .json(&hello(&format!("chat-{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "chat-{i} after reload {i}");
        }
    }
    // Traffic still moves after the last reload (throughput is the bench's to judge).
    load.flowing(100).await;
    let (ok, failed, rps, errors) = load.finish().await;
    eprintln!("reloads under load: {ok} ok, {failed} failed, {rps:.0} requests/s");
    assert_eq!(failed, 0, "no request failed during reloads: {errors:?}");

    let (_, status) = gw.admin(Method::GET, "/admin/v1/config").await;
    assert_eq!(status["reloads"], 16, "{status}");
    assert_eq!(status["sha256"].as_str().unwrap().len(), 64);
    assert!(status["source"].as_str().unwrap().ends_with("pylon.toml"));
    assert!(status["last_failure"]["error"]
        .as_str()
        .unwrap()
        .contains("listen_typo"));
    let shown = status["config"].to_string();
    assert!(
        !shown.contains("sk-ops") && !shown.contains("sk-broken"),
        "secrets redacted: {shown}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "pylon_config_reloads_total{{result=\"error\",what=\"config\"}} {refused}"
        )),
        "refused reloads counted"
    );
    assert_eq!(
        breaker_state(&metrics, "flaky").as_deref(),
        Some("2"),
        "the unchanged provider's breaker stayed open across 16 reloads"
    );

    // A setting read at start is reported, not silently ignored.
    let t = text(20).replace("shutdown_grace = \"10s\"", "shutdown_grace = \"11s\"");
    rewrite(&gw.config, &t, &gw.data);
    let (status, body) = gw.admin(Method::POST, "/admin/v1/config/reload").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["restart_required"],
        serde_json::json!(["server.shutdown_grace"])
    );
}

#[tokio::test]
async fn a_watched_config_file_is_reloaded_when_it_changes_and_a_bad_one_is_refused() {
    let mock = MockServer::start().await;
    let text = |extra: &str| {
        base_config(&mock, extra).replace("[server]\n", "[server]\nwatch_config = true\n")
    };
    let gw = Serving::start("watch", &text(""));
    let answers = |model: &'static str| {
        let url = gw.url("/v1/chat/completions");
        async move {
            client()
                .post(url)
                .json(&hello(model))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(answers("watched").await, 404);
    rewrite(
        &gw.config,
        &text(
            "[[models]]\nname = \"watched\"\ntargets = [{ provider = \"m\", model = \"mock\" }]\n",
        ),
        &gw.data,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while answers("watched").await != 200 {
        assert!(Instant::now() < deadline, "the changed file was applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file is refused; the running config keeps serving.
    rewrite(&gw.config, &text("[[models]]\nname = 1\n"), &gw.data);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = gw.admin(Method::GET, "/admin/v1/config").await;
        if status["last_failure"].is_object() {
            assert!(status["last_failure"]["error"]
                .as_str()
                .unwrap()
                .contains("pylon.toml:"));
            break;
        }
        assert!(Instant::now() < deadline, "the broken file was refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        answers("watched").await,
        200,
        "still serving the last good config"
    );
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_routes_edge_cache() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mock = MockServer::start().await;
    let hits = std::sync::Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            (
                [("cache-control", "public, max-age=600")],
                "body { margin: 0 }",
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let text = |model: &str| {
        base_config(
            &mock,
            &format!(
                "[[routes]]\nprefix = \"/static/\"\nupstream = \"http://{origin}\"\ncache = {{ max_bytes = 1048576 }}\n\n[[models]]\nname = \"{model}\"\ntargets = [{{ provider = \"m\", model = \"mock\" }}]\n"
            ),
        )
    };
    let gw = Serving::start("reload-edge", &text("one"));
    let fetch = || async {
        let r = client().get(gw.url("/static/a.css")).send().await.unwrap();
        r.headers()["x-pylon-cache"].to_str().unwrap().to_owned()
    };
    assert_eq!(fetch().await, "miss");
    assert_eq!(fetch().await, "hit");
    // A change elsewhere in the file rebuilds the snapshot; the route's cache stays.
    rewrite(&gw.config, &text("two"), &gw.data);
    let (status, body) = gw.admin(Method::POST, "/admin/v1/config/reload").await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    assert_eq!(fetch().await, "hit");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
