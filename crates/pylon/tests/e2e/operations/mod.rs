//! Operations on the real binary: reloads, upgrades, backups, doctor, deployment kits — each
//! under traffic where the issue asks for zero failed requests.

mod backup;
mod docs;
mod doctor;
mod manifests;
mod reload;
mod rolling;
mod upgrade;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::harness::*;

pub const TOKEN: &str = "ops-admin-token";

pub fn pylon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pylon"))
}

/// A `pylon serve` process started from a config file, with the admin token set.
pub struct Serving {
    pub child: Child,
    pub addr: String,
    pub config: PathBuf,
    pub data: PathBuf,
    /// Every log line printed so far (by this process and any that took over from it).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Serving {
    /// Writes `config` (with `{data}` replaced by a fresh data dir) and starts Pylon on it.
    pub fn start(what: &str, config: &str) -> Serving {
        Serving::start_env(what, config, &[])
    }

    /// [`Serving::start`] with more environment variables.
    pub fn start_env(what: &str, config: &str, env: &[(&str, &str)]) -> Serving {
        let data = temp_dir(what);
        let text = config.replace("{data}", &data.display().to_string());
        let path = data.join("pylon.toml");
        std::fs::write(&path, text).unwrap();
        let mut child = pylon()
            .args(["serve", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .env("PYLON_ADMIN_TOKEN", TOKEN)
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
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Serving {
            child,
            addr,
            config: path,
            data,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The pid in the pid file: the process serving now.
    pub fn serving_pid(&self) -> u32 {
        std::fs::read_to_string(self.data.join("pylon.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
        self.admin_with(method, path, None).await
    }

    /// An admin API call with a JSON body.
    pub async fn admin_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = client().request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Whichever process serves now (after upgrades, not the one started here).
        let pid = std::fs::read_to_string(self.data.join("pylon.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .unwrap_or(self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Whether a process is still there (a zombie of ours counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split(' ').nth(2).is_none_or(|state| state != "Z"))
}

/// Continuous traffic — non-stream and streaming requests, each on a fresh or reused
/// connection like real clients — counting what failed.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// `workers` loops against `url` on `model`, every other one streaming.
    pub fn start(base: &str, model: &str, workers: usize) -> Load {
        Load::start_keyed(base, model, workers, &[])
    }

    /// [`Load::start`] with virtual keys, used in turn by the workers.
    pub fn start_keyed(base: &str, model: &str, workers: usize, keys: &[String]) -> Load {
        // Installs the TLS provider reqwest needs.
        drop(client());
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let url = format!("{base}/v1/chat/completions");
        let tasks = (0..workers)
            .map(|i| {
                let (stop, ok, failed, errors) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                let url = url.clone();
                let key = (!keys.is_empty()).then(|| keys[i % keys.len()].clone());
                let stream = i % 2 == 1;
                let body = if stream {
                    hello_stream(model)
                } else {
                    hello(model)
                };
                // Half the workers keep connections alive between requests (the case a
                // draining server must close gracefully), half use one per request.
                let http = if i % 4 < 2 {
                    reqwest::Client::new()
                } else {
                    client()
                };
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = one(&http, &url, &body, stream, key.as_deref()).await;
                        match outcome {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                errors.lock().unwrap().push(e);
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            tasks,
            started: Instant::now(),
        }
    }

    /// Waits until at least `n` more requests succeeded (traffic is really flowing).
    pub async fn flowing(&self, n: u64) {
        let from = self.ok.load(Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(20), || self.ok.load(Ordering::Relaxed)
                >= from + n)
            .await,
            "traffic flows: {} ok, errors {:?}",
            self.ok.load(Ordering::Relaxed),
            self.errors
                .lock()
                .unwrap()
                .iter()
                .take(3)
                .collect::<Vec<_>>()
        );
    }

    /// Stops; (succeeded, failed, requests per second, first errors).
    pub async fn finish(self) -> (u64, u64, f64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let ok = self.ok.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let rps = (ok + failed) as f64 / self.started.elapsed().as_secs_f64();
        let errors = self
            .errors
            .lock()
            .unwrap()
            .iter()
            .take(5)
            .cloned()
            .collect();
        (ok, failed, rps, errors)
    }
}

async fn one(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    stream: bool,
    key: Option<&str>,
) -> Result<(), String> {
    let mut req = http.post(url).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        return Err(format!("{status}: {text}"));
    }
    if stream {
        let mut text = String::new();
        let mut s = r.bytes_stream();
        while let Some(c) = s.next().await {
            text.push_str(&String::from_utf8_lossy(
                &c.map_err(|e| format!("stream: {e:?}"))?,
            ));
        }
        if !text.ends_with("data: [DONE]\n\n") {
            return Err(format!("stream cut short: {text}"));
        }
    } else {
        r.bytes().await.map_err(|e| format!("body: {e:?}"))?;
    }
    Ok(())
}

/// The config the operations tests share: one mock provider behind model `chat`.
pub fn base_config(mock: &MockServer, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"

[data]
dir = "{{data}}"

[auth]
mode = "none"

[limits]
ip_rpm = 0

[log]
format = "json"
level = "info"
success_sample = 0.0

[[providers]]
name = "m"
kind = "openai"
base_url = "http://{addr}/v1"
api_key = "sk-ops"

[[models]]
name = "chat"
targets = [{{ provider = "m", model = "mock" }}]
{extra}
"#,
        addr = mock.addr
    )
}

/// Rewrites the config file in place.
pub fn rewrite(path: &Path, text: &str, data: &Path) {
    std::fs::write(path, text.replace("{data}", &data.display().to_string())).unwrap();
}
