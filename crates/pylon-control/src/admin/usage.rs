//! `/admin/v1/usage`: spend, tokens and requests grouped by key, team, model or day.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use pylon_store::GroupBy;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{AdminError, ErrorBody, UsageReport, UsageView};
use crate::Control;

/// Query of a usage report.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageQuery {
    /// `key`, `team`, `model` or `day` (default `day`).
    group_by: Option<String>,
    /// First day, `YYYY-MM-DD` (default: 30 days ago).
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (default: today).
    to: Option<String>,
}

fn day(offset_days: i64) -> String {
    let secs = crate::keys::unix_now() + offset_days * 86_400;
    civil_day(secs)
}

pub(crate) use pylon_types::day::civil_day;

fn valid_day(s: &str) -> bool {
    s.len() == 10
        && s.as_bytes()[4] == b'-'
        && s.as_bytes()[7] == b'-'
        && s.chars().filter(char::is_ascii_digit).count() == 8
}

/// Aggregated usage over a range of days.
#[utoipa::path(get, path = "/admin/v1/usage", operation_id = "get_usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody)))]
pub(super) async fn usage(
    State(c): State<Arc<Control>>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageReport>, AdminError> {
    let group_by = q.group_by.unwrap_or_else(|| "day".into());
    let group = match group_by.as_str() {
        "key" => GroupBy::Key,
        "team" => GroupBy::Team,
        "model" => GroupBy::Model,
        "day" => GroupBy::Day,
        other => {
            return Err(AdminError::bad_request(format!(
                "`group_by={other}`: use key, team, model or day"
            )))
        }
    };
    let from = q.from.unwrap_or_else(|| day(-30));
    let to = q.to.unwrap_or_else(|| day(0));
    if !valid_day(&from) || !valid_day(&to) {
        return Err(AdminError::bad_request(
            "`from` and `to` are days like 2026-11-22",
        ));
    }
    let rows = c.store.usage(group, &from, &to).await?;
    let rows = rows
        .into_iter()
        .map(|r| UsageView {
            group: r.group,
            requests: r.requests,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_usd: r.cost_usd,
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
    Query(q): Query<EstimateQuery>,
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
