//! The process around the gateway: listening sockets (bound here, passed by systemd socket
//! activation, or handed over by the Pylon being upgraded), readiness notifications (systemd's
//! `sd_notify` protocol, and the same message to the Pylon being upgraded), the pid file, and
//! starting a new binary that takes the sockets over.
//!
//! Handing the listening sockets over (rather than binding anew with `SO_REUSEPORT`) keeps one
//! accept queue: connections queued while the old process stops accepting are served by the
//! new one, never reset.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use command_fds::{CommandFdExt, FdMapping};

/// The sockets a Pylon listens on, by the name they are passed under (`LISTEN_FDNAMES`).
pub const MAIN: &str = "main";
pub const ADMIN: &str = "admin";
pub const METRICS: &str = "metrics";
pub const REDIRECT: &str = "redirect";

/// Where this binary was started from (read at start: once the file is replaced, the running
/// image's own path names the deleted file).
static EXE: OnceLock<PathBuf> = OnceLock::new();

/// Listening sockets passed in by systemd or by the Pylon being upgraded.
#[derive(Default)]
pub struct Inherited(HashMap<String, std::net::TcpListener>);

impl Inherited {
    /// Takes the sockets passed in `LISTEN_FDS` (named by `LISTEN_FDNAMES`; an unnamed first one
    /// is the main listener). Call before any thread starts: this edits the environment.
    pub fn from_env() -> Inherited {
        let _ = EXE.set(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pylon")));
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut map = HashMap::new();
        for i in 0..fds.len() {
            let name = names.get(i).cloned().unwrap_or_else(|| match i {
                0 => MAIN.to_owned(),
                n => format!("fd{n}"),
            });
            match fds.take_tcp_listener(i) {
                Ok(Some(l)) => {
                    map.insert(name, l);
                }
                Ok(None) => {}
                Err(e) => eprintln!("pylon: passed socket {name} is not a TCP listener: {e}"),
            }
        }
        Inherited(map)
    }

    /// A socket bound by the caller, used as if passed in.
    pub fn with(name: &str, listener: std::net::TcpListener) -> Inherited {
        Inherited(HashMap::from([(name.to_owned(), listener)]))
    }

    /// The socket passed as `name`, else a new one bound to `addr`.
    pub async fn listener(
        &mut self,
        name: &str,
        addr: SocketAddr,
    ) -> anyhow::Result<tokio::net::TcpListener> {
        match self.0.remove(name) {
            Some(l) => {
                l.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(l)?;
                let at = l.local_addr()?;
                if at != addr && addr.port() != 0 {
                    tracing::warn!(name, %at, configured = %addr, "listening on the passed socket, not the configured address (it changes at the next cold start)");
                }
                Ok(l)
            }
            None => tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}")),
        }
    }
}

/// Copies of the listening sockets, kept to hand over to a new binary.
#[derive(Default)]
pub struct Handover(Vec<(&'static str, OwnedFd)>);

impl Handover {
    /// Keeps a copy of `listener` to pass on as `name`.
    pub fn keep(&mut self, name: &'static str, listener: &impl AsFd) -> std::io::Result<()> {
        self.0.push((name, listener.as_fd().try_clone_to_owned()?));
        Ok(())
    }
}

/// Sends `state` (lines of `KEY=value`) to systemd when it runs us with `Type=notify`, and to
/// the Pylon that started this one for an upgrade. Best effort: a supervisor that went away
/// must not stop us serving.
pub fn notify(state: &str) {
    for var in ["NOTIFY_SOCKET", "PYLON_UPGRADE_NOTIFY"] {
        if let Some(path) = std::env::var_os(var) {
            if let Err(e) = send_datagram(Path::new(&path), state.as_bytes()) {
                tracing::debug!(error = %e, var, "readiness notification not sent");
            }
        }
    }
}

fn send_datagram(path: &Path, msg: &[u8]) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let text = path.to_string_lossy();
    #[cfg(target_os = "linux")]
    if let Some(name) = text.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        return sock.send_to_addr(msg, &addr).map(drop);
    }
    sock.send_to(msg, path).map(drop)
}

/// `RELOADING=1` with the monotonic timestamp systemd's `Type=notify-reload` asks for.
pub fn notify_reloading() {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// The pid file in the data dir, read by `pylon upgrade`.
pub fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("pylon.pid")
}

/// Records this process as the one serving (written when ready, so the file always names a
/// process that serves).
pub fn write_pid(data_dir: &Path) {
    let path = pid_file(data_dir);
    let tmp = path.with_extension("pid.tmp");
    let written = std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "cannot write the pid file; `pylon upgrade` will need --pid");
    }
}

