//! The archive: a gzip'd tar, `manifest.json` first, then one JSON-lines part per table.
//! Writing it, checking it whole, and reading its rows back in batches.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{hex, io, schema_version, BackupError, Manifest, FORMAT};

/// Rows of one table, parsed, on their way to an insert.
pub(super) struct Batch {
    pub table: String,
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// Reads the archive's parts and sends their rows in batches of each table's size.
pub(super) fn read_batches(
    archive: &Path,
    sizes: &[(String, usize)],
    out: &tokio::sync::mpsc::Sender<Result<Batch, BackupError>>,
) -> Result<(), BackupError> {
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    for entry in tar.entries().map_err(io(archive))? {
        let entry = entry.map_err(io(archive))?;
        let name = entry.path().map_err(io(archive))?.display().to_string();
        let Some(table) = name
            .strip_prefix("tables/")
            .and_then(|n| n.strip_suffix(".jsonl"))
        else {
            continue;
        };
        let Some((_, per_batch)) = sizes.iter().find(|(t, _)| t == table) else {
            continue;
        };
        let mut rows = Vec::with_capacity(*per_batch);
        for line in BufReader::with_capacity(1 << 20, entry).lines() {
            let line = line.map_err(io(archive))?;
            let row: Vec<serde_json::Value> = serde_json::from_str(&line)
                .map_err(|e| BackupError::Corrupt(format!("{table}: {e}")))?;
            rows.push(row);
            if rows.len() == *per_batch {
                let full = std::mem::replace(&mut rows, Vec::with_capacity(*per_batch));
                if out
                    .blocking_send(Ok(Batch {
                        table: table.to_owned(),
                        rows: full,
                    }))
                    .is_err()
                {
                    // The restore stopped (an insert failed): nothing more to read.
                    return Ok(());
                }
            }
        }
        if !rows.is_empty()
            && out
                .blocking_send(Ok(Batch {
                    table: table.to_owned(),
                    rows,
                }))
                .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Writes `manifest.json` then every table's part into a gzip'd tar at `out` (through a
/// temporary name, so a failed backup never leaves a file that looks whole).
pub(super) fn pack(work: &Path, manifest: &Manifest, out: &Path) -> Result<(), BackupError> {
    let tmp = PathBuf::from(format!("{}.tmp", out.display()));
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let text =
        serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Corrupt(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o600);
    header.set_mtime((manifest.created_at_ms / 1000) as u64);
    header.set_cksum();
    tar.append_data(&mut header, "manifest.json", text.as_slice())
        .map_err(io(&tmp))?;
    for part in &manifest.tables {
        let path = work.join(format!("{}.jsonl", part.table));
        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
        tar.append_file(format!("tables/{}.jsonl", part.table), &mut f)
            .map_err(io(&path))?;
    }
    let gz = tar.into_inner().map_err(io(&tmp))?;
    let mut w = gz.finish().map_err(io(&tmp))?;
    w.flush().map_err(io(&tmp))?;
    w.into_inner()
        .map_err(|e| BackupError::Io {
            path: tmp.display().to_string(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io(out))
}

/// Checks an archive whole: the manifest, every part's checksum and row count, every row
/// readable with the manifest's columns, and a schema this binary can restore.
pub fn verify(archive: &Path) -> Result<Manifest, BackupError> {
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let corrupt = |what: String| BackupError::Corrupt(what);
    let mut entries = tar
        .entries()
        .map_err(|e| corrupt(format!("not a gzip'd tar: {e}")))?;
    let mut first = entries
        .next()
        .ok_or_else(|| corrupt("empty archive".into()))?
        .map_err(|e| corrupt(e.to_string()))?;
    if first.path().map_err(|e| corrupt(e.to_string()))?.as_ref() != Path::new("manifest.json") {
        return Err(corrupt("the first entry is not manifest.json".into()));
    }
    let mut text = Vec::new();
    first
        .read_to_end(&mut text)
        .map_err(|e| corrupt(e.to_string()))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| corrupt(format!("manifest.json: {e}")))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Incompatible(format!(
            "archive format {} is not one this Pylon reads ({FORMAT})",
            manifest.format
        )));
    }
    if manifest.schema_version > schema_version() {
        return Err(BackupError::Incompatible(format!(
            "the backup's schema ({}) is newer than this Pylon's ({}): restore it with Pylon {} or newer",
            manifest.schema_version,
            schema_version(),
            manifest.pylon_version
        )));
    }
    let mut seen = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| corrupt(e.to_string()))?
            .display()
            .to_string();
        let part = name
            .strip_prefix("tables/")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|t| manifest.tables.iter().find(|p| p.table == t))
            .ok_or_else(|| corrupt(format!("unexpected entry {name}")))?;
        let mut hash = Sha256::new();
        let mut rows = 0u64;
        let mut reader = BufReader::with_capacity(1 << 20, entry);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| corrupt(format!("{name}: {e}")))?;
            if n == 0 {
                break;
            }
            hash.update(line.as_bytes());
            let row: Vec<serde_json::Value> = serde_json::from_str(&line)
                .map_err(|e| corrupt(format!("{name} row {}: {e}", rows + 1)))?;
            if row.len() != part.columns.len() {
                return Err(corrupt(format!(
                    "{name} row {}: {} values for {} columns",
                    rows + 1,
                    row.len(),
                    part.columns.len()
                )));
            }
            rows += 1;
        }
        if hex(&hash.finalize()) != part.sha256 {
            return Err(corrupt(format!("{name}: checksum mismatch")));
        }
        if rows != part.rows {
            return Err(corrupt(format!(
                "{name}: {rows} rows, the manifest says {}",
                part.rows
            )));
        }
        seen.push(part.table.clone());
    }
    if let Some(missing) = manifest.tables.iter().find(|p| !seen.contains(&p.table)) {
        return Err(corrupt(format!(
            "tables/{}.jsonl is missing",
            missing.table
        )));
    }
    Ok(manifest)
}
