//! Every SQL statement Pylon runs, portable across SQLite and PostgreSQL.

use sqlx::any::AnyRow;

use crate::{
    conflict, get, nullable_f64, ApiKey, Budget, Credential, GroupBy, Limits, Store, StoreError,
    Team, UsageDelta, UsageRow, User,
};

fn budget_of(row: &AnyRow) -> Result<Option<Budget>, StoreError> {
    let amount: Option<f64> = get(row, "budget_usd")?;
    let period: Option<String> = get(row, "budget_period")?;
    Ok(match (amount, period.and_then(|p| p.parse().ok())) {
        (Some(amount_usd), Some(period)) => Some(Budget { amount_usd, period }),
        _ => None,
    })
}

fn limits_of(row: &AnyRow, with_concurrency: bool) -> Result<Limits, StoreError> {
    Ok(Limits {
        rpm: get(row, "rpm")?,
        tpm: get(row, "tpm")?,
        max_concurrent: if with_concurrency {
            get(row, "max_concurrent")?
        } else {
            None
        },
    })
}

fn json_of(row: &AnyRow, col: &str) -> Result<serde_json::Value, StoreError> {
    let text: String = get(row, col)?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

fn team_of(row: &AnyRow) -> Result<Team, StoreError> {
    Ok(Team {
        id: get(row, "id")?,
        name: get(row, "name")?,
        limits: limits_of(row, false)?,
        budget: budget_of(row)?,
        metadata: json_of(row, "metadata")?,
        created_at: get(row, "created_at")?,
    })
}

fn key_of(row: &AnyRow) -> Result<ApiKey, StoreError> {
    let models: Option<String> = get(row, "allowed_models")?;
    Ok(ApiKey {
        id: get(row, "id")?,
        hash: get(row, "hash")?,
        prefix: get(row, "prefix")?,
        name: get(row, "name")?,
        team_id: get(row, "team_id")?,
        user_id: get(row, "user_id")?,
        allowed_models: models.and_then(|m| serde_json::from_str(&m).ok()),
        scopes: get::<Option<String>>(row, "scopes")?.and_then(|s| serde_json::from_str(&s).ok()),
        limits: limits_of(row, true)?,
        budget: budget_of(row)?,
        metadata: json_of(row, "metadata")?,
        expires_at: get(row, "expires_at")?,
        revoked_at: get(row, "revoked_at")?,
        replaced_by: get(row, "replaced_by")?,
        created_at: get(row, "created_at")?,
    })
}

/// The statement that stores `k`, bound.
fn insert_key_query(k: &ApiKey) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    let json = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|m| serde_json::to_string(m).unwrap_or_default())
    };
    sqlx::query(INSERT_KEY)
        .bind(&k.id)
        .bind(&k.hash)
        .bind(&k.prefix)
        .bind(&k.name)
        .bind(&k.team_id)
        .bind(&k.user_id)
        .bind(json(&k.allowed_models))
        .bind(k.limits.rpm)
        .bind(k.limits.tpm)
        .bind(k.limits.max_concurrent)
        .bind(nullable_f64(k.budget.map(|b| b.amount_usd)))
        .bind(k.budget.map(|b| b.period.as_str()))
        .bind(k.metadata.to_string())
        .bind(k.expires_at)
        .bind(k.revoked_at)
        .bind(&k.replaced_by)
        .bind(k.created_at)
        .bind(json(&k.scopes))
}

const INSERT_KEY: &str = "INSERT INTO api_keys (id, hash, prefix, name, team_id, user_id, allowed_models, rpm, tpm, max_concurrent, \
     budget_usd, budget_period, metadata, expires_at, revoked_at, replaced_by, created_at, scopes) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULLIF($11, 'NaN'), $12, $13, $14, $15, $16, $17, $18)";

const KEY_COLUMNS: &str =
    "id, hash, prefix, name, team_id, user_id, allowed_models, rpm, tpm, max_concurrent, \
     budget_usd, budget_period, metadata, expires_at, revoked_at, replaced_by, created_at, scopes";

