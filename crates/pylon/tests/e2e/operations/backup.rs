//! Backup while serving and writing; verify; restore into SQLite and into PostgreSQL.

use reqwest::Method;
use serde_json::{json, Value};

use super::*;

fn config(mock: &MockServer, data: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[data]
{data}

[limits]
ip_rpm = 0

[log]
format = "json"
success_sample = 0.0

[request_log]
flush = "100ms"

[[prices]]
model = "mock"
input_per_million = 1.0
output_per_million = 2.0

[[providers]]
name = "m"
kind = "openai"
base_url = "http://{}/v1"

[[models]]
name = "chat"
targets = [{{ provider = "m", model = "mock" }}]
"#,
        mock.addr
    )
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = pylon().args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn usage(gw: &Serving) -> Value {
    let (status, body) = gw
        .admin(
            Method::GET,
            "/admin/v1/usage?group_by=key&from=2000-01-01&to=2100-01-01",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["rows"].clone()
}

/// Equal, with floats equal to the last few bits (sums in another row order round differently).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn requests_in(usage: &Value) -> i64 {
    usage
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_i64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_while_writing_restores_into_sqlite_and_postgres() {
    let mock = MockServer::start().await;
    let master = pylon_control::secrets::generate_master().unwrap();
    let env = [("PYLON_MASTER_KEY", master.as_str())];
    let source = Serving::start_env("backup-src", &config(&mock, "dir = \"{data}\""), &env);
    let (status, team) = source
        .admin_with(
            Method::POST,
            "/admin/v1/teams",
            Some(json!({"name": "ml", "budget": {"amount_usd": 100.0, "period": "monthly"}})),
        )
        .await;
    assert_eq!(status, 201, "{team}");
    let mut keys = Vec::new();
    for i in 0..3 {
        let (status, k) = source
            .admin_with(
                Method::POST,
                "/admin/v1/keys",
                Some(json!({"name": format!("k{i}"), "team_id": team["id"]})),
            )
            .await;
        assert_eq!(status, 201, "{k}");
        keys.push(k["key"].as_str().unwrap().to_owned());
    }
    let (status, body) = source
        .admin_with(
            Method::PUT,
            "/admin/v1/providers/m/credential",
            Some(json!({"api_key": "sk-stored-in-the-store"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A backup while requests are written to the request log and usage tables.
    let load = Load::start_keyed(&format!("http://{}", source.addr), "chat", 8, &keys);
    load.flowing(300).await;
    let during = source.data.join("during.tar.gz");
    let (ok, out) = tokio::task::spawn_blocking({
        let (config, to) = (source.config.clone(), during.clone());
        move || {
            cli(&[
                "backup",
                "create",
                "--config",
                config.to_str().unwrap(),
                "--to",
                to.to_str().unwrap(),
            ])
        }
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    load.flowing(100).await;
    let (served, failed, _, errors) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    let (ok, out) = cli(&["backup", "verify", during.to_str().unwrap()]);
    assert!(ok && out.contains("ok ("), "{out}");

    // Once the ledger has written every request, a second backup is the source's state.
    let deadline = Instant::now() + Duration::from_secs(20);
    let expected = loop {
        let u = usage(&source).await;
        if requests_in(&u) >= served as i64 || Instant::now() > deadline {
            break u;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        requests_in(&expected),
        served as i64,
        "usage has every request"
    );
    let quiet = source.data.join("quiet.tar.gz");
    let (ok, out) = cli(&[
        "backup",
        "create",
        "--config",
        source.config.to_str().unwrap(),
        "--to",
        quiet.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("requests={served}")), "{out}");

    // Into a fresh SQLite data dir and into a fresh PostgreSQL schema.
    let sqlite = temp_dir("restored-sqlite");
    let (_, base, schema) = pg_schema().await;
    let pg_url = format!("{base}?options=-c%20search_path%3D{schema}");
    for (into, data) in [
        (
            sqlite.display().to_string(),
            format!("dir = \"{}\"", sqlite.display()),
        ),
        (
            pg_url.clone(),
            format!("dir = \"{{data}}\"\nstore_url = \"{pg_url}\""),
        ),
    ] {
        let restore = || {
            cli(&[
                "restore",
                quiet.to_str().unwrap(),
                "--config",
                source.config.to_str().unwrap(),
                "--into",
                &into,
            ])
        };
        let (ok, out) = restore();
        assert!(ok, "restore into {into}: {out}");
        // A second restore is refused: the target is no longer empty.
        let (ok, out) = restore();
        assert!(!ok && out.contains("--force"), "{out}");
        let restored = Serving::start_env("backup-dst", &config(&mock, &data), &env);
        let got = usage(&restored).await;
        assert!(
            same(&got, &expected),
            "usage equals the source's: {got} vs {expected}"
        );
        for k in &keys {
            let r = client()
                .post(restored.url("/v1/chat/completions"))
                .bearer_auth(k)
                .json(&hello("chat"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                200,
                "every key authenticates after restore into {into}"
            );
            assert_eq!(
                mock.stats().last_credential.as_deref(),
                Some("Bearer sk-stored-in-the-store"),
                "the stored credential decrypts with the same master key"
            );
        }
        let (_, list) = restored
            .admin(Method::GET, "/admin/v1/requests?limit=1")
            .await;
        assert!(!list.to_string().contains("sk-stored"), "{list}");
    }

    // The backup taken during writes restores too.
    let (ok, out) = cli(&[
        "restore",
        during.to_str().unwrap(),
        "--config",
        source.config.to_str().unwrap(),
        "--into",
        temp_dir("restored-during").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");

    // A damaged archive is caught, and never restored.
    let bytes = std::fs::read(&quiet).unwrap();
    for (name, damaged) in [
        ("flipped", {
            let mut b = bytes.clone();
            let mid = b.len() / 2;
            b[mid] ^= 0x55;
            b
        }),
        ("truncated", bytes[..bytes.len() * 2 / 3].to_vec()),
    ] {
        let path = source.data.join(format!("{name}.tar.gz"));
        std::fs::write(&path, damaged).unwrap();
        let (ok, out) = cli(&["backup", "verify", path.to_str().unwrap()]);
        assert!(!ok && out.contains("damaged"), "{name}: {out}");
        let (ok, _) = cli(&[
            "restore",
            path.to_str().unwrap(),
            "--config",
            source.config.to_str().unwrap(),
            "--into",
            temp_dir("restored-damaged").to_str().unwrap(),
        ]);
        assert!(!ok, "{name} archive not restored");
    }
}

#[tokio::test]
async fn scheduled_backups_are_kept_to_their_number_and_served_to_the_admin() {
    let mock = MockServer::start().await;
    let gw = Serving::start(
        "backup-schedule",
        &format!(
            "{}\n[backup]\nevery = \"1s\"\nkeep = 2\n",
            config(&mock, "dir = \"{data}\"")
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let (_, list) = gw.admin(Method::GET, "/admin/v1/backups").await;
        if list.as_array().is_some_and(|l| l.len() == 2) || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let (status, taken) = gw.admin(Method::POST, "/admin/v1/backups").await;
    assert_eq!(status, 201, "{taken}");
    let (_, list) = gw.admin(Method::GET, "/admin/v1/backups").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(names.len() <= 2, "retention keeps 2: {names:?}");
    assert_eq!(names[0], taken["name"].as_str().unwrap(), "newest first");

    // A client that accepts compression gets the archive as it is (it is compressed already).
    let r = client()
        .get(gw.url(&format!("/admin/v1/backups/{}", names[0])))
        .bearer_auth(TOKEN)
        .header("accept-encoding", "gzip, br, zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/gzip");
    assert!(r.headers().get("content-encoding").is_none());
    let body = r.bytes().await.unwrap();
    let copy = gw.data.join("downloaded.tar.gz");
    std::fs::write(&copy, &body).unwrap();
    let (ok, out) = cli(&["backup", "verify", copy.to_str().unwrap()]);
    assert!(ok, "the download is a whole backup: {out}");
    for bad in ["pylon.toml", "..%2Fpylon.toml", "pylon-x.tar.gz"] {
        let (status, _) = gw
            .admin(Method::GET, &format!("/admin/v1/backups/{bad}"))
            .await;
        assert_eq!(status, 404, "{bad}");
    }

    let metrics = gw.metrics().await;
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pylon_backup_age_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(age < 10.0, "age of the last good backup: {age}");
    assert!(metrics.contains("pylon_backups_total{result=\"ok\"}"));
    let health: Value = client()
        .get(gw.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["checks"]["backup:age"][0]["status"], "pass",
        "{health}"
    );
}
