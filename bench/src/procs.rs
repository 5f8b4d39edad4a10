//! The processes under test (mock provider, Pylon, nginx) and their CPU time and memory from /proc.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master only takes its workers down on a signal it can handle.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn()?;
        Ok(Proc { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// CPU seconds (user + system) of a process and its direct children (nginx workers).
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = own_ticks(pid);
    for child in children(pid) {
        total += own_ticks(child);
    }
    total / ticks
}

/// CPU seconds of a process's threads, summed by thread name without its number
/// (`pylon-worker-0` and `pylon-worker-1` are one entry). A thread that ended is not counted.
pub fn thread_cpu_seconds(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.filter_map(Result::ok) {
        let Ok(comm) = std::fs::read_to_string(t.path().join("comm")) else {
            continue;
        };
        let name = comm
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches('-');
        *out.entry(name.to_owned()).or_default() += stat_ticks(&t.path().join("stat")) / 100.0;
    }
    out
}

fn own_ticks(pid: u32) -> f64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat")))
}

/// utime + stime in clock ticks from a `stat` file of /proc.
fn stat_ticks(path: &Path) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3; utime and stime are fields 14 and 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    get(14) + get(15)
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rfind(')')
                        .map(|i| s[i + 2..].split_whitespace().nth(1).map(str::to_owned))
                })
                .flatten()
                .is_some_and(|ppid| ppid == pid.to_string())
        })
        .collect()
}

/// (current RSS, peak RSS) in MiB, summed over the process and its children.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let read = |p: u32, key: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with(key)).and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<f64>().ok())
                })
            })
            .unwrap_or(0.0)
            / 1024.0
    };
    let mut pids = vec![pid];
    pids.extend(children(pid));
    (
        pids.iter().map(|&p| read(p, "VmRSS:")).sum(),
        pids.iter().map(|&p| read(p, "VmHWM:")).sum(),
    )
}

/// Waits until `url` answers 200; returns how long that took.
pub async fn wait_ready(url: &str, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let client = crate::load::client(1);
    while started.elapsed() < within {
        if let Ok(req) =
            hyper::Request::get(url).body(http_body_util::Full::new(bytes::Bytes::new()))
        {
            if let Ok(resp) = client.request(req).await {
                if resp.status().is_success() {
                    return Ok(started.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::bail!("{url} not ready within {within:?}")
}

/// The value of an un-labelled series in a Prometheus text page at `url` (0 if absent).
pub async fn metric(url: &str, series: &str) -> anyhow::Result<f64> {
    use http_body_util::BodyExt;
    let req = hyper::Request::get(url).body(http_body_util::Full::new(bytes::Bytes::new()))?;
    let resp = crate::load::client(1).request(req).await?;
    let text = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Writes an nginx config proxying `listen` to `upstream` (keep-alive, no buffering) and starts it.
pub fn nginx(dir: &Path, listen: u16, upstream: u16) -> anyhow::Result<Proc> {
    let conf = format!(
        r#"worker_processes auto;
error_log {dir}/nginx-error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream mock {{ server 127.0.0.1:{upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let bin = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|b| Path::new(b).exists())
        .unwrap_or("nginx");
    Proc::spawn(
        Command::new(bin)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .args(["-g", "daemon off;"]),
    )
}