impl Store {
    /// Adds a team; its name must be unique.
    pub async fn create_team(&self, t: &Team) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO teams (id, name, rpm, tpm, budget_usd, budget_period, metadata, created_at) \
             VALUES ($1, $2, $3, $4, NULLIF($5, 'NaN'), $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.limits.rpm)
        .bind(t.limits.tpm)
        .bind(nullable_f64(t.budget.map(|b| b.amount_usd)))
        .bind(t.budget.map(|b| b.period.as_str()))
        .bind(t.metadata.to_string())
        .bind(t.created_at)
        .execute(&self.pool)
        .await
        .map_err(conflict(format!("team `{}`", t.name)))?;
        Ok(())
    }

    /// Every team, oldest first.
    pub async fn list_teams(&self) -> Result<Vec<Team>, StoreError> {
        let rows = sqlx::query("SELECT * FROM teams ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(team_of).collect()
    }

    /// One team.
    pub async fn team(&self, id: &str) -> Result<Team, StoreError> {
        let row = sqlx::query("SELECT * FROM teams WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(team_of)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("team `{id}`")))
    }

    /// Adds a user.
    pub async fn create_user(&self, u: &User) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO users (id, email, team_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&u.id)
            .bind(&u.email)
            .bind(&u.team_id)
            .bind(u.created_at)
            .execute(&self.pool)
            .await
            .map_err(conflict(format!("user `{}`", u.email)))?;
        Ok(())
    }

    /// Every user, oldest first.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows =
            sqlx::query("SELECT id, email, team_id, created_at FROM users ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(User {
                    id: get(r, "id")?,
                    email: get(r, "email")?,
                    team_id: get(r, "team_id")?,
                    created_at: get(r, "created_at")?,
                })
            })
            .collect()
    }

    /// Stores a new key (its hash; the key itself is never stored).
    pub async fn insert_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        insert_key_query(k)
            .execute(&self.pool)
            .await
            .map_err(conflict(format!("key `{}`", k.name)))?;
        Ok(())
    }

    /// Every key, newest first.
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_of).collect()
    }

    /// One key.
    pub async fn key(&self, id: &str) -> Result<ApiKey, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(key_of)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("key `{id}`")))
    }

    /// Keys that can still authenticate at `now`.
    pub async fn active_keys(&self, now: i64) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_of).collect()
    }

    /// Revokes a key at `now`; revoking twice keeps the first time.
    pub async fn revoke_key(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("key `{id}`")));
        }
        Ok(())
    }

    /// Stores `new` and marks `old_id` as replaced by it, valid until `old_expires_at`, atomically.
    pub async fn rotate_key(
        &self,
        old_id: &str,
        new: &ApiKey,
        old_expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET replaced_by = $1, expires_at = CASE WHEN expires_at IS NULL OR expires_at > $2 THEN $2 ELSE expires_at END \
             WHERE id = $3 AND revoked_at IS NULL AND replaced_by IS NULL",
        )
        .bind(&new.id)
        .bind(old_expires_at)
        .bind(old_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "active, unrotated key `{old_id}`"
            )));
        }
        insert_key_query(new)
            .execute(&mut *tx)
            .await
            .map_err(conflict(format!("key `{}`", new.name)))?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts or replaces a provider's encrypted credential.
    pub async fn put_credential(&self, c: &Credential) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO provider_credentials (provider, ciphertext, nonce, master_key_id, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (provider) DO UPDATE SET ciphertext = excluded.ciphertext, nonce = excluded.nonce, \
             master_key_id = excluded.master_key_id, updated_at = excluded.updated_at",
        )
        .bind(&c.provider)
        .bind(&c.ciphertext)
        .bind(&c.nonce)
        .bind(&c.master_key_id)
        .bind(c.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every stored credential (still encrypted).
    pub async fn credentials(&self) -> Result<Vec<Credential>, StoreError> {
        let rows = sqlx::query("SELECT provider, ciphertext, nonce, master_key_id, updated_at FROM provider_credentials ORDER BY provider")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Credential {
                    provider: get(r, "provider")?,
                    ciphertext: get(r, "ciphertext")?,
                    nonce: get(r, "nonce")?,
                    master_key_id: get(r, "master_key_id")?,
                    updated_at: get(r, "updated_at")?,
                })
            })
            .collect()
    }

    /// Adds a batch of usage to the daily aggregates in one transaction.
    pub async fn add_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.bulk.begin().await?;
        for u in batch {
            sqlx::query(
                "INSERT INTO usage_daily (day, key_id, team_id, model, requests, input_tokens, output_tokens, cost_usd) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (day, key_id, model) DO UPDATE SET \
                 requests = usage_daily.requests + excluded.requests, input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
                 output_tokens = usage_daily.output_tokens + excluded.output_tokens, cost_usd = usage_daily.cost_usd + excluded.cost_usd",
            )
            .bind(&u.day)
            .bind(&u.key_id)
            .bind(&u.team_id)
            .bind(&u.model)
            .bind(u.requests)
            .bind(u.input_tokens)
            .bind(u.output_tokens)
            .bind(u.cost_usd)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Usage between two days (inclusive, `YYYY-MM-DD`), grouped.
    pub async fn usage(
        &self,
        group: GroupBy,
        from: &str,
        to: &str,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let column = match group {
            GroupBy::Key => "key_id",
            GroupBy::Team => "team_id",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        };
        let sql = format!(
            "SELECT {column} AS grp, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
             CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, CAST(SUM(cost_usd) AS DOUBLE PRECISION) AS cost_usd \
             FROM usage_daily WHERE day >= $1 AND day <= $2 GROUP BY {column} ORDER BY {column}"
        );
        let rows = sqlx::query(&sql)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    group: get(r, "grp")?,
                    requests: get(r, "requests")?,
                    input_tokens: get(r, "input_tokens")?,
                    output_tokens: get(r, "output_tokens")?,
                    cost_usd: get(r, "cost_usd")?,
                })
            })
            .collect()
    }

    /// Spend since `from_day` of every key (or team) that spent anything, in one query.
    pub async fn spend_since_all(
        &self,
        team: bool,
        from_day: &str,
    ) -> Result<std::collections::HashMap<String, f64>, StoreError> {
        let column = if team { "team_id" } else { "key_id" };
        let sql = format!(
            "SELECT {column} AS owner, CAST(SUM(cost_usd) AS DOUBLE PRECISION) AS spend FROM usage_daily \
             WHERE day >= $1 GROUP BY {column}"
        );
        let rows = sqlx::query(&sql)
            .bind(from_day)
            .fetch_all(&self.pool)
            .await?;
        let mut out = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let owner: String = get(row, "owner")?;
            let spend: f64 = get(row, "spend")?;
            out.insert(owner, spend);
        }
        Ok(out)
    }

    /// Claims the notification for one threshold of one budget period; true for exactly one
    /// caller, however many instances race.
    pub async fn claim_budget_event(
        &self,
        owner: &str,
        period_tag: &str,
        threshold_pct: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO budget_events (owner, period_tag, threshold_pct, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(owner)
        .bind(period_tag)
        .bind(threshold_pct)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
