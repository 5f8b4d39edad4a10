//! The request log: one row per AI request, hourly usage rollups and error groups, all written
//! in one transaction per batch; queries for the admin API.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;

use crate::{get, nullable_f64, Backend, Store, StoreError};

/// One request as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestRow {
    /// Unix milliseconds when it finished.
    pub at_ms: i64,
    pub request_id: String,
    /// `-` without an authenticated key.
    pub key_id: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub route: String,
    /// The model the client asked for.
    pub model: String,
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub status: i64,
    /// `ok`, `error`, `cancelled` or `broken`.
    pub outcome: String,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    /// `hit`, `miss` or `bypass` when a response cache is in front.
    pub cache: Option<String>,
    pub attempts: i64,
    /// The fallback model that served.
    pub fallback: Option<String>,
    pub stream: bool,
    pub trace_id: Option<String>,
    /// For a semantic cache hit: the cosine similarity of the question it matched.
    #[serde(default)]
    pub cache_similarity: Option<f64>,
    /// The cached question whose answer was served (truncated).
    #[serde(default)]
    pub cache_matched: Option<String>,
    /// The cache entry that answered.
    #[serde(default)]
    pub cache_entry: Option<String>,
    /// The asked question's id in the cache (a hash: the text is not logged), for feedback.
    #[serde(default)]
    pub cache_question: Option<String>,
}

const COLUMNS: &str = "at_ms, request_id, key_id, user_id, team_id, route, model, served_model, provider, status, outcome, \
    error_class, error, latency_ms, ttft_ms, input_tokens, output_tokens, cost_usd, cache, attempts, fallback, stream, trace_id, \
    cache_similarity, cache_matched, cache_entry, cache_question";
const NCOL: usize = 27;
/// Rows per INSERT statement, largest first. Few large statements keep the round trips to the
/// SQLite thread (each a wake-up of two threads) few; 512 rows stay well under either
/// backend's limit of bound parameters, and binding them holds a control-plane worker for well
/// under a millisecond. Every size is kept prepared, so a remainder never re-parses thousands
/// of parameters.
const CHUNKS: [usize; 4] = [512, 64, 8, 1];

/// `INSERT INTO requests` with `rows` rows of parameters.
fn insert_sql(backend: Backend, rows: usize) -> String {
    use std::fmt::Write;
    // The nullable floats arrive as NaN for NULL (see `nullable_f64`).
    let nullable: Vec<bool> = COLUMNS
        .split(',')
        .map(|c| matches!(c.trim(), "ttft_ms" | "cache_similarity"))
        .collect();
    let mut sql = format!("INSERT INTO requests ({COLUMNS}) VALUES ");
    for i in 0..rows {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for (c, &nullable) in nullable.iter().enumerate() {
            if c > 0 {
                sql.push_str(", ");
            }
            if nullable {
                sql.push_str("NULLIF(");
            }
            // SQLite resolves a named parameter (`$n`) by scanning every name in the
            // statement: thousands of them made each batch quadratic (a third of the
            // gateway's CPU under load). Anonymous `?` binds in order.
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    let _ = write!(sql, "${}", i * NCOL + c + 1);
                }
            }
            if nullable {
                sql.push_str(", 'NaN')");
            }
        }
        sql.push(')');
    }
    sql
}

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    /// Exact status, or a class: `4xx`/`5xx` as 400/500 with `status_class`.
    pub status: Option<i64>,
    pub status_class: Option<i64>,
    pub error_class: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Continue after this (at_ms, request_id), newest first.
    pub before: Option<(i64, String)>,
    pub limit: i64,
}

/// A dimension of a usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Key,
    Team,
    Model,
    Provider,
}

impl Dim {
    fn column(self) -> &'static str {
        match self {
            Dim::Key => "key_id",
            Dim::Team => "team_id",
            Dim::Model => "model",
            Dim::Provider => "provider",
        }
    }
}

/// Time buckets of a usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Hour,
    Day,
    /// One bucket for the whole range.
    All,
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageBucket {
    /// Start of the bucket, unix seconds (absent for `bucket=all`).
    pub bucket: Option<i64>,
    /// The values of the grouped dimensions, in the order asked.
    pub keys: Vec<String>,
    pub requests: i64,
    pub errors: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub avg_latency_ms: f64,
}

/// Errors of one class on one route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorGroup {
    pub error_class: String,
    pub route: String,
    pub count: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// One request of the group, to look up in the request log.
    pub example_request_id: String,
    pub last_message: Option<String>,
}

/// Requests summed per hour, key, team, model and provider: the rollup of requests whose rows
/// were not kept (the data plane's queue was full).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourlyTotal {
    /// Unix seconds at the start of the hour.
    pub hour: i64,
    pub key_id: String,
    pub team_id: String,
    pub model: String,
    pub provider: String,
    pub requests: i64,
    pub errors: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub latency_ms_sum: f64,
}

