//! Alerts: each rule's current alert and the history of what happened to it.

use crate::{get, nullable_f64, Store, StoreError};

/// A rule's current alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub name: String,
    /// `inactive`, `pending`, `firing` or `resolved`.
    pub state: String,
    pub severity: String,
    /// JSON object.
    pub labels: String,
    /// JSON object.
    pub annotations: String,
    pub value: Option<f64>,
    pub active_since: Option<i64>,
    pub firing_since: Option<i64>,
    pub resolved_at: Option<i64>,
    pub acked_by: Option<String>,
    pub acked_until: Option<i64>,
    pub updated_at: i64,
}

/// One thing that happened to an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    pub at: i64,
    pub alert: String,
    pub kind: String,
    /// JSON object.
    pub detail: String,
}

const COLUMNS: &str = "name, state, severity, labels, annotations, value, active_since, firing_since, resolved_at, acked_by, acked_until, updated_at";

fn row(r: &sqlx::any::AnyRow) -> Result<AlertRow, StoreError> {
    Ok(AlertRow {
        name: get(r, "name")?,
        state: get(r, "state")?,
        severity: get(r, "severity")?,
        labels: get(r, "labels")?,
        annotations: get(r, "annotations")?,
        value: get(r, "value")?,
        active_since: get(r, "active_since")?,
        firing_since: get(r, "firing_since")?,
        resolved_at: get(r, "resolved_at")?,
        acked_by: get(r, "acked_by")?,
        acked_until: get(r, "acked_until")?,
        updated_at: get(r, "updated_at")?,
    })
}

impl Store {
    /// Every rule's current alert, by name.
    pub async fn alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM alerts ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row).collect()
    }

    /// One rule's current alert.
    pub async fn alert(&self, name: &str) -> Result<Option<AlertRow>, StoreError> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM alerts WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// Stores a rule's alert as it is now (the acknowledgement is kept unless `a` sets one).
    /// Saves an anomaly detector's seasonal history (JSON `[[t_ms, value], …]`).
    pub async fn put_detector(&self, name: &str, points: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO alert_detectors (name, points, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET points = excluded.points, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(points)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every saved detector history, by alert name.
    pub async fn detectors(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, points FROM alert_detectors")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((get(r, "name")?, get(r, "points")?)))
            .collect()
    }

    pub async fn put_alert(&self, a: &AlertRow) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO alerts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, NULLIF($6, 'NaN'), $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (name) DO UPDATE SET state = excluded.state, severity = excluded.severity, \
             labels = excluded.labels, annotations = excluded.annotations, value = excluded.value, \
             active_since = excluded.active_since, firing_since = excluded.firing_since, \
             resolved_at = excluded.resolved_at, acked_by = excluded.acked_by, \
             acked_until = excluded.acked_until, updated_at = excluded.updated_at"
        ))
        .bind(&a.name)
        .bind(&a.state)
        .bind(&a.severity)
        .bind(&a.labels)
        .bind(&a.annotations)
        .bind(nullable_f64(a.value))
        .bind(a.active_since)
        .bind(a.firing_since)
        .bind(a.resolved_at)
        .bind(&a.acked_by)
        .bind(a.acked_until)
        .bind(a.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends to the history, keeping the newest `keep` events. One statement: a read then a
    /// write in one SQLite transaction fails at once when another writer holds the lock.
    pub async fn add_alert_event(&self, e: &AlertEvent, keep: i64) -> Result<(), StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO alert_events (id, at, alert, kind, detail) \
             SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4 FROM alert_events RETURNING id",
        )
        .bind(e.at)
        .bind(&e.alert)
        .bind(&e.kind)
        .bind(&e.detail)
        .fetch_one(&self.pool)
        .await?;
        if id % 100 == 0 {
            sqlx::query("DELETE FROM alert_events WHERE id <= $1")
                .bind(id - keep)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The history, newest first: everything, or one alert's.
    pub async fn alert_events(
        &self,
        alert: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AlertEvent>, StoreError> {
        let rows = match alert {
            Some(a) => sqlx::query(
                "SELECT at, alert, kind, detail FROM alert_events WHERE alert = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(a)
            .bind(limit),
            None => sqlx::query(
                "SELECT at, alert, kind, detail FROM alert_events ORDER BY id DESC LIMIT $1",
            )
            .bind(limit),
        }
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AlertEvent {
                    at: get(r, "at")?,
                    alert: get(r, "alert")?,
                    kind: get(r, "kind")?,
                    detail: get(r, "detail")?,
                })
            })
            .collect()
    }
}

/// A silence.
#[derive(Debug, Clone, PartialEq)]
pub struct SilenceRow {
    pub id: String,
    /// JSON object of label matchers.
    pub matchers: String,
    pub starts_at: i64,
    pub ends_at: i64,
    pub author: String,
    pub comment: String,
    pub created_at: i64,
}

impl Store {
    /// Silences that end after `since`, soonest ending first.
    pub async fn silences(&self, since: i64) -> Result<Vec<SilenceRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, matchers, starts_at, ends_at, author, comment, created_at FROM alert_silences \
             WHERE ends_at > $1 ORDER BY ends_at",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SilenceRow {
                    id: get(r, "id")?,
                    matchers: get(r, "matchers")?,
                    starts_at: get(r, "starts_at")?,
                    ends_at: get(r, "ends_at")?,
                    author: get(r, "author")?,
                    comment: get(r, "comment")?,
                    created_at: get(r, "created_at")?,
                })
            })
            .collect()
    }

    /// Stores a silence.
    pub async fn add_silence(&self, s: &SilenceRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO alert_silences (id, matchers, starts_at, ends_at, author, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&s.id)
        .bind(&s.matchers)
        .bind(s.starts_at)
        .bind(s.ends_at)
        .bind(&s.author)
        .bind(&s.comment)
        .bind(s.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a silence now; `false` when there is no such silence still in force.
    pub async fn expire_silence(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE alert_silences SET ends_at = $1 WHERE id = $2 AND ends_at > $1")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// An alert rule made through the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleRow {
    pub name: String,
    /// The `[[alerts]]` entry, as JSON.
    pub definition: String,
    pub created_at: i64,
    pub created_by: String,
}

impl Store {
    /// Every alert rule made through the admin API, by name.
    pub async fn alert_rules(&self) -> Result<Vec<AlertRuleRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, definition, created_at, created_by FROM alert_rules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AlertRuleRow {
                    name: get(r, "name")?,
                    definition: get(r, "definition")?,
                    created_at: get(r, "created_at")?,
                    created_by: get(r, "created_by")?,
                })
            })
            .collect()
    }

    /// Stores a new rule; `false` when one of that name exists.
    pub async fn add_alert_rule(&self, r: &AlertRuleRow) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO alert_rules (name, definition, created_at, created_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&r.name)
        .bind(&r.definition)
        .bind(r.created_at)
        .bind(&r.created_by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets a rule made through the admin API, and its alert (its history stays).
    pub async fn delete_alert_rule(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM alert_rules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM alerts WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
