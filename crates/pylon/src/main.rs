//! The `pylon` binary: command line, start-up and shutdown. Wiring only.

mod admin_cli;
mod alerts_cli;
mod backup_cli;
mod demo;
mod doctor;
mod process;
mod serve;

/// jemalloc: glibc's allocator spent 15 % of the gateway's CPU under load (arena locks, and
/// consolidating fragments on every buffer-sized allocation).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pylon_config::{Config, ConfigError, LogFormat};
use pylon_providers::mock::{self, Behaviour};
use pylon_telemetry::logs::{FlushGuard, JsonLines, LogWriter};
use pylon_telemetry::LogLevel;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Pylon: a production gateway for AI applications.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file; defaults to ./pylon.toml if present, else built-in defaults plus
        /// providers found in the environment.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Replace the running Pylon with the binary now at its path, without dropping a
    /// connection: the new process takes the listening sockets over, and the old one drains
    /// once the new one is ready (SIGUSR2 does the same).
    Upgrade {
        /// The running Pylon's config (its data dir holds the pid file).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The running Pylon's process id, instead of the pid file's.
        #[arg(long)]
        pid: Option<i32>,
        /// The running Pylon's data dir, instead of the config's.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Back up the whole store into one archive, or check an archive.
    Backup {
        #[command(subcommand)]
        command: backup_cli::BackupCommand,
    },
    /// Restore a backup into an empty store (any kind: a SQLite backup restores into
    /// PostgreSQL).
    Restore {
        file: PathBuf,
        /// Pylon's config (its store is the target unless --into).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The target store: a `postgres://` or `sqlite://` URL, or a data dir.
        #[arg(long)]
        into: Option<String>,
        /// Check the archive and the target, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace what a non-empty target holds.
        #[arg(long)]
        force: bool,
    },
    /// Run a gateway wired to in-process mock providers: Pylon answering in seconds, offline.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Check a config and its environment end to end (config, data dir, disk, store, Redis,
    /// secrets, providers with their credentials, listen address) and say what to fix.
    Doctor {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Exit 0 when the URL answers 2xx within 2 s (a container health check with no shell).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage virtual keys through the admin API.
    Keys {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        command: admin_cli::KeysCommand,
    },
    /// The response cache through the admin API.
    Cache {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        command: admin_cli::CacheCommand,
    },
    /// Alert rules: backtest one over a recorded series.
    Alerts {
        #[command(subcommand)]
        command: alerts_cli::AlertsCommand,
    },
    /// Canary, blue-green and shadow rollouts through the admin API.
    Rollout {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        command: admin_cli::RolloutCommand,
    },
    /// Master keys for provider credentials stored through the admin API.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Spend, tokens and requests from the admin API.
    Usage {
        #[command(flatten)]
        remote: admin_cli::Remote,
        /// key, team, model or day.
        #[arg(long, default_value = "day")]
        group_by: String,
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD.
        #[arg(long)]
        to: Option<String>,
    },
    /// Run the mock model provider (OpenAI, Anthropic and Gemini wire formats).
    MockProvider {
        #[arg(long, default_value_t = 9000)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Delay before response headers, e.g. `20ms`.
        #[arg(long, value_parser = humantime::parse_duration)]
        latency: Option<Duration>,
        /// Delay before the first stream chunk.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttft: Option<Duration>,
        /// Delay between stream chunks.
        #[arg(long, value_parser = humantime::parse_duration)]
        chunk_delay: Option<Duration>,
        /// Answer with this HTTP status instead of a completion.
        #[arg(long)]
        error_status: Option<u16>,
        /// Share of requests that get `--error-status` (0.0 to 1.0).
        #[arg(long, default_value_t = 1.0)]
        error_rate: f64,
        /// Break streams after this many chunks.
        #[arg(long)]
        drop_after_chunks: Option<usize>,
        /// Repeat the reply text this many times (longer streams).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Print a new random master key (base64) for PYLON_MASTER_KEY.
    GenMaster,
    /// Re-encrypt every stored credential under the running Pylon's current master key
    /// (start it with the new PYLON_MASTER_KEY and the old one in PYLON_MASTER_KEY_PREVIOUS).
    RotateMaster {
        #[command(flatten)]
        remote: admin_cli::Remote,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file; prints file:line:col and a sentence per problem.
    Check { file: PathBuf },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Before any thread starts: taking passed sockets edits the environment.
    let inherited = process::Inherited::from_env();
    // The data plane has threads of its own (`[server] workers`); this runtime runs the control
    // plane (ledger, refresh, health checks, admin listener) and the CLI.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pylon: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, inherited)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pylon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, inherited: process::Inherited) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let (config, source) = load(config.as_deref())?;
            let (_logs, level) = init_logs(&config.log.level, config.log.format);
            serve::run_gateway(&config, source, inherited, Some(level)).await
        }
        Command::Upgrade {
            config,
            pid,
            data_dir,
        } => {
            let data_dir = match data_dir {
                Some(d) => d,
                None => load(config.as_deref())?.0.data.dir,
            };
            let new = process::request_upgrade(&data_dir, pid).await?;
            println!("upgraded: process {new} is serving");
            Ok(())
        }
        Command::Backup { command } => backup_cli::backup(command).await,
        Command::Restore {
            file,
            config,
            into,
            dry_run,
            force,
        } => backup_cli::restore(file, config, into, dry_run, force).await,
        Command::Doctor { config } => doctor::run(config.as_deref()).await,
        Command::Healthcheck { url } => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let resp = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?
                .get(&url)
                .send()
                .await
                .with_context(|| format!("{url} did not answer"))?;
            anyhow::ensure!(
                resp.status().is_success(),
                "{url} answered {}",
                resp.status()
            );
            Ok(())
        }
        Command::Demo { listen } => demo::run(listen).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => check(&file),
        Command::Keys { remote, command } => admin_cli::keys(remote, command).await,
        Command::Cache { remote, command } => admin_cli::cache(remote, command).await,
        Command::Rollout { remote, command } => admin_cli::rollout(remote, command).await,
        Command::Alerts { command } => alerts_cli::run(command),
        Command::Secrets {
            command: SecretsCommand::GenMaster,
        } => {
            println!("{}", pylon_control::secrets::generate_master()?);
            Ok(())
        }
        Command::Secrets {
            command: SecretsCommand::RotateMaster { remote },
        } => admin_cli::rotate_master(remote).await,
        Command::Usage {
            remote,
            group_by,
            from,
            to,
        } => admin_cli::usage(remote, group_by, from, to).await,
        Command::MockProvider {
            port,
            host,
            latency,
            ttft,
            chunk_delay,
            error_status,
            error_rate,
            drop_after_chunks,
            repeat,
        } => {
            let (_logs, _) = init_logs("info", LogFormat::Auto);
            let m = mock::Mock::new();
            m.set(Behaviour {
                latency: latency.unwrap_or_default(),
                ttft: ttft.unwrap_or_default(),
                chunk_delay: chunk_delay.unwrap_or_default(),
                error_status,
                error_rate,
                drop_after_chunks,
                repeat,
                ..Behaviour::default()
            });
            let listener = bind(SocketAddr::new(host, port)).await?;
            tracing::info!(addr = %listener.local_addr()?, "mock provider listening");
            tokio::select! {
                r = mock::serve(listener, m) => r.context("mock provider failed"),
                () = shutdown_signal() => Ok(()),
            }
        }
    }
}

