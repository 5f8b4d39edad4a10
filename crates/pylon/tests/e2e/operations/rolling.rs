//! A rolling restart of two instances behind one address (HAProxy, as a load balancer would be):
//! each stops with SIGTERM — readiness fails, it serves through `shutdown_delay`, stops
//! accepting, drains — and comes back on the same port, while traffic never fails.

use super::*;

/// HAProxy in front: it checks each instance's `/readyz` every 200 ms, as a Kubernetes
/// Service's endpoints follow readiness, and retries only connections that failed to open.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy(dir: &Path, listen: u16, upstreams: &[u16]) -> Haproxy {
    let servers: String = upstreams
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  server pylon{i} 127.0.0.1:{p} check\n"))
        .collect();
    let conf = format!(
        r#"global
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
  retry-on conn-failure
frontend api
  bind 127.0.0.1:{listen}
  default_backend pylon
backend pylon
  balance roundrobin
  option httpchk GET /readyz
  default-server inter 200ms fall 1 rise 2
{servers}"#
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("haproxy (installed by scripts/setup) is required: {e}"));
    Haproxy(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_two_instances_behind_one_address_fails_no_request() {
    let mock = MockServer::start().await;
    let ports = [free_port(), free_port()];
    let text = |port: u16| {
        base_config(&mock, "")
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace(
                "shutdown_grace = \"10s\"",
                "shutdown_grace = \"10s\"\nshutdown_delay = \"1s\"",
            )
    };
    let mut instances = [
        Some(Serving::start("roll-a", &text(ports[0]))),
        Some(Serving::start("roll-b", &text(ports[1]))),
    ];
    let lb_port = free_port();
    let dir = temp_dir("haproxy");
    let _lb = haproxy(&dir, lb_port, &ports);
    let base = format!("http://127.0.0.1:{lb_port}");
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            lb_port
        ))
        .is_ok())
        .await,
        "haproxy listens"
    );
    let load = Load::start(&base, "chat", 16);
    load.flowing(300).await;
    for (i, slot) in instances.iter_mut().enumerate() {
        let old = slot.take().unwrap();
        let pid = old.serving_pid();
        signal(pid, "TERM");
        assert!(
            eventually(Duration::from_secs(20), || !alive(pid)).await,
            "instance {i} drained and exited"
        );
        drop(old);
        *slot = Some(Serving::start(&format!("roll-{i}-again"), &text(ports[i])));
        load.flowing(300).await;
    }
    // Throughput is the bench's to judge: `flowing` after each restart shows traffic moved.
    let (ok, failed, rps, errors) = load.finish().await;
    eprintln!("rolling restart behind haproxy: {ok} ok, {failed} failed, {rps:.0} requests/s");
    assert_eq!(
        failed, 0,
        "no request failed during the rolling restart: {errors:?}"
    );
}