/// Adds to one hourly rollup.
async fn upsert_rollup(
    tx: &mut sqlx::Transaction<'_, Any>,
    (hour, key, team, model, provider): (i64, &str, &str, &str, &str),
    u: &Rollup,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO usage_hourly (hour, key_id, team_id, model, provider, requests, errors, input_tokens, output_tokens, cost_usd, latency_ms_sum) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (hour, key_id, team_id, model, provider) DO UPDATE SET \
         requests = usage_hourly.requests + excluded.requests, errors = usage_hourly.errors + excluded.errors, \
         input_tokens = usage_hourly.input_tokens + excluded.input_tokens, output_tokens = usage_hourly.output_tokens + excluded.output_tokens, \
         cost_usd = usage_hourly.cost_usd + excluded.cost_usd, latency_ms_sum = usage_hourly.latency_ms_sum + excluded.latency_ms_sum",
    )
    .bind(hour)
    .bind(key)
    .bind(team)
    .bind(model)
    .bind(provider)
    .bind(u.requests)
    .bind(u.errors)
    .bind(u.input_tokens)
    .bind(u.output_tokens)
    .bind(u.cost_usd)
    .bind(u.latency_ms_sum)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Default)]
struct Rollup {
    requests: i64,
    errors: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    latency_ms_sum: f64,
}

fn bind_row<'q>(
    q: Query<'q, Any, AnyArguments<'q>>,
    r: &'q RequestRow,
) -> Query<'q, Any, AnyArguments<'q>> {
    q.bind(r.at_ms)
        .bind(r.request_id.as_str())
        .bind(r.key_id.as_str())
        .bind(r.user_id.as_deref())
        .bind(r.team_id.as_deref())
        .bind(r.route.as_str())
        .bind(r.model.as_str())
        .bind(r.served_model.as_deref())
        .bind(r.provider.as_deref())
        .bind(r.status)
        .bind(r.outcome.as_str())
        .bind(r.error_class.as_deref())
        .bind(r.error.as_deref())
        .bind(r.latency_ms)
        .bind(nullable_f64(r.ttft_ms))
        .bind(r.input_tokens)
        .bind(r.output_tokens)
        .bind(r.cost_usd)
        .bind(r.cache.as_deref())
        .bind(r.attempts)
        .bind(r.fallback.as_deref())
        .bind(i64::from(r.stream))
        .bind(r.trace_id.as_deref())
        .bind(nullable_f64(r.cache_similarity))
        .bind(r.cache_matched.as_deref())
        .bind(r.cache_entry.as_deref())
        .bind(r.cache_question.as_deref())
}

fn row(r: &sqlx::any::AnyRow) -> Result<RequestRow, StoreError> {
    Ok(RequestRow {
        at_ms: get(r, "at_ms")?,
        request_id: get(r, "request_id")?,
        key_id: get(r, "key_id")?,
        user_id: get(r, "user_id")?,
        team_id: get(r, "team_id")?,
        route: get(r, "route")?,
        model: get(r, "model")?,
        served_model: get(r, "served_model")?,
        provider: get(r, "provider")?,
        status: get(r, "status")?,
        outcome: get(r, "outcome")?,
        error_class: get(r, "error_class")?,
        error: get(r, "error")?,
        latency_ms: get(r, "latency_ms")?,
        ttft_ms: get(r, "ttft_ms")?,
        input_tokens: get(r, "input_tokens")?,
        output_tokens: get(r, "output_tokens")?,
        cost_usd: get(r, "cost_usd")?,
        cache: get(r, "cache")?,
        attempts: get(r, "attempts")?,
        fallback: get(r, "fallback")?,
        stream: get::<i64>(r, "stream")? != 0,
        trace_id: get(r, "trace_id")?,
        cache_similarity: get(r, "cache_similarity")?,
        cache_matched: get(r, "cache_matched")?,
        cache_entry: get(r, "cache_entry")?,
        cache_question: get(r, "cache_question")?,
    })
}

