//! `pylon doctor`: checks a config and the environment it runs in, end to end, and says what
//! to fix — before a deploy, or when something is wrong.

use std::path::Path;
use std::time::Duration;

use pylon_config::{Config, ConfigError};

/// How one check came out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    failed: usize,
    warned: usize,
}

impl Report {
    fn line(&mut self, level: Level, what: &str, said: &str, fix: Option<&str>) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => {
                self.warned += 1;
                "WARN"
            }
            Level::Fail => {
                self.failed += 1;
                "FAIL"
            }
        };
        println!("{tag}  {what:<10} {said}");
        if let Some(fix) = fix {
            println!("      {:<10} fix: {fix}", "");
        }
    }
}

/// The host and database of a store URL, without credentials.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{}", host.split('?').next().unwrap_or(host))
        }
        None => "the store".to_owned(),
    }
}

const STEP: Duration = Duration::from_secs(5);

/// Runs every check; an error when any failed.
pub(crate) async fn run(path: Option<&Path>) -> anyhow::Result<()> {
    let mut r = Report {
        failed: 0,
        warned: 0,
    };
    let config = match check_config(path, &mut r) {
        Some(c) => c,
        None => anyhow::bail!("the config has problems: fix them and run `pylon doctor` again"),
    };
    data_dir(&config, &mut r);
    let store = store(&config, &mut r).await;
    redis(&config, &mut r).await;
    let stored = secrets(&config, store.as_ref(), &mut r).await;
    providers(&config, &stored, &mut r).await;
    listen(&config, &mut r);
    println!();
    if r.failed > 0 {
        anyhow::bail!("{} check(s) failed, {} warning(s)", r.failed, r.warned)
    }
    println!("all checks passed ({} warning(s))", r.warned);
    Ok(())
}

fn check_config(path: Option<&Path>, r: &mut Report) -> Option<Config> {
    let default = Path::new("pylon.toml");
    let path = path.or_else(|| default.exists().then_some(default));
    let Some(path) = path else {
        r.line(
            Level::Warn,
            "config",
            "no pylon.toml here and no --config: built-in defaults and the environment",
            Some("pass --config /path/to/pylon.toml"),
        );
        return Some(Config::from_env(&|k| std::env::var(k).ok()));
    };
    match pylon_config::load(path) {
        Ok(c) => {
            r.line(
                Level::Ok,
                "config",
                &format!(
                    "{}: {} providers, {} models, {} routes",
                    path.display(),
                    c.providers.len(),
                    c.models.len(),
                    c.routes.len()
                ),
                None,
            );
            Some(c)
        }
        Err(ConfigError::Invalid(diags)) => {
            for d in &diags {
                r.line(Level::Fail, "config", &d.to_string(), None);
            }
            r.line(
                Level::Fail,
                "config",
                &format!("{} problem(s)", diags.len()),
                Some("edit the lines above; `pylon config check FILE` re-checks"),
            );
            None
        }
        Err(e) => {
            r.line(
                Level::Fail,
                "config",
                &e.to_string(),
                Some("check the path and its permissions"),
            );
            None
        }
    }
}

fn data_dir(config: &Config, r: &mut Report) {
    let dir = &config.data.dir;
    let probe = dir.join(format!(".pylon-doctor-{}", std::process::id()));
    let writable = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&probe, b"x"));
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = writable {
        r.line(
            Level::Fail,
            "data dir",
            &format!("{} is not writable: {e}", dir.display()),
            Some("create it and give the user Pylon runs as write access (or set [data] dir)"),
        );
        return;
    }
    match pylon_control::disk_usage(dir) {
        Some((used, free)) if used >= config.health.disk_warn => r.line(
            Level::Warn,
            "disk",
            &format!(
                "{:.0} % used, {} MiB free under {}",
                used * 100.0,
                free >> 20,
                dir.display()
            ),
            Some("free space or lower [request_log] retention: the store and backups grow there"),
        ),
        Some((used, free)) => r.line(
            Level::Ok,
            "disk",
            &format!("{:.0} % used, {} MiB free", used * 100.0, free >> 20),
            None,
        ),
        None => r.line(Level::Warn, "disk", "cannot read the disk's usage", None),
    }
}

async fn store(config: &Config, r: &mut Report) -> Option<pylon_store::Store> {
    let (what, opened) = match &config.data.store_url {
        Some(url) => (
            redacted(url.expose()),
            tokio::time::timeout(STEP, pylon_store::Store::connect(url.expose())).await,
        ),
        None => (
            format!("SQLite in {}", config.data.dir.display()),
            tokio::time::timeout(STEP, pylon_store::Store::open_sqlite(&config.data.dir)).await,
        ),
    };
    let fix = if config.data.store_url.is_some() {
        "check that PostgreSQL runs and is reachable from here, and [data] store_url (host, port, database, user, password)"
    } else {
        "check [data] dir and that no other program holds pylon.db"
    };
    match opened {
        Ok(Ok(s)) => {
            r.line(
                Level::Ok,
                "store",
                &format!(
                    "{what}: reachable, schema {} (current)",
                    pylon_store::backup::schema_version()
                ),
                None,
            );
            Some(s)
        }
        Ok(Err(e)) => {
            r.line(Level::Fail, "store", &format!("{what}: {e}"), Some(fix));
            None
        }
        Err(_) => {
            r.line(
                Level::Fail,
                "store",
                &format!("{what}: no answer within {STEP:?}"),
                Some(fix),
            );
            None
        }
    }
}

