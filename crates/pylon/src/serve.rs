//! Serving: listeners, the data-plane workers and the admin and metrics listeners, then the
//! signals a running Pylon obeys (TERM/INT stop, HUP reloads, USR2 upgrades), then draining.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use pylon_config::{Config, Loaded};

use crate::process::{self, Handover, Inherited};

/// Where the running config came from, for reloads.
pub(crate) struct Source {
    pub path: PathBuf,
    pub loaded: Loaded,
}

/// What the process was told to do.
enum Event {
    Stop,
    Reload,
    Upgrade,
}

/// The next signal: TERM or INT (Ctrl-C) stop, HUP reloads, USR2 upgrades.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    async fn next(&mut self) -> Event {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Event::Stop,
            _ = self.term.recv() => Event::Stop,
            _ = self.hup.recv() => Event::Reload,
            _ = self.usr2.recv() => Event::Upgrade,
        }
    }
}

/// Serves `config` until told to stop (or until a new binary took over), then drains for up to
/// `server.shutdown_grace`.
pub(crate) async fn run_gateway(
    config: &Config,
    source: Option<Source>,
    mut inherited: Inherited,
    log_level: Option<Arc<pylon_telemetry::LogLevel>>,
) -> anyhow::Result<()> {
    // Installed before anything slow: a signal during start-up must not kill the process.
    let mut signals = Signals::new()?;
    let (gw, control) =
        pylon_control::bootstrap(config, pylon_control::Env::from_process()).await?;
    if let Some(level) = log_level {
        control.set_log_level(level);
    }
    match source {
        Some(s) => {
            control.track_config(Some(s.path), Some(s.loaded));
            if config.server.watch_config {
                tokio::spawn(control.clone().watch_config());
            }
        }
        None => control.track_config(None, None),
    }
    let mut handover = Handover::default();
    let listener = inherited
        .listener(process::MAIN, config.server.listen)
        .await?;
    handover.keep(process::MAIN, &listener)?;
    let addr = listener.local_addr()?;
    if config.auth.mode == pylon_config::AuthMode::None {
        tracing::warn!(
            "auth mode is \"none\": anyone who can reach {addr} can use every configured provider"
        );
    }
    match gw.ip_rpm() {
        Some(rpm) => tracing::info!(
            ip_rpm = rpm,
            "per-IP limit: {rpm} requests per minute per client address on /v1 (clients behind one proxy share it: set [limits] trusted_proxies, or ip_rpm = 0 to turn it off)"
        ),
        None => tracing::info!(
            failed_auth_rpm = config.limits.failed_auth_rpm,
            "no per-IP request limit on keyed traffic; failed authentications are limited per address"
        ),
    }
    // Other instances may change keys in a shared store; this bounds how stale ours can be.
    let refresher = tokio::spawn(control.clone().refresh_loop(config.auth.refresh));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics_server = match config.metrics.listen.filter(|_| config.metrics.enabled) {
        Some(metrics_addr) => {
            let l = inherited.listener(process::METRICS, metrics_addr).await?;
            handover.keep(process::METRICS, &l)?;
            tracing::info!(addr = %l.local_addr()?, "metrics listening");
            let server = axum::serve(l, pylon_proxy::metrics_router(gw.clone()))
                .with_graceful_shutdown(stopped(rx.clone()));
            Some(tokio::spawn(async move { server.await }))
        }
        None => None,
    };
    let admin = pylon_control::router(control.clone());
    let (main_extra, admin_server) = match config.admin.listen {
        Some(admin_addr) => {
            let admin_listener = inherited.listener(process::ADMIN, admin_addr).await?;
            handover.keep(process::ADMIN, &admin_listener)?;
            tracing::info!(addr = %admin_listener.local_addr()?, "admin API listening");
            let server =
                axum::serve(admin_listener, admin).with_graceful_shutdown(stopped(rx.clone()));
            (
                axum::Router::new(),
                Some(tokio::spawn(async move { server.await })),
            )
        }
        None => (admin, None),
    };
    let tls = match &config.server.tls {
        Some(t) => {
            let tls = match (&t.acme, &t.cert_file, &t.key_file) {
                (Some(acme), _, _) => pylon_proxy::tls::Tls::acme(
                    acme.challenge == pylon_config::AcmeChallenge::TlsAlpn01,
                )?,
                (None, Some(cert), Some(key)) => {
                    pylon_proxy::tls::Tls::load(cert, key, t.ocsp_file.as_deref())?
                }
                _ => anyhow::bail!("[server.tls] needs cert_file and key_file, or acme"),
            };
            control.set_tls(tls.clone());
            if let Some(redirect) = t.redirect_http {
                let plain = inherited.listener(process::REDIRECT, redirect).await?;
                handover.keep(process::REDIRECT, &plain)?;
                tracing::info!(addr = %plain.local_addr()?, "redirecting plain HTTP to HTTPS");
                tokio::spawn(pylon_proxy::serve_redirect(
                    plain,
                    addr.port(),
                    tls.challenges().cloned(),
                    stopped(rx.clone()),
                ));
            }
            Some(tls)
        }
        None => None,
    };
    let mut workers =
        pylon_proxy::Workers::start(listener.into_std()?, tls.clone(), gw.clone(), main_extra)
            .context("cannot start the data-plane workers")?;
    // Once the listeners answer challenges: serve the stored certificate, order one if none.
    if let (Some(tls), Some(acme)) = (tls, config.server.tls.as_ref().and_then(|t| t.acme.clone()))
    {
        control.start_acme(tls, acme).await.context(
            "[server.tls] acme keeps the certificate's private key in the store, encrypted",
        )?;
    }
    tracing::info!(
        %addr,
        providers = config.providers.len(),
        models = config.models.len(),
        workers = pylon_proxy::worker_count(config.server.workers),
        "listening"
    );
    let data_dir = config.data.dir.clone();
    process::write_pid(&data_dir);
    process::notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving on {addr}",
        std::process::id()
    ));
    let upgraded = loop {
        match signals.next().await {
            Event::Stop => break false,
            Event::Reload => {
                process::notify_reloading();
                // The outcome is logged, counted and shown by GET /admin/v1/config.
                let _ = control.reload_config().await;
                process::notify("READY=1");
            }
            Event::Upgrade => {
                match process::spawn_successor(&handover, &data_dir).await {
                    Ok(pid) => {
                        tracing::info!(pid, "upgrade: the new binary is ready and accepting; this one drains and exits");
                        break true;
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "upgrade failed; this binary keeps serving");
                        process::upgrade_failed(&data_dir, &format!("{e:#}"));
                    }
                }
            }
        }
    };
    tracing::info!(grace = ?config.server.shutdown_grace, "shutting down: no new connections, draining in-flight requests");
    if !upgraded {
        process::notify("STOPPING=1");
    }
    gw.start_draining();
    // After an upgrade the new process already accepts on the same sockets: nothing to wait for.
    if !upgraded && !config.server.shutdown_delay.is_zero() {
        // Readiness already fails; keep serving while load balancers notice.
        tokio::time::sleep(config.server.shutdown_delay).await;
    }
    let _ = tx.send(true);
    refresher.abort();
    let drained = tokio::time::timeout(config.server.shutdown_grace, workers.stop()).await;
    match drained {
        Ok(Ok(())) => tracing::info!("drained; bye"),
        Ok(Err(e)) => return Err(e).context("server failed"),
        Err(_) => tracing::warn!("shutdown grace expired; closing the remaining connections"),
    }
    if let Some(admin) = admin_server {
        admin.abort();
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    // Requests have ended: write the request log's last rows and export buffered spans.
    control.shutdown(config.server.shutdown_grace).await;
    workers.release();
    if !upgraded {
        process::remove_pid(&data_dir);
    }
    Ok(())
}