impl Store {
    /// Adds request totals whose rows were not kept to the hourly rollups, in one transaction.
    pub async fn add_rollups(&self, totals: &[HourlyTotal]) -> Result<(), StoreError> {
        if totals.is_empty() {
            return Ok(());
        }
        let mut tx = self.bulk.begin().await?;
        for t in totals {
            let u = Rollup {
                requests: t.requests,
                errors: t.errors,
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
                cost_usd: t.cost_usd,
                latency_ms_sum: t.latency_ms_sum,
            };
            let dims = (t.hour, &*t.key_id, &*t.team_id, &*t.model, &*t.provider);
            upsert_rollup(&mut tx, dims, &u).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes a batch: the rows (unless `rows_too` is false), their hourly rollups and error
    /// groups, in one transaction.
    pub async fn record_requests(
        &self,
        batch: &[RequestRow],
        rows_too: bool,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.bulk.begin().await?;
        if rows_too {
            let mut sql: [Option<String>; CHUNKS.len()] = Default::default();
            let mut rest = batch;
            while !rest.is_empty() {
                // The largest statement size that fits: a batch of n rows takes at most a
                // few statements of each size, and each size stays prepared.
                let k = CHUNKS
                    .iter()
                    .position(|&n| n <= rest.len())
                    .unwrap_or(CHUNKS.len() - 1);
                let (chunk, tail) = rest.split_at(CHUNKS[k].min(rest.len()));
                rest = tail;
                let sql = sql[k].get_or_insert_with(|| insert_sql(self.backend, chunk.len()));
                let mut q = sqlx::query(sql.as_str());
                for r in chunk {
                    q = bind_row(q, r);
                }
                q.execute(&mut *tx).await?;
            }
        }
        let mut rollups: HashMap<(i64, &str, &str, &str, &str), Rollup> = HashMap::new();
        let mut errors: HashMap<(&str, &str), (i64, i64, i64, &RequestRow)> = HashMap::new();
        for r in batch {
            let hour = r.at_ms.div_euclid(3_600_000) * 3600;
            let u = rollups
                .entry((
                    hour,
                    &r.key_id,
                    r.team_id.as_deref().unwrap_or(""),
                    &r.model,
                    r.provider.as_deref().unwrap_or(""),
                ))
                .or_default();
            u.requests += 1;
            u.errors += i64::from(r.status >= 400 || r.outcome == "broken");
            u.input_tokens += r.input_tokens;
            u.output_tokens += r.output_tokens;
            u.cost_usd += r.cost_usd;
            u.latency_ms_sum += r.latency_ms;
            if let Some(class) = &r.error_class {
                let e = errors
                    .entry((class, &r.route))
                    .or_insert((0, r.at_ms, r.at_ms, r));
                e.0 += 1;
                e.1 = e.1.min(r.at_ms);
                if r.at_ms >= e.2 {
                    e.2 = r.at_ms;
                    e.3 = r;
                }
            }
        }
        for ((hour, key, team, model, provider), u) in rollups {
            upsert_rollup(&mut tx, (hour, key, team, model, provider), &u).await?;
        }
        for ((class, route), (count, first, last, example)) in errors {
            sqlx::query(
                "INSERT INTO error_groups (error_class, route, count, first_seen_ms, last_seen_ms, example_request_id, last_message) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (error_class, route) DO UPDATE SET \
                 count = error_groups.count + excluded.count, \
                 first_seen_ms = CASE WHEN excluded.first_seen_ms < error_groups.first_seen_ms THEN excluded.first_seen_ms ELSE error_groups.first_seen_ms END, \
                 last_seen_ms = CASE WHEN excluded.last_seen_ms > error_groups.last_seen_ms THEN excluded.last_seen_ms ELSE error_groups.last_seen_ms END, \
                 example_request_id = excluded.example_request_id, last_message = excluded.last_message",
            )
            .bind(class)
            .bind(route)
            .bind(count)
            .bind(first)
            .bind(last)
            .bind(&example.request_id)
            .bind(&example.error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Requests matching `f`, newest first.
    pub async fn requests(&self, f: &RequestFilter) -> Result<Vec<RequestRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM requests WHERE 1 = 1");
        let mut n = 0;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        let texts = [
            (&f.key_id, "key_id"),
            (&f.team_id, "team_id"),
            (&f.model, "model"),
            (&f.provider, "provider"),
            (&f.error_class, "error_class"),
        ];
        for (v, column) in &texts {
            if v.is_some() {
                sql.push_str(&format!(" AND {column} = {}", param()));
            }
        }
        if f.status.is_some() {
            sql.push_str(&format!(" AND status = {}", param()));
        }
        if f.status_class.is_some() {
            sql.push_str(&format!(
                " AND status >= {} AND status < {}",
                param(),
                param()
            ));
        }
        if f.since_ms.is_some() {
            sql.push_str(&format!(" AND at_ms >= {}", param()));
        }
        if f.until_ms.is_some() {
            sql.push_str(&format!(" AND at_ms < {}", param()));
        }
        if f.before.is_some() {
            let (a, b, c) = (param(), param(), param());
            sql.push_str(&format!(
                " AND (at_ms < {a} OR (at_ms = {b} AND request_id < {c}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY at_ms DESC, request_id DESC LIMIT {}",
            param()
        ));
        let mut q = sqlx::query(&sql);
        for (v, _) in texts {
            if let Some(v) = v.as_ref() {
                q = q.bind(v);
            }
        }
        if let Some(s) = f.status {
            q = q.bind(s);
        }
        if let Some(c) = f.status_class {
            q = q.bind(c).bind(c + 100);
        }
        if let Some(s) = f.since_ms {
            q = q.bind(s);
        }
        if let Some(u) = f.until_ms {
            q = q.bind(u);
        }
        if let Some((at, id)) = &f.before {
            q = q.bind(*at).bind(*at).bind(id);
        }
        let rows = q.bind(f.limit).fetch_all(&self.pool).await?;
        rows.iter().map(row).collect()
    }

    /// The request-log row of a semantic cache hit, by request id.
    pub async fn semantic_hit(&self, request_id: &str) -> Result<Option<RequestRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM requests WHERE request_id = $1 AND cache_entry IS NOT NULL"
        );
        let found = sqlx::query(&sql)
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        found.as_ref().map(row).transpose()
    }

    /// Usage from the hourly rollups between two unix times (seconds), grouped by `dims` and
    /// time `bucket`.
    pub async fn usage_report(
        &self,
        dims: &[Dim],
        bucket: Bucket,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        let bucket_expr = match bucket {
            Bucket::Hour => Some("hour"),
            Bucket::Day => Some("(hour / 86400) * 86400"),
            Bucket::All => None,
        };
        let mut select: Vec<String> = Vec::new();
        let mut group: Vec<String> = Vec::new();
        if let Some(b) = bucket_expr {
            select.push(format!("{b} AS bucket"));
            group.push(b.to_owned());
        }
        for (i, d) in dims.iter().enumerate() {
            select.push(format!("{} AS d{i}", d.column()));
            group.push(d.column().to_owned());
        }
        let group_sql = if group.is_empty() {
            String::new()
        } else {
            format!(
                " GROUP BY {} ORDER BY {}",
                group.join(", "),
                group.join(", ")
            )
        };
        select.push(
            "CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(errors) AS BIGINT) AS errors, \
             CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
             CAST(SUM(cost_usd) AS DOUBLE PRECISION) AS cost_usd, CAST(SUM(latency_ms_sum) AS DOUBLE PRECISION) AS latency"
                .to_owned(),
        );
        let sql = format!(
            "SELECT {} FROM usage_hourly WHERE hour >= $1 AND hour < $2{group_sql}",
            select.join(", ")
        );
        let rows = sqlx::query(&sql)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let requests: Option<i64> = get(r, "requests")?;
            let Some(requests) = requests.filter(|n| *n > 0) else {
                continue;
            };
            let mut keys = Vec::with_capacity(dims.len());
            for i in 0..dims.len() {
                keys.push(get(r, &format!("d{i}"))?);
            }
            let latency: f64 = get(r, "latency")?;
            out.push(UsageBucket {
                bucket: if bucket_expr.is_some() {
                    Some(get(r, "bucket")?)
                } else {
                    None
                },
                keys,
                requests,
                errors: get(r, "errors")?,
                input_tokens: get(r, "input_tokens")?,
                output_tokens: get(r, "output_tokens")?,
                cost_usd: get(r, "cost_usd")?,
                avg_latency_ms: latency / requests as f64,
            });
        }
        Ok(out)
    }

    /// Error groups seen since `since_ms`, most recent first.
    pub async fn error_groups(&self, since_ms: i64) -> Result<Vec<ErrorGroup>, StoreError> {
        let rows = sqlx::query(
            "SELECT error_class, route, count, first_seen_ms, last_seen_ms, example_request_id, last_message \
             FROM error_groups WHERE last_seen_ms >= $1 ORDER BY last_seen_ms DESC",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ErrorGroup {
                    error_class: get(r, "error_class")?,
                    route: get(r, "route")?,
                    count: get(r, "count")?,
                    first_seen_ms: get(r, "first_seen_ms")?,
                    last_seen_ms: get(r, "last_seen_ms")?,
                    example_request_id: get(r, "example_request_id")?,
                    last_message: get(r, "last_message")?,
                })
            })
            .collect()
    }

    /// Deletes request rows older than `before_ms`, then the oldest beyond `max_rows`; returns
    /// how many went. Rollups are kept: they are small and reports outlive the rows.
    pub async fn prune_requests(&self, before_ms: i64, max_rows: u64) -> Result<u64, StoreError> {
        let mut deleted = sqlx::query("DELETE FROM requests WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let row = sqlx::query("SELECT COUNT(*) AS n FROM requests")
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = get(&row, "n")?;
        let excess = n - i64::try_from(max_rows).unwrap_or(i64::MAX);
        if excess > 0 {
            let row =
                sqlx::query("SELECT at_ms FROM requests ORDER BY at_ms ASC LIMIT 1 OFFSET $1")
                    .bind(excess - 1)
                    .fetch_one(&self.pool)
                    .await?;
            let cutoff: i64 = get(&row, "at_ms")?;
            deleted += sqlx::query("DELETE FROM requests WHERE at_ms <= $1")
                .bind(cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }
}
