//! Observability of the real binary: JSON logs without secrets, the run-time log level,
//! readiness during shutdown, the request log surviving `kill -9`, and readiness following the
//! store (a real PostgreSQL behind a proxy the test cuts).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

const ADMIN: &str = "admin-token-never-logged";
const CANARY: &str = "sk-provider-canary-7c1f";

/// Kills the server if a test fails before stopping it (a stray server would keep the test
/// runner's output pipe open).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// Starts `pylon serve` on `config`; returns the child, its address and a thread collecting
/// the rest of its stdout.
fn serve(
    config: &str,
    env: &[(&str, &str)],
) -> (Child, String, std::thread::JoinHandle<Vec<String>>) {
    let dir = temp_dir("bin");
    let path = dir.join("pylon.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["serve", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines.next().expect("pylon printed its address").unwrap();
        let v: Value = serde_json::from_str(&line).expect("log lines are JSON");
        seen.push(line);
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    let rest = std::thread::spawn(move || {
        seen.extend(lines.map_while(Result::ok));
        seen
    });
    (child, addr, rest)
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

fn base_config(mock: &MockServer, data: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_delay = "2s"

[data]
dir = "{}"

[log]
format = "json"

[[providers]]
name = "m"
kind = "openai"
base_url = "http://{}/v1"
api_key = "{CANARY}"

[[models]]
name = "gpt"
targets = [ {{ provider = "m", model = "mock" }} ]
{extra}
"#,
        data.display(),
        mock.addr
    )
}

#[tokio::test]
async fn json_logs_carry_request_ids_never_secrets_and_readyz_fails_on_sigterm() {
    let mock = MockServer::start().await;
    let config = base_config(&mock, &temp_dir("logs"), "");
    let (child, addr, logs) = serve(&config, &[("PYLON_ADMIN_TOKEN", ADMIN)]);
    let _guard = KillOnDrop(child.id());
    let url = |p: &str| format!("http://{addr}{p}");
    let key: Value = client()
        .post(url("/admin/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "logged"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = key["key"].as_str().unwrap().to_owned();
    for body in [hello("gpt"), hello_stream("gpt"), hello("missing")] {
        client()
            .post(url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    let wrong = format!("{secret}x");
    let resp = client()
        .post(url("/v1/chat/completions"))
        .bearer_auth(&wrong)
        .json(&hello("gpt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The log level changes at run time, and a bad filter is refused.
    let level = |v: Value| {
        let u = url("/admin/v1/log/level");
        async move {
            client()
                .put(u)
                .bearer_auth(ADMIN)
                .json(&v)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(level(json!({"level": "debug"})).await.status(), 200);
    let now: Value = client()
        .get(url("/admin/v1/log/level"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now["level"], "debug");
    assert_eq!(level(json!({"level": "pylon=loud"})).await.status(), 400);
    assert_eq!(level(json!({"level": "info"})).await.status(), 200);

    signal(&child, "-TERM");
    // During shutdown_delay the listener still answers, and readiness fails.
    let mut ready = 200;
    for _ in 0..100 {
        ready = client()
            .get(url("/readyz"))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 503, "/readyz fails as soon as shutdown begins");
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    let logs = logs.join().unwrap();
    let parsed: Vec<Value> = logs
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&Value> = parsed
        .iter()
        .filter(|v| v["message"] == "request")
        .collect();
    assert_eq!(requests.len(), 4, "{logs:#?}");
    for r in &requests {
        assert!(
            r["request_id"].as_str().is_some_and(|id| id.len() >= 16),
            "{r}"
        );
    }
    assert!(requests
        .iter()
        .any(|r| r["status"] == 401 && r["error_class"] == "unauthorized"));
    for secret_text in [secret.as_str(), &secret[4..], CANARY, ADMIN] {
        assert!(
            !logs.iter().any(|l| l.contains(secret_text)),
            "a secret reached the logs: {secret_text}"
        );
    }
}

#[tokio::test]
async fn kill_9_loses_at_most_the_flush_window_of_the_request_log() {
    let mock = MockServer::start().await;
    let data = temp_dir("kill9");
    let config = base_config(
        &mock,
        &data,
        "[auth]\nmode = \"none\"\n\n[limits]\nip_rpm = 0\n\n[request_log]\nflush = \"200ms\"\n",
    );
    let (child, addr, _logs) = serve(&config, &[]);
    let _guard = KillOnDrop(child.id());
    let mut done: Vec<(String, Instant)> = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        let id = format!("k9-{i:05}");
        let resp = client()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("x-request-id", &id)
            .json(&hello("gpt"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
        done.push((id, Instant::now()));
        i += 1;
    }
    let killed_at = Instant::now();
    signal(&child, "-KILL");
    let mut child = child;
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();

    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&format!("sqlite://{}", data.join("pylon.db").display()))
        .await
        .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT request_id FROM requests")
        .fetch_all(&db)
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = rows.into_iter().map(|r| r.0).collect();
    // Flush window (200 ms) plus one drain tick and the write itself, with room for a slow CI.
    let window = Duration::from_millis(800);
    let must_have: Vec<&String> = done
        .iter()
        .filter(|(_, at)| killed_at.duration_since(*at) > window)
        .map(|(id, _)| id)
        .collect();
    assert!(
        must_have.len() > 10,
        "enough requests before the window: {}",
        must_have.len()
    );
    let lost: Vec<&&String> = must_have
        .iter()
        .filter(|id| !stored.contains(**id))
        .collect();
    assert!(
        lost.is_empty(),
        "rows older than the flush window were lost: {lost:?}"
    );
    assert!(stored.len() <= done.len());
}

/// A TCP proxy to PostgreSQL that the test can cut (refuse and drop connections) and restore.
#[tokio::test]
async fn readyz_follows_the_store() {
    let (admin, _base, schema) = pg_schema().await;
    let (proxy, cut) = cuttable_proxy("127.0.0.1:5432").await;
    let url = format!("postgres://postgres@{proxy}/test?options=-c%20search_path%3D{schema}");
    let mock = MockServer::start().await;
    let text = format!(
        "[data]\ndir = \"{}\"\nstore_url = \"{url}\"\n\n[auth]\nmode = \"none\"\n\n[health]\ncheck_every = \"100ms\"\ncheck_timeout = \"300ms\"\n\n\
         [[providers]]\nname = \"m\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\n",
        temp_dir("pg-ready").display(),
        mock.addr
    );
    let gw = Gateway::from_text(&text).await;
    let status = |p: &'static str| {
        let u = gw.url(p);
        async move { client().get(u).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/readyz").await, 200);

    cut.store(true, Ordering::SeqCst);
    let mut seen = 0;
    for _ in 0..200 {
        seen = status("/readyz").await;
        if seen == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 503, "/readyz fails while the store is unreachable");
    let health: Value = client()
        .get(gw.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["checks"]["store:responseTime"][0]["status"], "fail",
        "{health}"
    );
    // Liveness does not depend on the store: restarting would not help.
    assert_eq!(status("/livez").await, 200);

    cut.store(false, Ordering::SeqCst);
    for _ in 0..300 {
        seen = status("/readyz").await;
        if seen == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 200, "/readyz recovers with the store");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}

/// Each thread of `pid`: its name and scheduling policy (`/proc/…/stat` field 41).
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the name's closing parenthesis start at field 3.
        let Some(close) = stat.rfind(')') else {
            continue; // the thread ended between the listing and the read
        };
        let policy = stat[close + 2..]
            .split(' ')
            .nth(41 - 3)
            .unwrap()
            .parse()
            .unwrap();
        threads.push((comm.trim().to_owned(), policy));
    }
    threads
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_sqlite_batch_writer_runs_at_the_idle_policy_only_when_configured() {
    const SCHED_IDLE: u32 = 5;
    let mock = MockServer::start().await;
    for (priority, idle) in [("", 0), ("writer_priority = \"idle\"\n", 1)] {
        let data = temp_dir("writer");
        let config = base_config(
            &mock,
            &data,
            "[auth]\nmode = \"none\"\n\n[request_log]\nflush = \"100ms\"\n",
        )
        .replacen("[data]\n", &format!("[data]\n{priority}"), 1);
        let (child, addr, _logs) = serve(&config, &[]);
        let _guard = KillOnDrop(child.id());
        let resp = client()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&hello("gpt"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let threads = thread_policies(child.id());
        let sqlite = threads.iter().filter(|t| t.0.starts_with("sqlx-sqlite"));
        assert!(
            sqlite.count() >= 2,
            "the pool's and the writer's threads: {threads:?}"
        );
        // Exactly the writer's SQLite thread: no runtime or blocking thread inherited it.
        let idle_threads: Vec<_> = threads.iter().filter(|t| t.1 == SCHED_IDLE).collect();
        assert_eq!(idle_threads.len(), idle, "{priority:?}: {threads:?}");
        assert!(
            idle_threads.iter().all(|t| t.0.starts_with("sqlx-sqlite")),
            "{threads:?}"
        );
        // And it writes: the request's row reaches the database.
        sqlx::any::install_default_drivers();
        let db = sqlx::AnyPool::connect(&format!("sqlite://{}", data.join("pylon.db").display()))
            .await
            .unwrap();
        let written = crate::alerts::wait_until(Duration::from_secs(10), || {
            let db = db.clone();
            async move {
                sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM requests")
                    .fetch_one(&db)
                    .await
                    .is_ok_and(|n| n.0 == 1)
            }
        })
        .await;
        assert!(written, "{priority:?}: the request-log row was written");
    }
}
