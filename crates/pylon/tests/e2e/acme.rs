//! Automatic certificates against Let's Encrypt's test CA, Pebble (with its mock DNS answering
//! 127.0.0.1 for every name): HTTP-01 and TLS-ALPN-01, a short-lived certificate renewed under
//! load with no failed request, and a second instance sharing the store serving the same
//! certificate.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const DOMAIN: &str = "acme.pylon.test";
const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A child process killed when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pebble and its mock DNS on ephemeral ports; validations go to `http_port` (HTTP-01) and
/// `tls_port` (TLS-ALPN-01) on 127.0.0.1.
struct Pebble {
    processes: Vec<Killed>,
    config: PathBuf,
    dns: u16,
    directory: String,
    ca_file: PathBuf,
    management: u16,
}

impl Pebble {
    async fn start(http_port: u16, tls_port: u16, validity_s: u64) -> Pebble {
        let dir = temp_dir("pebble");
        // Pebble's own HTTPS (the directory) needs a certificate; a throwaway CA signs it.
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=pebble test ca",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "wfe.key",
                "-out",
                "wfe.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1").unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "wfe.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "wfe.pem",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
        // A port picked here can be taken by another test before Pebble binds it; Pebble then
        // exits, and it is started again on other ports.
        for _ in 0..5 {
            let (listen, management, dns) = (free_port(), free_port(), free_port());
            let config = serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.join("wfe.pem"),
                "privateKey": dir.join("wfe.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_s,
            }});
            std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
            let mut p = Pebble {
                processes: Vec::new(),
                config: dir.join("pebble.json"),
                dns,
                directory: format!("https://127.0.0.1:{listen}/dir"),
                ca_file: dir.join("ca.pem"),
                management,
            };
            if p.run().await {
                return p;
            }
        }
        panic!("pebble exited at start five times: its ports kept being taken");
    }

    /// Starts Pebble (again: it forgets every account and makes a new root) on the same ports;
    /// `false` if it or its DNS server exited before answering (a port was taken).
    async fn run(&mut self) -> bool {
        self.processes.clear();
        let dns_server = Killed(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{}", self.dns)])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{}", free_port())])
                .stdout(Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv is installed (scripts/setup)"),
        );
        let pebble = Killed(
            Command::new("pebble")
                .arg("-config")
                .arg(&self.config)
                .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns)])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .stdout(Stdio::null())
                .spawn()
                .expect("pebble is installed (scripts/setup)"),
        );
        self.processes = vec![dns_server, pebble];
        let client = self.client();
        let directory = self.directory.clone();
        let processes = &mut self.processes;
        let up = async {
            loop {
                if client
                    .get(&directory)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
                {
                    return true;
                }
                if processes
                    .iter_mut()
                    .any(|p| p.0.try_wait().is_ok_and(|s| s.is_some()))
                {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), up)
            .await
            .expect("pebble answers")
    }

    fn client(&self) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(&self.ca_file).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
    }

    /// The root Pebble issues under (made fresh at each start).
    async fn root(&self) -> String {
        self.client()
            .get(format!("https://127.0.0.1:{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `acme = { … }` for this CA.
    fn acme(&self, challenge: &str) -> String {
        format!(
            "acme = {{ directory = \"{}\", domains = [\"{DOMAIN}\"], email = \"ops@pylon.test\", challenge = \"{challenge}\", ca_file = \"{}\", check_interval = \"1s\" }}",
            self.directory,
            self.ca_file.display()
        )
    }
}

/// `pylon serve` on `config`; its address once it listens (a stored certificate is served by then).
fn serve(config: &str) -> (Killed, SocketAddr) {
    serve_with(config, &[("PYLON_MASTER_KEY", MASTER_KEY)])
}

fn serve_with(config: &str, env: &[(&str, &str)]) -> (Killed, SocketAddr) {
    let path = temp_dir("acme-pylon").join("pylon.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["serve", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("pylon printed its address").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (Killed(child), addr)
}

/// An HTTPS client that trusts only Pebble's root and finds `DOMAIN` at `addr`.
fn https(root: &str, addr: SocketAddr, reuse: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve(DOMAIN, addr)
        .timeout(Duration::from_secs(10));
    if !reuse {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

/// The leaf certificate `addr` serves for `DOMAIN`, verified against `root`.
async fn served(root: &str, addr: SocketAddr) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.ok()?).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from(DOMAIN).ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

/// Waits (bounded) until `addr` serves a certificate other than `not`.
async fn await_certificate(root: &str, addr: SocketAddr, not: Option<&[u8]>) -> Vec<u8> {
    let wait = async {
        loop {
            match served(root, addr).await {
                Some(c) if Some(c.as_slice()) != not => return c,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("a certificate is served within a minute")
}

fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn get(root: &str, addr: SocketAddr, path: &str) -> reqwest::Response {
    https(root, addr, false)
        .get(format!("https://{DOMAIN}:{}{path}", addr.port()))
        .send()
        .await
        .unwrap()
}

async fn metrics(root: &str, addr: SocketAddr) -> String {
    get(root, addr, "/metrics").await.text().await.unwrap()
}

async fn health(root: &str, addr: SocketAddr) -> Value {
    get(root, addr, "/health").await.json().await.unwrap()
}

/// HTTP-01 on the plain listener; two instances share a PostgreSQL store. The second serves the
/// first's certificate as soon as it listens; the 21-second certificate is renewed (by one of
/// them, under the lease) while both serve a steady stream of HTTPS requests, none of which
/// fails; both then serve the renewed certificate. The CA may reach the instance that did not
/// order: it answers from the store.
#[tokio::test]
async fn http01_certificate_shared_by_two_instances_and_renewed_under_load() {
    let http_port = free_port();
    let (tls_a, tls_b) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_a, 21).await;
    let root = pebble.root().await;
    let (admin, base, schema) = pg_schema().await;
    let store = format!("{base}?options=-c%20search_path%3D{schema}");
    let config = |port: u16, redirect: u16| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[server.tls]\nredirect_http = \"127.0.0.1:{redirect}\"\n{}\n\n[data]\ndir = \"{}\"\nstore_url = \"{store}\"\n\n[auth]\nmode = \"none\"\n\n[log]\nformat = \"json\"\n",
            pebble.acme("http-01"),
            temp_dir("acme-data").display()
        )
    };
    let (_a, addr_a) = serve(&config(tls_a, http_port));
    let first = await_certificate(&root, addr_a, None).await;
    // The second instance's plain listener is elsewhere: the CA only ever reaches the first.
    let plain_b = free_port();
    let (_b, addr_b) = serve(&config(tls_b, plain_b));
    assert_eq!(
        served(&root, addr_b).await.as_deref(),
        Some(first.as_slice()),
        "the second instance serves the stored certificate from its first handshake"
    );
    // An answer another instance published only in the store is given here too.
    sqlx::query(&format!(
        "INSERT INTO {schema}.acme_challenges (name, key_authorization, expires_at) VALUES ('http:tok-123_x', 'tok-123_x.thumbprint', 9999999999999)"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let challenge = |token: &str| {
        let url = format!("http://127.0.0.1:{plain_b}/.well-known/acme-challenge/{token}");
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(
        challenge("tok-123_x").await,
        (200, "tok-123_x.thumbprint".into())
    );
    assert_eq!(challenge("unknown").await.0, 404);
    assert_eq!(
        challenge("bad%20token").await.0,
        404,
        "not a base64url token: not looked up"
    );

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (i, addr) in [addr_a, addr_b, addr_a, addr_b].into_iter().enumerate() {
        // New connections (a handshake each) and kept-alive ones.
        let client = https(&root, addr, i >= 2);
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .get(format!("https://{DOMAIN}:{}/livez", addr.port()))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let renewed = await_certificate(&root, addr_a, Some(&first)).await;
    let on_b = await_certificate(&root, addr_b, Some(&first)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "no request failed across the renewal ({ok} succeeded)"
    );
    assert!(ok > 20, "the load ran ({ok} requests)");
    assert_eq!(
        renewed, on_b,
        "both instances serve the renewed certificate"
    );

    let (ma, mb) = (metrics(&root, addr_a).await, metrics(&root, addr_b).await);
    let orders = series(&ma, "pylon_acme_orders_total{result=\"ok\"}")
        + series(&mb, "pylon_acme_orders_total{result=\"ok\"}");
    assert!(
        (2.0..=3.0).contains(&orders),
        "one order per certificate, not one per instance ({orders})"
    );
    assert_eq!(series(&ma, "pylon_acme_renewal_failures"), 0.0);
    assert!(series(&ma, "pylon_tls_certificate_not_after_seconds") > 0.0);
    let health = health(&root, addr_b).await;
    assert_eq!(
        health["checks"]["tls:acme"][0]["status"], "pass",
        "{health}"
    );
}

/// TLS-ALPN-01 on the TLS listener itself (no plain listener), with the embedded store; the
/// chain verifies against Pebble's root and the health report names when it renews.
#[tokio::test]
async fn tls_alpn01_certificate_on_the_tls_listener() {
    let port = free_port();
    let pebble = Pebble::start(free_port(), port, 3600).await;
    let root = pebble.root().await;
    let (_p, addr) = serve(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[server.tls]\n{}\n\n[data]\ndir = \"{}\"\n\n[auth]\nmode = \"none\"\n\n[log]\nformat = \"json\"\n",
        pebble.acme("tls-alpn-01"),
        temp_dir("acme-alpn").display()
    ));
    await_certificate(&root, addr, None).await;
    let health = health(&root, addr).await;
    let acme = &health["checks"]["tls:acme"][0];
    assert_eq!(acme["status"], "pass", "{health}");
    assert!(
        acme["output"].as_str().unwrap().starts_with("renews "),
        "{acme}"
    );
    assert_eq!(
        health["checks"]["tls:certificate"][0]["status"], "warn",
        "a one-hour certificate has under 14 days left"
    );
}

/// The CA forgets the stored account (Pebble restarted: new state, new root): the next renewal
/// registers a new account instead of failing until someone clears the store.
#[tokio::test]
async fn a_ca_that_forgot_the_account_gets_a_new_one_at_renewal() {
    let port = free_port();
    let mut pebble = Pebble::start(free_port(), port, 21).await;
    let first_root = pebble.root().await;
    let (_p, addr) = serve(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[server.tls]\n{}\n\n[data]\ndir = \"{}\"\n\n[auth]\nmode = \"none\"\n\n[log]\nformat = \"json\"\n",
        pebble.acme("tls-alpn-01"),
        temp_dir("acme-forgot").display()
    ));
    await_certificate(&first_root, addr, None).await;
    assert!(pebble.run().await, "pebble restarts on its ports");
    let root = pebble.root().await;
    assert_ne!(root, first_root);
    // Only a certificate from the restarted CA verifies against its new root.
    await_certificate(&root, addr, None).await;
    let m = metrics(&root, addr).await;
    assert_eq!(
        series(&m, "pylon_acme_orders_total{result=\"error\"}"),
        0.0,
        "{m}"
    );
}

/// `rotate-master` re-seals the certificate's key and the account: after it, an instance with
/// only the new master key serves the stored certificate from its first handshake.
#[tokio::test]
async fn a_master_key_rotation_reseals_the_certificate_and_the_account() {
    let port = free_port();
    let pebble = Pebble::start(free_port(), port, 3600).await;
    let root = pebble.root().await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[server.tls]\n{}\n\n[data]\ndir = \"{}\"\n\n[auth]\nmode = \"none\"\n\n[log]\nformat = \"json\"\n",
        pebble.acme("tls-alpn-01"),
        temp_dir("acme-rotate").display()
    );
    let first = {
        let (_p, addr) = serve(&config);
        await_certificate(&root, addr, None).await
    };
    const NEW_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    {
        let (_p, addr) = serve_with(
            &config,
            &[
                ("PYLON_MASTER_KEY", NEW_KEY),
                ("PYLON_MASTER_KEY_PREVIOUS", MASTER_KEY),
                ("PYLON_ADMIN_TOKEN", "admin"),
            ],
        );
        assert_eq!(
            served(&root, addr).await,
            Some(first.clone()),
            "opened with the previous key"
        );
        let rotated: Value = https(&root, addr, false)
            .post(format!(
                "https://{DOMAIN}:{port}/admin/v1/secrets/rotate-master"
            ))
            .bearer_auth("admin")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            rotated["reencrypted"], 2,
            "the account and the certificate's key: {rotated}"
        );
    }
    let (_p, addr) = serve_with(&config, &[("PYLON_MASTER_KEY", NEW_KEY)]);
    assert_eq!(
        served(&root, addr).await,
        Some(first),
        "the same certificate, under the new key alone"
    );
}

/// A CA that cannot be reached: no certificate, the failures counted (for an alert rule on
/// `tls_renewal_failures`) and retried with backoff; without a master key Pylon refuses to
/// start, since the private key is stored encrypted.
#[tokio::test]
async fn an_unreachable_ca_is_counted_and_a_master_key_is_required() {
    let ca = free_port();
    let config = |metrics_port: u16| {
        format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[server.tls]\nacme = {{ directory = \"https://127.0.0.1:{ca}/dir\", domains = [\"{DOMAIN}\"], challenge = \"tls-alpn-01\", check_interval = \"1s\" }}\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n[data]\ndir = \"{}\"\n\n[auth]\nmode = \"none\"\n\n[log]\nformat = \"json\"\n",
        temp_dir("acme-down").display()
    )
    };
    let metrics_port = free_port();
    let (_p, _addr) = serve(&config(metrics_port));
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let http = client();
    let failing = async {
        loop {
            if let Ok(r) = http.get(&url).send().await {
                let text = r.text().await.unwrap_or_default();
                if series(&text, "pylon_acme_renewal_failures") >= 1.0
                    && series(&text, "pylon_acme_orders_total{result=\"error\"}") >= 1.0
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), failing)
        .await
        .expect("the failed order is counted");

    let path = temp_dir("acme-nokey").join("pylon.toml");
    std::fs::write(&path, config(free_port())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("PYLON_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PYLON_MASTER_KEY"), "{text}");
}
