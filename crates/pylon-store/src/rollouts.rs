//! Rollout state, verdict history and leases.

use crate::{get, Store, StoreError};

/// A rollout's stored progress.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub name: String,
    /// The state machine's progress, as JSON.
    pub progress: String,
    pub state: String,
    pub updated_at: i64,
}

/// One stored verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictRow {
    pub rollout: String,
    pub at: i64,
    pub outcome: String,
    /// The verdict's figures, as JSON.
    pub detail: String,
    pub state: String,
    pub weight: f64,
}

/// A rollout made through the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDefinition {
    pub name: String,
    /// The `[[rollouts]]` entry, as JSON.
    pub definition: String,
    pub created_at: i64,
    pub created_by: String,
}

impl Store {
    /// Every rollout made through the admin API, by name.
    pub async fn rollout_definitions(&self) -> Result<Vec<RolloutDefinition>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, definition, created_at, created_by FROM rollout_definitions ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutDefinition {
                    name: get(r, "name")?,
                    definition: get(r, "definition")?,
                    created_at: get(r, "created_at")?,
                    created_by: get(r, "created_by")?,
                })
            })
            .collect()
    }

    /// Stores a new rollout's definition; `false` when one of that name exists.
    pub async fn add_rollout_definition(&self, d: &RolloutDefinition) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO rollout_definitions (name, definition, created_at, created_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&d.name)
        .bind(&d.definition)
        .bind(d.created_at)
        .bind(&d.created_by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets a rollout made through the admin API: its definition, progress and verdicts.
    pub async fn delete_rollout(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM rollout_definitions WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        for sql in [
            "DELETE FROM rollouts WHERE name = $1",
            "DELETE FROM rollout_verdicts WHERE rollout = $1",
            "DELETE FROM rollout_windows WHERE rollout = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// A rollout's progress, if it was ever stored.
    pub async fn rollout(&self, name: &str) -> Result<Option<RolloutRow>, StoreError> {
        let row =
            sqlx::query("SELECT name, progress, state, updated_at FROM rollouts WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(RolloutRow {
                name: get(&r, "name")?,
                progress: get(&r, "progress")?,
                state: get(&r, "state")?,
                updated_at: get(&r, "updated_at")?,
            })
        })
        .transpose()
    }

    /// Stores a rollout's progress.
    pub async fn put_rollout(&self, r: &RolloutRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO rollouts (name, progress, state, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET progress = excluded.progress, state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(&r.name)
        .bind(&r.progress)
        .bind(&r.state)
        .bind(r.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends a verdict.
    pub async fn add_verdict(&self, v: &VerdictRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO rollout_verdicts (rollout, at, outcome, detail, state, weight) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&v.rollout)
        .bind(v.at)
        .bind(&v.outcome)
        .bind(&v.detail)
        .bind(&v.state)
        .bind(v.weight)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A rollout's latest verdicts, newest first.
    pub async fn verdicts(&self, rollout: &str, limit: i64) -> Result<Vec<VerdictRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT rollout, at, outcome, detail, state, weight FROM rollout_verdicts WHERE rollout = $1 ORDER BY at DESC LIMIT $2",
        )
        .bind(rollout)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(VerdictRow {
                    rollout: get(r, "rollout")?,
                    at: get(r, "at")?,
                    outcome: get(r, "outcome")?,
                    detail: get(r, "detail")?,
                    state: get(r, "state")?,
                    weight: get(r, "weight")?,
                })
            })
            .collect()
    }

    /// Hands an instance's per-arm counts to the judge.
    pub async fn push_window(
        &self,
        rollout: &str,
        instance: &str,
        at: i64,
        data: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO rollout_windows (rollout, instance, at, data) VALUES ($1, $2, $3, $4)",
        )
        .bind(rollout)
        .bind(instance)
        .bind(at)
        .bind(data)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes (deletes and returns) every pushed window of a rollout.
    pub async fn take_windows(&self, rollout: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("DELETE FROM rollout_windows WHERE rollout = $1 RETURNING data")
            .bind(rollout)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| get(r, "data")).collect()
    }

    /// Takes or renews the lease `name` for `holder` until `now + ttl_ms`; true when `holder`
    /// holds it (it was free, expired, or already its own).
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a lease up (at shutdown, so another instance takes over at once).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
