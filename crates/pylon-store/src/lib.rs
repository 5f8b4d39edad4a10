//! Durable state behind one interface: embedded SQLite (WAL, the default) or PostgreSQL.
//!
//! One set of portable migrations and one SQL dialect (`$N` placeholders, portable types) serve
//! both backends through `sqlx::Any`; the same test suite runs against each.

mod alerts;
pub mod backup;
mod flags;
mod model;
mod queries;
mod requests;
mod rollouts;
mod tls;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor};

pub use alerts::{AlertEvent, AlertRow, AlertRuleRow, SilenceRow};
pub use flags::{FlagChange, FlagRow};
pub use model::*;
pub use requests::{Bucket, Dim, ErrorGroup, HourlyTotal, RequestFilter, RequestRow, UsageBucket};
pub use rollouts::{RolloutDefinition, RolloutRow, VerdictRow};
pub use tls::{account_label, certificate_label, CertificateRow};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("store error: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed; the database schema is not what this version expects.
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row violates a uniqueness rule (e.g. a duplicate name).
    #[error("{0} already exists")]
    Conflict(String),
    /// A referenced row does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The data directory could not be prepared.
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// The thread that opens the store could not run.
    #[error("cannot open the store: {0}")]
    Open(String),
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The durable store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where the ledger's batches go: on SQLite a connection that commits without waiting for
    /// the disk (`synchronous = NORMAL`: a batch survives a crash of Pylon, not a power cut, the
    /// same promise as the `flush` interval); on PostgreSQL the same pool.
    bulk: AnyPool,
    backend: Backend,
    writer_idle: bool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens `options` from a thread at the idle CPU policy: SQLite's connection thread, started
/// from it, inherits the policy. The pool's tasks run on the caller's runtime. Whether the
/// policy could be set is returned with the pool (a sandbox may refuse it; the pool is the
/// same either way).
#[cfg(target_os = "linux")]
async fn connect_idle(options: AnyPoolOptions, url: &str) -> Result<(AnyPool, bool), StoreError> {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    let runtime = tokio::runtime::Handle::current();
    let url = url.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pylon-store-open".into())
        .spawn(move || {
            let idle = set_thread_priority_and_policy(
                thread_native_id(),
                thread_priority::ThreadPriority::Min,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
            )
            .is_ok();
            let _ = tx.send(runtime.block_on(options.connect(&url)).map(|p| (p, idle)));
        })
        .map_err(|e| {
            StoreError::Open(format!("could not start a thread to open the store: {e}"))
        })?;
    let opened = rx
        .await
        .map_err(|_| StoreError::Open("the thread opening the store ended early".into()))?;
    Ok(opened?)
}

/// Elsewhere the writer keeps the usual policy.
#[cfg(not(target_os = "linux"))]
async fn connect_idle(options: AnyPoolOptions, url: &str) -> Result<(AnyPool, bool), StoreError> {
    Ok((options.connect(url).await?, false))
}

impl Store {
    /// Opens (creating if needed) `pylon.db` in the data directory, in WAL mode.
    pub async fn open_sqlite(dir: &Path) -> Result<Store, StoreError> {
        Store::open(None, dir, false).await
    }

    /// Connects to `sqlite://…` or `postgres://…` and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, false).await
    }

    /// The store `pylon serve` uses: PostgreSQL at `url`, else SQLite under `dir`, its batch
    /// writer at the idle CPU policy when `idle_writer` (see [`Store::writer_idle`]).
    pub async fn open(
        url: Option<&str>,
        dir: &Path,
        idle_writer: bool,
    ) -> Result<Store, StoreError> {
        match url {
            Some(url) => Store::connect_with(url, idle_writer).await,
            None => {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                    path: dir.display().to_string(),
                    source,
                })?;
                let url = format!("sqlite://{}?mode=rwc", dir.join("pylon.db").display());
                Store::connect_with(&url, idle_writer).await
            }
        }
    }

    async fn connect_with(url: &str, idle_writer: bool) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(5));
        let mut bulk = None;
        if backend == Backend::Sqlite {
            bulk = Some(
                AnyPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(5))
                    .max_connections(1)
                    // The connection keeps the thread (and the CPU policy) it was opened with.
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
                                .await?;
                            Ok(())
                        })
                    }),
            );
            // SQLite allows one writer; WAL lets readers run beside it. A busy timeout queues
            // writers briefly instead of failing them. FULL: an acknowledged admin write survives
            // a power loss (admin writes are rare; the ledger's frequent batches use `bulk`).
            options = options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
                        .await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(16);
        }
        let pool = options.connect(url).await?;
        MIGRATOR.run(&pool).await?;
        let (bulk, writer_idle) = match bulk {
            Some(options) if idle_writer => connect_idle(options, url).await?,
            Some(options) => (options.connect(url).await?, false),
            None => (pool.clone(), false),
        };
        Ok(Store {
            pool,
            bulk,
            backend,
            writer_idle,
        })
    }

    /// Whether the SQLite connection writing the ledger's batches runs at the idle CPU policy
    /// (Linux `SCHED_IDLE`): a batch then never takes a core from a request, at the price of
    /// falling behind when requests or other programs keep every core busy.
    pub fn writer_idle(&self) -> bool {
        self.writer_idle
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
fn conflict(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let what = what.into();
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound(format!("a row referenced by {what}"))
        }
        _ => StoreError::Db(e),
    }
}

/// A nullable float as a bound parameter: NaN stands for NULL, and the SQL reads it back through
/// `NULLIF(param, 'NaN')` (SQLite stores a bound NaN as NULL by itself). sqlx 0.8's `Any`
/// driver binds a `None` f64 as a PostgreSQL `float4` NULL (its Real/Double mapping is swapped),
/// and a statement prepared with that type then rejects the eight bytes of a later `Some`: a
/// key without a budget made every later key with one fail on that connection.
fn nullable_f64(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

fn get<T>(row: &AnyRow, col: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::Row;
    Ok(row.try_get(col)?)
}

impl FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "daily" => Ok(Period::Daily),
            "monthly" => Ok(Period::Monthly),
            "total" => Ok(Period::Total),
            other => Err(format!(
                "unknown budget period `{other}` (daily, monthly or total)"
            )),
        }
    }
}

#[cfg(test)]
mod tests;
