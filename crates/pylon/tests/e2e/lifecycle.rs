//! The real binary: graceful drain on SIGTERM, `config check`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use pylon_providers::mock::Behaviour;

use crate::harness::*;

fn pylon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pylon"))
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pylon-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pylon.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn sigterm_drains_a_live_stream_then_exits_zero() {
    let mock = MockServer::start().await;
    mock.set(Behaviour {
        chunk_delay: Duration::from_millis(40),
        repeat: 4,
        ..Behaviour::default()
    });
    let config = temp_file(
        "drain",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"

[data]
dir = "{}"

[auth]
mode = "none"

[log]
format = "json"

[[providers]]
name = "m"
kind = "openai"
base_url = "http://{}/v1"
api_key = "sk-secret-in-config"
direct = true
"#,
            temp_dir("drain-data").display(),
            mock.addr
        ),
    );
    let mut child = pylon()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("pylon printed its address").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    let log_reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let resp = client()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&hello_stream("m/mock"))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Readiness flips and new connections are refused once draining started.
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            &addr
        )
        .is_err())
        .await,
        "listener closed on SIGTERM"
    );
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the live stream finished: {text}"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit 0 after draining");

    let logs = log_reader.join().unwrap();
    assert!(
        logs.iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "every log line is JSON"
    );
    let request_line = logs
        .iter()
        .find(|l| l.contains("\"message\":\"request\""))
        .expect("a request log line");
    assert!(request_line.contains("\"request_id\""));
    assert!(
        request_line.contains("\"outcome\":\"ok\""),
        "{request_line}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("sk-secret-in-config")),
        "secrets never logged"
    );
}

#[test]
fn config_check_reports_file_line_col() {
    let good = temp_file("good", "[server]\nlisten = \"127.0.0.1:9\"\n");
    let out = pylon()
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = temp_file("bad", "[server]\nlisten = \"127.0.0.1:9\"\n\n[[models]]\nname = \"m\"\ntargets = [{ provider = \"ghost\", model = \"x\" }]\nbogus = 1\n");
    let out = pylon()
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:7:1: unknown field `bogus`", bad.display())),
        "{err}"
    );

    let unresolved = temp_file(
        "env",
        "[[providers]]\nname = \"p\"\nkind = \"openai\"\napi_key = \"${PYLON_TEST_UNSET_VAR}\"\n",
    );
    let out = pylon()
        .args(["config", "check"])
        .arg(&unresolved)
        .env_remove("PYLON_TEST_UNSET_VAR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(":4:12: environment variable `PYLON_TEST_UNSET_VAR` is not set"));
}

/// Runs the CLI against `url` off the async runtime; (success, stdout, stderr).
async fn cli(url: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let (url, token) = (url.to_owned(), token.to_owned());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = pylon()
            .args(&args)
            .env("PYLON_URL", url)
            .env("PYLON_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn cli_manages_keys_through_the_admin_api() {
    let mock = MockServer::start().await;
    let text = format!(
        "[[providers]]\nname = \"m\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\n\n[[models]]\nname = \"chat\"\ntargets = [ {{ provider = \"m\", model = \"x\" }} ]\n",
        mock.addr
    );
    let (gw, _) = Gateway::with_admin(&text, Some("cli-admin")).await;
    let url = format!("http://{}", gw.addr);
    let (ok, key, err) = cli(
        &url,
        "cli-admin",
        &[
            "keys", "create", "--name", "from-cli", "--models", "chat", "--rpm", "5",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("pk-"));
    let chat = || {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&hello("chat"))
            .send()
    };
    assert_eq!(chat().await.unwrap().status(), 200);

    let (_, listed, _) = cli(&url, "cli-admin", &["keys", "list"]).await;
    assert!(
        listed.contains("from-cli") && listed.contains(&key[..11]) && !listed.contains(&key),
        "{listed}"
    );
    let id = listed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(cli(&url, "cli-admin", &["keys", "revoke", &id]).await.0);
    assert_eq!(chat().await.unwrap().status(), 401);
    let (ok, _, err) = cli(&url, "wrong", &["keys", "list"]).await;
    assert!(!ok && err.contains("401"), "{err}");
}
