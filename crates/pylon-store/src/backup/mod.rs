//! Backups of the whole store in one archive, and restoring them into any kind of store.
//!
//! The archive is a gzip'd tar: `manifest.json` first (Pylon and schema versions, when, and
//! for every table its columns, row count and the SHA-256 of its part), then one JSON-lines
//! part per table, one row per line as an array in column order. Rows are copied as they are
//! stored: provider credentials stay encrypted under the master key.
//!
//! A backup reads every table in one read transaction: SQLite (WAL) serves it from a snapshot
//! while writers go on; PostgreSQL from a repeatable-read snapshot.

use std::io::{BufWriter, Write};
use std::path::Path;

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::AnyTypeInfoKind;
use sqlx::{Column, Row, ValueRef};

use crate::{Backend, Store, StoreError, MIGRATOR};

mod archive;

pub use archive::verify;
use archive::{pack, read_batches, Batch};

/// Tables in restore order (parents before the rows that reference them). Leases, ACME
/// challenges in flight and the rollout judge's unread windows are short-lived: not backed up.
pub const TABLES: &[&str] = &[
    "teams",
    "users",
    "api_keys",
    "provider_credentials",
    "usage_daily",
    "usage_hourly",
    "budget_events",
    "requests",
    "error_groups",
    "rollouts",
    "rollout_verdicts",
    "rollout_definitions",
    "flags",
    "flag_changes",
    "alerts",
    "alert_events",
    "alert_silences",
    "alert_rules",
    "alert_detectors",
    "tls_certificates",
    "acme_accounts",
];

/// The archive format this code writes and reads.
const FORMAT: u32 = 1;

/// Why a backup, verification or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the archive is damaged or not a Pylon backup: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("the target store is not empty ({0} rows): restore into an empty store, or pass --force to replace its contents")]
    NotEmpty(u64),
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        BackupError::Store(StoreError::Db(e))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What an archive holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub pylon_version: String,
    /// The last migration applied to the source store.
    pub schema_version: i64,
    /// `sqlite` or `postgres`.
    pub backend: String,
    pub created_at_ms: i64,
    pub tables: Vec<Part>,
}

/// One table's part of an archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Part {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: u64,
    /// Hex SHA-256 of the part's bytes.
    pub sha256: String,
}

impl Manifest {
    /// Rows in all tables.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A backup's file name for a time in Unix milliseconds: `pylon-YYYYMMDDTHHMMSS.mmmZ.tar.gz`,
/// sortable by time.
pub fn file_name(unix_ms: i64) -> String {
    let stamp = pylon_types::day::civil_stamp(unix_ms.div_euclid(1000));
    let (secs, _) = stamp.split_at(stamp.len() - 1);
    format!("pylon-{secs}.{:03}Z.tar.gz", unix_ms.rem_euclid(1000))
}

/// The newest schema this binary knows.
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// A value read from any backend, as JSON.
fn value(row: &sqlx::any::AnyRow, i: usize) -> Result<serde_json::Value, BackupError> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(serde_json::Value::Null);
    }
    let kind = raw.type_info().kind();
    Ok(match kind {
        AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
            row.try_get::<i64, _>(i)?.into()
        }
        AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => row.try_get::<f64, _>(i)?.into(),
        AnyTypeInfoKind::Bool => row.try_get::<bool, _>(i)?.into(),
        AnyTypeInfoKind::Text | AnyTypeInfoKind::Blob | AnyTypeInfoKind::Null => {
            row.try_get::<String, _>(i)?.into()
        }
    })
}

/// A column restored: its place in the archive's rows, its name and its type here.
type Kept = (usize, String, ColType);

/// A column's type in the target store.
#[derive(Debug, Clone, Copy)]
enum ColType {
    Int,
    Float,
    Text,
}

