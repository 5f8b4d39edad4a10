//! `/admin/v1/usage`: spend, tokens and requests grouped by key, team, model or day.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use pylon_store::{Bucket, Dim};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{AdminError, AdminQuery, ErrorBody, UsageReport, UsageView};
use crate::Control;

/// Query of a usage report.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageQuery {
    /// Comma-separated dimensions among `key`, `team`, `model`, `provider`, and at most one time
    /// bucket, `hour` or `day` (default `day`).
    #[param(
        pattern = "^(((key|team|model|provider),)*(key|team|model|provider|hour|day)|(hour|day)(,(key|team|model|provider))+)$"
    )]
    group_by: Option<String>,
    /// First day, `YYYY-MM-DD` (default: 30 days ago).
    #[param(pattern = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (default: today).
    #[param(pattern = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    to: Option<String>,
}

fn day(offset_days: i64) -> String {
    let secs = crate::keys::unix_now() + offset_days * 86_400;
    civil_day(secs)
}

pub(crate) use pylon_types::day::civil_day;

/// Unix seconds at the start of a `YYYY-MM-DD` day (UTC).
fn unix_of_day(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if s.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (
        s[..4].parse().ok()?,
        s[5..7].parse().ok()?,
        s[8..].parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), shifted so March starts the year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400)
}

/// Aggregated usage over a range of days, from hourly rollups (never the raw request log).
#[utoipa::path(get, path = "/admin/v1/usage", operation_id = "get_usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody)))]
pub(super) async fn usage(
    State(c): State<Arc<Control>>,
    AdminQuery(q): AdminQuery<UsageQuery>,
) -> Result<Json<UsageReport>, AdminError> {
    let group_by = q.group_by.unwrap_or_else(|| "day".into());
    let mut dims = Vec::new();
    let mut bucket = Bucket::All;
    for part in group_by.split(',').map(str::trim) {
        match part {
            "key" => dims.push(Dim::Key),
            "team" => dims.push(Dim::Team),
            "model" => dims.push(Dim::Model),
            "provider" => dims.push(Dim::Provider),
            "day" if bucket == Bucket::All => bucket = Bucket::Day,
            "hour" if bucket == Bucket::All => bucket = Bucket::Hour,
            other => {
                return Err(AdminError::bad_request(format!(
                    "`group_by={other}`: use key, team, model, provider and at most one of hour or day, comma-separated"
                )))
            }
        }
    }
    let from = q.from.unwrap_or_else(|| day(-30));
    let to = q.to.unwrap_or_else(|| day(0));
    let (Some(from_s), Some(to_s)) = (unix_of_day(&from), unix_of_day(&to)) else {
        return Err(AdminError::bad_request(
            "`from` and `to` are days like 2026-11-22",
        ));
    };
    let rows = c
        .store
        .usage_report(&dims, bucket, from_s, to_s + 86_400)
        .await?;
    let rows = rows
        .into_iter()
        .map(|r| {
            let when = r.bucket.map(|b| match bucket {
                Bucket::Hour => format!("{}T{:02}:00Z", civil_day(b), b.rem_euclid(86_400) / 3600),
                _ => civil_day(b),
            });
            let group = if r.keys.is_empty() {
                when.clone().unwrap_or_default()
            } else {
                r.keys.join("/")
            };
            UsageView {
                group,
                bucket: when,
                keys: r.keys,
                requests: r.requests,
                errors: r.errors,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_usd: r.cost_usd,
                avg_latency_ms: r.avg_latency_ms,
            }
        })
        .collect();
    Ok(Json(UsageReport {
        group_by,
        from,
        to,
        rows,
    }))
}

/// A traffic to price.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EstimateQuery {
    /// A model name (alias or `provider/model`) or an upstream model name.
    model: String,
    /// Number of requests (default 1).
    requests: Option<u64>,
    /// Input tokens per request.
    input_tokens: u64,
    /// Output tokens per request.
    output_tokens: u64,
}

/// The price of a traffic.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Estimate {
    pub model: String,
    /// The upstream model whose price was used.
    pub priced_as: String,
    pub requests: u64,
    pub cost_usd: f64,
}

/// Estimates the cost of a traffic from the price table.
#[utoipa::path(get, path = "/admin/v1/usage/estimate", operation_id = "estimate_cost", tag = "usage", params(EstimateQuery),
    responses((status = 200, body = Estimate), (status = 404, body = ErrorBody)))]
pub(super) async fn estimate(
    State(c): State<Arc<Control>>,
    AdminQuery(q): AdminQuery<EstimateQuery>,
) -> Result<Json<Estimate>, AdminError> {
    let requests = q.requests.unwrap_or(1);
    let Some((priced_as, cost_usd)) =
        c.gateway
            .estimate_cost(&q.model, requests, q.input_tokens, q.output_tokens)
    else {
        return Err(AdminError::new(
            axum::http::StatusCode::NOT_FOUND,
            "no_price",
            format!("no price for model `{}`; add one under [[prices]]", q.model),
        ));
    };
    Ok(Json(Estimate {
        model: q.model,
        priced_as,
        requests,
        cost_usd,
    }))
}