async fn redis(config: &Config, r: &mut Report) {
    let Some(url) = &config.data.redis_url else {
        r.line(
            Level::Ok,
            "redis",
            "not configured: limits, cache and counters are per instance",
            None,
        );
        return;
    };
    let what = redacted(url.expose());
    let fix = "check that Redis runs and is reachable, and [data] redis_url (host, port, password)";
    let pinged = match pylon_state::RedisState::new(url.expose(), "pylon:") {
        Ok(state) => tokio::time::timeout(STEP, state.ping())
            .await
            .map_err(|_| format!("no answer within {STEP:?}"))
            .and_then(|r| r.map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    match pinged {
        Ok(()) => r.line(Level::Ok, "redis", &format!("{what}: reachable"), None),
        Err(e) => r.line(Level::Fail, "redis", &format!("{what}: {e}"), Some(fix)),
    }
}

/// Checks the admin token and that stored credentials decrypt; the ones that do, by provider.
async fn secrets(
    config: &Config,
    store: Option<&pylon_store::Store>,
    r: &mut Report,
) -> Vec<(String, String)> {
    let env = pylon_control::Env::from_process();
    let admin = config.admin.token_file.is_some() || env.admin_token.is_some();
    if !admin {
        r.line(
            Level::Warn,
            "admin",
            "no admin token: the admin API, dashboard and backups over HTTP are off",
            Some("set PYLON_ADMIN_TOKEN or [admin] token_file"),
        );
    }
    let master = match &config.secrets.master_key_file {
        Some(f) => std::fs::read_to_string(f).ok().map(|s| s.trim().to_owned()),
        None => env.master_key.clone(),
    };
    let stored = match store {
        Some(s) => s.credentials().await.unwrap_or_default(),
        None => Vec::new(),
    };
    if stored.is_empty() {
        return Vec::new();
    }
    let keyring =
        pylon_control::secrets::Keyring::new(master.as_deref(), env.master_key_previous.as_deref());
    let mut opened = Vec::new();
    let mut bad = Vec::new();
    for c in &stored {
        match keyring.as_ref().map(|k| k.open(c)) {
            Ok(Ok(secret)) => opened.push((c.provider.clone(), secret)),
            _ => bad.push(c.provider.clone()),
        }
    }
    if bad.is_empty() {
        r.line(
            Level::Ok,
            "secrets",
            &format!("{} stored credential(s) decrypt", stored.len()),
            None,
        );
    } else {
        r.line(
            Level::Fail,
            "secrets",
            &format!(
                "stored credentials of {} do not decrypt with this master key",
                bad.join(", ")
            ),
            Some("set PYLON_MASTER_KEY (or [secrets] master_key_file) to the key they were stored under; after a rotation keep the old one in PYLON_MASTER_KEY_PREVIOUS"),
        );
    }
    opened
}

/// Probes every provider with its credential (a stored one, `stored`, wins as when serving).
async fn providers(config: &Config, stored: &[(String, String)], r: &mut Report) {
    if config.providers.is_empty() {
        r.line(
            Level::Warn,
            "providers",
            "none configured: nothing to route to",
            Some("add [[providers]] or set OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY"),
        );
        return;
    }
    let gw = match pylon_proxy::Gateway::new(config) {
        Ok(gw) => gw,
        Err(e) => {
            r.line(Level::Fail, "providers", &e.to_string(), None);
            return;
        }
    };
    for (provider, secret) in stored {
        gw.set_credential(provider, Some(secret));
    }
    for (name, check) in gw.probe_each().await {
        match &check.error {
            None => r.line(
                Level::Ok,
                "provider",
                &format!("{name}: answers with its credential ({} ms)", check.latency.as_millis()),
                None,
            ),
            Some(e) if e.contains("401") || e.contains("403") => r.line(
                Level::Fail,
                "provider",
                &format!("{name}: the credential was refused ({e})"),
                Some("set a valid API key for it (api_key in pylon.toml, its environment variable, or PUT /admin/v1/providers/{name}/credential)"),
            ),
            Some(e) => r.line(
                Level::Fail,
                "provider",
                &format!("{name}: {e}"),
                Some("check base_url, DNS and egress (proxy, firewall) from this host"),
            ),
        }
    }
}

fn listen(config: &Config, r: &mut Report) {
    let addr = config.server.listen;
    match std::net::TcpListener::bind(addr) {
        Ok(_) => r.line(Level::Ok, "listen", &format!("{addr} is free"), None),
        Err(e) => r.line(
            Level::Warn,
            "listen",
            &format!("cannot listen on {addr}: {e}"),
            Some(
                "a running Pylon holds it (fine), or another program does: change [server] listen",
            ),
        ),
    }
}
