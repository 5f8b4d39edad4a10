//! Feature flags made through the admin API, and the audit trail of every change.

use crate::{get, Store, StoreError};

/// A stored flag.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagRow {
    pub key: String,
    /// The flagd definition, as JSON.
    pub definition: String,
    pub updated_at: i64,
    pub updated_by: String,
}

/// One change to a flag.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagChange {
    pub key: String,
    pub at: i64,
    pub actor: String,
    /// `create`, `update`, `disable`, `enable` or `delete`.
    pub action: String,
    /// The definition after the change; `None` after a delete.
    pub definition: Option<String>,
}

impl Store {
    /// Every stored flag.
    pub async fn flags(&self) -> Result<Vec<FlagRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT flag_key, definition, updated_at, updated_by FROM flags ORDER BY flag_key",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FlagRow {
                    key: get(r, "flag_key")?,
                    definition: get(r, "definition")?,
                    updated_at: get(r, "updated_at")?,
                    updated_by: get(r, "updated_by")?,
                })
            })
            .collect()
    }

    /// The latest change time of any flag (a cheap check for "did anything change").
    pub async fn flags_version(&self) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n, COALESCE(MAX(at), 0) AS at FROM flag_changes")
            .fetch_one(&self.pool)
            .await?;
        Ok((get(&row, "n")?, get(&row, "at")?))
    }

    /// Stores a flag (or deletes it, with `definition` = `None`) and records the change, in one
    /// transaction.
    pub async fn change_flag(&self, c: &FlagChange) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        match &c.definition {
            Some(d) => {
                sqlx::query(
                    "INSERT INTO flags (flag_key, definition, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (flag_key) DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                )
                .bind(&c.key)
                .bind(d)
                .bind(c.at)
                .bind(&c.actor)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM flags WHERE flag_key = $1")
                    .bind(&c.key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(
            "INSERT INTO flag_changes (flag_key, at, actor, action, definition) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&c.key)
        .bind(c.at)
        .bind(&c.actor)
        .bind(&c.action)
        .bind(&c.definition)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A flag's changes, newest first.
    pub async fn flag_history(&self, key: &str, limit: i64) -> Result<Vec<FlagChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT flag_key, at, actor, action, definition FROM flag_changes WHERE flag_key = $1 ORDER BY at DESC LIMIT $2",
        )
        .bind(key)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FlagChange {
                    key: get(r, "flag_key")?,
                    at: get(r, "at")?,
                    actor: get(r, "actor")?,
                    action: get(r, "action")?,
                    definition: get(r, "definition")?,
                })
            })
            .collect()
    }
}
