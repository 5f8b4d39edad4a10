//! `pylon backup create|verify` and `pylon restore`: the store's archive, made and read
//! directly against the store (Pylon may be serving meanwhile).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use pylon_store::backup::{self, Manifest};
use pylon_store::Store;

#[derive(Subcommand)]
pub(crate) enum BackupCommand {
    /// Write a consistent archive of the whole store (while Pylon serves).
    Create {
        /// Pylon's config (its store); defaults to ./pylon.toml, else the environment's.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where to write; default `<data dir>/backups/pylon-<time>.tar.gz`.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Check an archive: manifest, checksums, every row, schema.
    Verify { file: PathBuf },
}

/// The store named by `--into` (a `postgres://` or `sqlite://` URL, or a data dir), else the
/// config's.
pub(crate) async fn open(
    into: Option<&str>,
    config: &pylon_config::Config,
) -> anyhow::Result<Store> {
    let store = match into {
        Some(url) if url.contains("://") => Store::connect(url).await,
        Some(dir) => Store::open_sqlite(Path::new(dir)).await,
        None => match &config.data.store_url {
            Some(url) => Store::connect(url.expose()).await,
            None => Store::open_sqlite(&config.data.dir).await,
        },
    };
    store.context("cannot open the store")
}

fn describe(m: &Manifest) -> String {
    let mut s = format!(
        "Pylon {}, schema {}, from {}, {} rows:",
        m.pylon_version,
        m.schema_version,
        m.backend,
        m.rows()
    );
    for t in m.tables.iter().filter(|t| t.rows > 0) {
        s.push_str(&format!(" {}={}", t.table, t.rows));
    }
    s
}

/// Runs `pylon backup …`.
pub(crate) async fn backup(command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Create { config, to } => {
            let (config, _) = crate::load(config.as_deref())?;
            let store = open(None, &config).await?;
            let to = match to {
                Some(t) => t,
                None => {
                    let dir = config.data.dir.join("backups");
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    dir.join(backup_name())
                }
            };
            let started = Instant::now();
            let m = store.backup(&to).await?;
            println!(
                "{}: {} in {:.1}s",
                to.display(),
                describe(&m),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        BackupCommand::Verify { file } => {
            let m = backup::verify(&file)?;
            println!("{}: ok ({})", file.display(), describe(&m));
            Ok(())
        }
    }
}

/// A backup's file name for now.
fn backup_name() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    backup::file_name(ms)
}

/// Runs `pylon restore`.
pub(crate) async fn restore(
    file: PathBuf,
    config: Option<PathBuf>,
    into: Option<String>,
    dry_run: bool,
    force: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let m = backup::verify(&file)?;
    let (config, _) = crate::load(config.as_deref())?;
    let store = open(into.as_deref(), &config).await?;
    let present = store.rows().await?;
    if dry_run {
        println!("{}: ok ({})", file.display(), describe(&m));
        match (present, force) {
            (0, _) => println!("the target store is empty: a restore would write {} rows", m.rows()),
            (n, true) => println!("the target store has {n} rows: --force would replace them"),
            (n, false) => anyhow::bail!("the target store is not empty ({n} rows): restore into an empty store, or pass --force to replace its contents"),
        }
        return Ok(());
    }
    let m = store.restore(&file, force).await?;
    println!(
        "restored {} rows into the {:?} store in {:.1}s ({})",
        m.rows(),
        store.backend(),
        started.elapsed().as_secs_f64(),
        describe(&m)
    );
    Ok(())
}