/// The config from `path`, else ./pylon.toml, else defaults and the environment; with where it
/// came from when it was a file (reloads read it again).
pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<(Config, Option<serve::Source>)> {
    let default = Path::new("pylon.toml");
    let path = path.or_else(|| default.exists().then_some(default));
    match path {
        Some(p) => {
            let loaded = pylon_config::load_file(p)?;
            // Reloads read the same file whatever the working directory becomes.
            let path = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
            Ok((loaded.config.clone(), Some(serve::Source { path, loaded })))
        }
        None => Ok((Config::from_env(&|k| std::env::var(k).ok()), None)),
    }
}

fn check(file: &Path) -> anyhow::Result<()> {
    match pylon_config::load(file) {
        Ok(c) => {
            println!(
                "{}: ok ({} providers, {} models, {} routes)",
                file.display(),
                c.providers.len(),
                c.models.len(),
                c.routes.len()
            );
            Ok(())
        }
        Err(ConfigError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{d}");
            }
            anyhow::bail!("{} problem(s) in {}", diags.len(), file.display())
        }
        Err(e) => Err(e.into()),
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Installs the log subscriber. Lines go through a batching background writer so the request
/// path never blocks on stdout; if it falls behind, lines are dropped rather than buffered without
/// bound. The guard writes what is buffered when dropped at exit; the [`LogLevel`] changes the
/// filter at run time (admin API).
fn init_logs(level: &str, format: LogFormat) -> (FlushGuard, Arc<LogLevel>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = std::env::var("PYLON_LOG").ok();
    let initial = from_env.as_deref().unwrap_or(level);
    let filter = EnvFilter::try_new(initial).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let (writer, guard) = LogWriter::new(std::io::stdout());
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    .with_writer(writer),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(writer),
            )
            .init();
    }
    let level = LogLevel::new(initial, move |f| {
        let filter = EnvFilter::try_new(f).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    (guard, Arc::new(level))
}