impl Store {
    /// Writes a consistent backup of the whole store to `out` (a `.tar.gz`); the manifest.
    pub async fn backup(&self, out: &Path) -> Result<Manifest, BackupError> {
        let work = out.with_extension("parts");
        std::fs::create_dir_all(&work).map_err(io(&work))?;
        let result = self.dump(&work).await;
        let result = match result {
            Ok(manifest) => pack(&work, &manifest, out).map(|()| manifest),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    async fn dump(&self, work: &Path) -> Result<Manifest, BackupError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let schema_version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut *tx)
            .await?;
        let created_at_ms = now_ms();
        let mut tables = Vec::new();
        for table in TABLES {
            let path = work.join(format!("{table}.jsonl"));
            let file = std::fs::File::create(&path).map_err(io(&path))?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            let mut hash = Sha256::new();
            let mut rows = 0u64;
            let mut columns: Vec<String> = Vec::new();
            let sql = format!("SELECT * FROM {table}");
            let mut stream = sqlx::query(&sql).fetch(&mut *tx);
            let mut line = Vec::with_capacity(512);
            while let Some(row) = stream.try_next().await? {
                if columns.is_empty() {
                    columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                }
                let values = (0..row.len())
                    .map(|i| value(&row, i))
                    .collect::<Result<Vec<_>, _>>()?;
                line.clear();
                serde_json::to_writer(&mut line, &values)
                    .map_err(|e| BackupError::Corrupt(e.to_string()))?;
                line.push(b'\n');
                hash.update(&line);
                w.write_all(&line).map_err(io(&path))?;
                rows += 1;
            }
            drop(stream);
            if columns.is_empty() {
                columns = self
                    .columns(table)
                    .await?
                    .into_iter()
                    .map(|c| c.0)
                    .collect();
            }
            w.flush().map_err(io(&path))?;
            tables.push(Part {
                table: (*table).to_owned(),
                columns,
                rows,
                sha256: hex(&hash.finalize()),
            });
        }
        tx.commit().await?;
        Ok(Manifest {
            format: FORMAT,
            pylon_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version,
            backend: match self.backend {
                Backend::Sqlite => "sqlite",
                Backend::Postgres => "postgres",
            }
            .to_owned(),
            created_at_ms,
            tables,
        })
    }

