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
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating if needed) `pylon.db` in the data directory, in WAL mode.
    pub async fn open_sqlite(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let url = format!("sqlite://{}?mode=rwc", dir.join("pylon.db").display());
        Store::connect(&url).await
    }

    /// Connects to `sqlite://…` or `postgres://…` and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
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
        let bulk = match bulk {
            Some(options) => options.connect(url).await?,
            None => pool.clone(),
        };
        Ok(Store {
            pool,
            bulk,
            backend,
        })
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
