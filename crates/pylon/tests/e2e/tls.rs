//! TLS on the real binary: handshake with a certificate made in the test, TLS 1.1 refused,
//! HSTS, HTTP→HTTPS redirect, and a new certificate picked up on SIGHUP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

fn write_cert(dir: &Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = ck.cert.pem();
    std::fs::write(dir.join("cert.pem"), &pem).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    pem
}

fn https_client(root_pem: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn openssl_connects(port: u16, version_flag: &str) -> bool {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version_flag,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    out.status.success() && text.contains("BEGIN CERTIFICATE")
}

#[tokio::test]
async fn tls_handshake_versions_hsts_redirect_and_sighup_reload() {
    let dir = temp_dir("tls");
    let first = write_cert(&dir);
    let redirect_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("pylon.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[server.tls]\ncert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\nredirect_http = \"127.0.0.1:{redirect_port}\"\n\n[data]\ndir = \"{d}/data\"\n\n[auth]\nmode = \"none\"\n\n[log]\nformat = \"json\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("pylon printed its address").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));

    let resp = https_client(&first, addr)
        .get(format!("https://localhost:{}/livez", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );

    let port = addr.port();
    let (v11, v12, v13) = tokio::task::spawn_blocking(move || {
        (
            openssl_connects(port, "-tls1_1"),
            openssl_connects(port, "-tls1_2"),
            openssl_connects(port, "-tls1_3"),
        )
    })
    .await
    .unwrap();
    assert!(!v11, "TLS 1.1 is refused");
    assert!(v12 && v13, "TLS 1.2 and 1.3 are accepted");

    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = redirect
        .get(format!("http://127.0.0.1:{redirect_port}/v1/models?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!("https://127.0.0.1:{port}/v1/models?x=1")
    );

    // A new certificate, then SIGHUP: new connections present it.
    let second = write_cert(&dir);
    assert!(Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut reloaded = false;
    for _ in 0..100 {
        if https_client(&second, addr)
            .get(format!("https://localhost:{port}/livez"))
            .send()
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "the new certificate is served after SIGHUP");
    assert!(
        https_client(&first, addr)
            .get(format!("https://localhost:{port}/livez"))
            .send()
            .await
            .is_err(),
        "the old one is gone"
    );

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