    /// A table's columns in this store, with their types.
    async fn columns(&self, table: &str) -> Result<Vec<(String, ColType)>, BackupError> {
        let rows: Vec<(String, String)> = match self.backend {
            Backend::Sqlite => {
                sqlx::query_as("SELECT name, type FROM pragma_table_info($1)")
                    .bind(table)
                    .fetch_all(&self.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::query_as(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(name, ty)| {
                let ty = ty.to_ascii_uppercase();
                let t = if ty.contains("INT") {
                    ColType::Int
                } else if ty.contains("DOUBLE") || ty.contains("REAL") || ty.contains("FLOAT") {
                    ColType::Float
                } else {
                    ColType::Text
                };
                (name, t)
            })
            .collect())
    }

    /// A table's secondary indexes (not those behind a key or constraint): name and definition.
    async fn indexes(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        table: &str,
    ) -> Result<Vec<(String, String)>, BackupError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL"
            }
            Backend::Postgres => {
                "SELECT indexname::text, indexdef::text FROM pg_indexes \
                 WHERE schemaname = current_schema() AND tablename = $1 AND indexname NOT IN \
                 (SELECT c.conname::text FROM pg_constraint c JOIN pg_class t ON c.conrelid = t.oid \
                  WHERE t.relname = $1)"
            }
        };
        Ok(sqlx::query_as(sql).bind(table).fetch_all(&mut **tx).await?)
    }

    /// Rows in all backed-up tables (an empty store has none).
    pub async fn rows(&self) -> Result<u64, BackupError> {
        let mut n = 0;
        for table in TABLES {
            let c: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&self.pool)
                .await?;
            n += c as u64;
        }
        Ok(n)
    }

    /// Restores `archive` (checked first, whole) into this store: into an empty one, or over
    /// its contents with `force`. One transaction: a failed restore leaves the store as it was.
    pub async fn restore(&self, archive: &Path, force: bool) -> Result<Manifest, BackupError> {
        let manifest = verify(archive)?;
        let present = self.rows().await?;
        if present > 0 && !force {
            return Err(BackupError::NotEmpty(present));
        }
        // Columns the archive has and this schema too, per table; a newer schema's extra
        // columns take their defaults.
        let mut plans: Vec<(String, Vec<Kept>)> = Vec::new();
        for part in &manifest.tables {
            let target = self.columns(&part.table).await?;
            let keep: Vec<Kept> = part
                .columns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let (_, t) = target.iter().find(|(n, _)| n == c)?;
                    Some((i, c.clone(), *t))
                })
                .collect();
            if !keep.is_empty() {
                plans.push((part.table.clone(), keep));
            }
        }
        let sizes: Vec<(String, usize)> = plans
            .iter()
            .map(|(t, keep)| (t.clone(), (30_000 / keep.len()).clamp(1, 2_000)))
            .collect();
        // Reading and parsing runs on a thread of its own, a few batches ahead of the inserts:
        // the database works while the next batch is parsed.
        let (tx_batches, mut batches) = tokio::sync::mpsc::channel::<Result<Batch, BackupError>>(4);
        let path = archive.to_owned();
        let reader = std::thread::spawn(move || {
            if let Err(e) = read_batches(&path, &sizes, &tx_batches) {
                let _ = tx_batches.blocking_send(Err(e));
            }
        });
        let mut tx = self.pool.begin().await?;
        if force {
            for table in TABLES.iter().rev() {
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // Large tables load faster without their secondary indexes, rebuilt once at the end.
        let mut rebuild = Vec::new();
        for part in manifest.tables.iter().filter(|p| p.rows >= 10_000) {
            for (name, def) in self.indexes(&mut tx, &part.table).await? {
                sqlx::query(&format!("DROP INDEX {name}"))
                    .execute(&mut *tx)
                    .await?;
                rebuild.push(def);
            }
        }
        while let Some(batch) = batches.recv().await {
            let batch = batch?;
            let Some((_, keep)) = plans.iter().find(|(t, _)| *t == batch.table) else {
                continue;
            };
            insert(&mut tx, self.backend, &batch.table, keep, &batch.rows).await?;
        }
        let _ = reader.join();
        for def in rebuild {
            sqlx::query(&def).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(manifest)
    }
}

/// One multi-row insert. SQLite gets anonymous `?` placeholders: looking up a numbered one's
/// name walks every parameter, which made binding a large statement quadratic.
async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    table: &str,
    cols: &[Kept],
    rows: &[Vec<serde_json::Value>],
) -> Result<(), BackupError> {
    let names: Vec<&str> = cols.iter().map(|c| c.1.as_str()).collect();
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", names.join(", "));
    let mut n = 0;
    for (r, _) in rows.iter().enumerate() {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..cols.len() {
            if c > 0 {
                sql.push(',');
            }
            n += 1;
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => sql.push_str(&format!("${n}")),
            }
        }
        sql.push(')');
    }
    // Not kept prepared: a restore runs each statement shape a few times, and a cached one would
    // carry the parameter types of its first rows (sqlx types a NULL f64 as `float4`).
    let mut q = sqlx::query(&sql).persistent(false);
    for row in rows {
        for (i, _, ty) in cols {
            let v = row.get(*i).unwrap_or(&serde_json::Value::Null);
            q = match ty {
                ColType::Int => q.bind(v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))),
                ColType::Float => q.bind(v.as_f64()),
                ColType::Text => q.bind(match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                }),
            };
        }
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_time() {
        assert_eq!(
            file_name(1_795_400_000_123),
            "pylon-20261123T021320.123Z.tar.gz"
        );
        let times = [1_000, 5_000, 61_999, 62_000, 3_600_000];
        let names: Vec<String> = times
            .iter()
            .map(|ms| file_name(1_795_400_000_000 + ms))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    /// Every table the migrations make is in a backup, except the per-process ones.
    #[tokio::test]
    async fn a_backup_holds_every_durable_table() {
        let dir = std::env::temp_dir().join(format!("pylon-backup-{}", uuid::Uuid::new_v4()));
        let store = Store::open_sqlite(&dir)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name NOT IN ('_sqlx_migrations', 'leases', 'rollout_windows', 'acme_challenges') ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap_or_default();
        let mut ours: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
        ours.sort();
        assert_eq!(tables, ours);
        let _ = std::fs::remove_dir_all(dir);
    }
}