/// Removes the pid file if it still names this process.
pub fn remove_pid(data_dir: &Path) {
    let path = pid_file(data_dir);
    if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(path);
    }
}

/// How long a new binary has to become ready before the upgrade is abandoned.
const UPGRADE_READY_WITHIN: Duration = Duration::from_secs(120);

/// Starts the binary at this process's path with the same arguments, hands it the listening
/// sockets, and waits until it says it is ready: its pid. On failure the new process is gone
/// (or never started) and this one keeps serving.
pub async fn spawn_successor(handover: &Handover, data_dir: &Path) -> anyhow::Result<u32> {
    let sock_path = data_dir.join(format!("upgrade-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock_path);
    let sock = tokio::net::UnixDatagram::bind(&sock_path)
        .with_context(|| format!("cannot create {}", sock_path.display()))?;
    let result = async {
        let exe = EXE.get().cloned().unwrap_or_else(|| PathBuf::from("pylon"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .env("LISTEN_FDS", handover.0.len().to_string())
            .env(
                "LISTEN_FDNAMES",
                handover
                    .0
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(":"),
            )
            .env_remove("LISTEN_PID")
            .env("PYLON_UPGRADE_NOTIFY", &sock_path);
        let mut mappings = Vec::new();
        for (i, (_, fd)) in handover.0.iter().enumerate() {
            mappings.push(FdMapping {
                parent_fd: fd.try_clone()?,
                child_fd: 3 + i as i32,
            });
        }
        cmd.fd_mappings(mappings)
            .map_err(|_| anyhow::anyhow!("listening sockets collide with the new process's descriptors"))?;
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let pid = child.id();
        tracing::info!(pid, exe = %exe.display(), "upgrade: new binary started; waiting until it is ready");
        let mut buf = [0u8; 512];
        let deadline = tokio::time::Instant::now() + UPGRADE_READY_WITHIN;
        loop {
            tokio::select! {
                got = sock.recv(&mut buf) => {
                    let msg = String::from_utf8_lossy(&buf[..got?]);
                    if msg.lines().any(|l| l == "READY=1") {
                        return Ok(pid);
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(status) = child.try_wait()? {
                        anyhow::bail!("the new binary exited ({status}) before it was ready; see its log lines above");
                    }
                    if tokio::time::Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        anyhow::bail!("the new binary was not ready within {UPGRADE_READY_WITHIN:?}; stopped it");
                    }
                }
            }
        }
    }
    .await;
    let _ = std::fs::remove_file(&sock_path);
    result
}

fn status_file(data_dir: &Path) -> PathBuf {
    data_dir.join("upgrade.failed")
}

/// Leaves why an upgrade failed where `pylon upgrade` looks.
pub fn upgrade_failed(data_dir: &Path, why: &str) {
    let _ = std::fs::write(status_file(data_dir), why);
}

/// Sends SIGUSR2 to the Pylon named by the pid file (or `pid`) and waits until another process
/// has written it: the pid of the new one.
pub async fn request_upgrade(data_dir: &Path, pid: Option<i32>) -> anyhow::Result<u32> {
    let path = pid_file(data_dir);
    let old = match pid {
        Some(p) => p,
        None => std::fs::read_to_string(&path)
            .with_context(|| {
                format!(
                    "cannot read {} (is Pylon running with this data dir? else pass --pid)",
                    path.display()
                )
            })?
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a process id", path.display()))?,
    };
    let target = rustix::process::Pid::from_raw(old)
        .ok_or_else(|| anyhow::anyhow!("{old} is not a process id"))?;
    let failed = status_file(data_dir);
    let _ = std::fs::remove_file(&failed);
    rustix::process::kill_process(target, rustix::process::Signal::USR2)
        .with_context(|| format!("cannot signal process {old}"))?;
    let deadline = tokio::time::Instant::now() + UPGRADE_READY_WITHIN + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(now) = std::fs::read_to_string(&path) {
            if let Ok(new) = now.trim().parse::<u32>() {
                if new != old as u32 {
                    return Ok(new);
                }
            }
        }
        if let Ok(why) = std::fs::read_to_string(&failed) {
            let _ = std::fs::remove_file(&failed);
            anyhow::bail!("the upgrade failed and process {old} keeps serving: {why}");
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no new process became ready; the running one ({old}) keeps serving: see its log for why");
        }
    }
}
