//! `/admin/v1/requests` (the request log: filter, page, export), `/admin/v1/errors` (errors
//! grouped by class and route) and `/admin/v1/log/level` (the run-time log filter).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pylon_store::{ErrorGroup, RequestFilter, RequestRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AdminError, AdminQuery, ErrorBody};
use crate::Control;

/// Filters and paging of the request log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct RequestsQuery {
    key: Option<String>,
    team: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    /// An exact status (`429`) or a class (`5xx`).
    #[param(pattern = "^[1-5]([0-9]{2}|xx)$")]
    status: Option<String>,
    error_class: Option<String>,
    /// Unix milliseconds, inclusive.
    since: Option<i64>,
    /// Unix milliseconds, exclusive.
    until: Option<i64>,
    /// The `next` cursor of the previous page.
    #[param(pattern = "^-?[0-9]{1,18}:")]
    cursor: Option<String>,
    /// Rows per page (default 100, at most 1000: larger asks get 1000); with `format=jsonl` or
    /// `csv`, rows in the export (default and most 100000).
    #[param(minimum = 1, maximum = 100_000)]
    limit: Option<i64>,
    /// `json` (default, one page with a cursor), `jsonl` or `csv` (an export).
    #[param(pattern = "^(json|jsonl|csv)$")]
    format: Option<String>,
}

/// `<unix ms>:<request id>`, as `next` gives it.
fn cursor(c: &str) -> Option<(i64, String)> {
    let (at, id) = c.split_once(':')?;
    let digits = at.strip_prefix('-').unwrap_or(at);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((at.parse().ok()?, id.to_owned()))
}

/// One page of the request log, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RequestsPage {
    pub data: Vec<RequestRow>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next: Option<String>,
}

fn filter(q: &RequestsQuery, export: bool) -> Result<RequestFilter, AdminError> {
    let (status, status_class) = match q.status.as_deref().map(str::as_bytes) {
        None => (None, None),
        Some([d @ b'1'..=b'5', b'x', b'x']) => (None, Some(i64::from(d - b'0') * 100)),
        Some(b @ [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9']) => (
            Some(b.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))),
            None,
        ),
        Some(_) => {
            return Err(AdminError::bad_request(format!(
                "`status={}`: use a code like 429 or a class like 5xx",
                q.status.as_deref().unwrap_or_default()
            )))
        }
    };
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            cursor(c)
                .ok_or_else(|| AdminError::bad_request("`cursor` is not one this API returned"))?,
        ),
    };
    if q.limit.is_some_and(|l| !(1..=100_000).contains(&l)) {
        return Err(AdminError::bad_request(
            "`limit` must be between 1 and 100000",
        ));
    }
    let limit = match q.limit {
        Some(l) if export => l,
        Some(l) => l.min(1000),
        None if export => 100_000,
        None => 100,
    };
    Ok(RequestFilter {
        key_id: q.key.clone(),
        team_id: q.team.clone(),
        model: q.model.clone(),
        provider: q.provider.clone(),
        status,
        status_class,
        error_class: q.error_class.clone(),
        since_ms: q.since,
        until_ms: q.until,
        before,
        limit,
    })
}

/// The request log, newest first: a page (`json`) or an export (`jsonl`, `csv`).
#[utoipa::path(get, path = "/admin/v1/requests", operation_id = "list_requests", tag = "requests", params(RequestsQuery),
    responses((status = 200, description = "A page; `format=jsonl` gives an export as JSON lines and `format=csv` as CSV",
               content((RequestsPage = "application/json"), (String = "application/x-ndjson"), (String = "text/csv"))),
              (status = 400, body = ErrorBody)))]
pub(super) async fn list(
    State(c): State<Arc<Control>>,
    AdminQuery(q): AdminQuery<RequestsQuery>,
) -> Result<Response, AdminError> {
    let format = q.format.as_deref().unwrap_or("json");
    let export = match format {
        "json" => false,
        "jsonl" | "csv" => true,
        other => {
            return Err(AdminError::bad_request(format!(
                "`format={other}`: use json, jsonl or csv"
            )))
        }
    };
    let f = filter(&q, export)?;
    let rows = c.store.requests(&f).await?;
    match format {
        "jsonl" => {
            let mut out = String::new();
            for r in &rows {
                out.push_str(&serde_json::to_string(r).unwrap_or_default());
                out.push('\n');
            }
            Ok(download("application/x-ndjson", "requests.jsonl", out))
        }
        "csv" => Ok(download(
            "text/csv; charset=utf-8",
            "requests.csv",
            csv(&rows),
        )),
        _ => {
            let next = (rows.len() as i64 == f.limit)
                .then(|| rows.last().map(|r| format!("{}:{}", r.at_ms, r.request_id)))
                .flatten();
            Ok(Json(RequestsPage { data: rows, next }).into_response())
        }
    }
}

fn download(content_type: &'static str, name: &str, body: String) -> Response {
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or(HeaderValue::from_static("attachment"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

/// RFC 4180: fields quoted when they hold a comma, quote or line break; quotes doubled.
fn csv(rows: &[RequestRow]) -> String {
    const HEADER: &str = "at_ms,request_id,key_id,user_id,team_id,route,model,served_model,provider,status,outcome,error_class,error,latency_ms,ttft_ms,input_tokens,output_tokens,cost_usd,cache,attempts,fallback,stream,trace_id\r\n";
    let mut out = String::from(HEADER);
    let field = |out: &mut String, v: &str| {
        if v.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&v.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(v);
        }
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    for r in rows {
        let fields = [
            r.at_ms.to_string(),
            r.request_id.clone(),
            r.key_id.clone(),
            opt(&r.user_id),
            opt(&r.team_id),
            r.route.clone(),
            r.model.clone(),
            opt(&r.served_model),
            opt(&r.provider),
            r.status.to_string(),
            r.outcome.clone(),
            opt(&r.error_class),
            opt(&r.error),
            format!("{:.3}", r.latency_ms),
            r.ttft_ms.map(|t| format!("{t:.3}")).unwrap_or_default(),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            format!("{:.6}", r.cost_usd),
            opt(&r.cache),
            r.attempts.to_string(),
            opt(&r.fallback),
            r.stream.to_string(),
            opt(&r.trace_id),
        ];
        for (i, v) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(&mut out, v);
        }
        out.push_str("\r\n");
    }
    out
}

/// Since when to list error groups.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ErrorsQuery {
    /// Unix milliseconds (default: the last 24 hours).
    since: Option<i64>,
}

/// Errors grouped by class and route, most recently seen first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorGroups {
    pub data: Vec<ErrorGroup>,
}

/// Errors grouped by class and route, with counts, first and last seen and an example request.
#[utoipa::path(get, path = "/admin/v1/errors", operation_id = "list_errors", tag = "requests", params(ErrorsQuery),
    responses((status = 200, body = ErrorGroups)))]
pub(super) async fn errors(
    State(c): State<Arc<Control>>,
    AdminQuery(q): AdminQuery<ErrorsQuery>,
) -> Result<Json<ErrorGroups>, AdminError> {
    let since = q
        .since
        .unwrap_or_else(|| (crate::keys::unix_now() - 86_400) * 1000);
    Ok(Json(ErrorGroups {
        data: c.store.error_groups(since).await?,
    }))
}

/// The log filter, e.g. `info`, `debug` or `pylon::upstream=debug,info`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogLevelBody {
    /// Comma-separated `level` or `target=level` directives (levels: trace, debug, info, warn,
    /// error, off).
    #[schema(
        pattern = "^([A-Za-z0-9_:]+(=(trace|debug|info|warn|error|off))?)(,[A-Za-z0-9_:]+(=(trace|debug|info|warn|error|off))?)*$"
    )]
    pub level: String,
}

fn log_level(c: &Control) -> Result<&Arc<pylon_telemetry::LogLevel>, AdminError> {
    c.log_level.get().ok_or_else(|| {
        AdminError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "no_log_control",
            "this process has no run-time log control (embedded gateway)",
        )
    })
}

/// Whether `f` is comma-separated `target` or `target=level` directives: the part of the filter
/// syntax the API documents (span and field filters are for the config file).
fn directives(f: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let target = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    };
    f.split(',').all(|d| match d.split_once('=') {
        Some((t, level)) => target(t) && LEVELS.contains(&level),
        None => target(d),
    })
}

/// The log filter in force.
#[utoipa::path(get, path = "/admin/v1/log/level", operation_id = "get_log_level", tag = "operations",
    responses((status = 200, body = LogLevelBody), (status = 501, body = ErrorBody, description = "An embedded gateway without run-time log control.")))]
pub(super) async fn get_level(
    State(c): State<Arc<Control>>,
) -> Result<Json<LogLevelBody>, AdminError> {
    Ok(Json(LogLevelBody {
        level: log_level(&c)?.get(),
    }))
}

/// Changes the log filter at run time (until restart).
#[utoipa::path(put, path = "/admin/v1/log/level", operation_id = "set_log_level", tag = "operations",
    request_body = LogLevelBody,
    responses((status = 200, body = LogLevelBody), (status = 400, body = ErrorBody),
              (status = 501, body = ErrorBody, description = "An embedded gateway without run-time log control.")))]
pub(super) async fn set_level(
    State(c): State<Arc<Control>>,
    body: axum::body::Bytes,
) -> Result<Json<LogLevelBody>, AdminError> {
    let b: LogLevelBody = super::parse(&body)?;
    if !directives(&b.level) {
        return Err(AdminError::bad_request(format!(
            "`{}` is not a log filter: use `level` or `target=level`, comma-separated",
            b.level.chars().take(64).collect::<String>()
        )));
    }
    let level = log_level(&c)?;
    let metrics = c.gateway.metrics();
    match level.set(&b.level) {
        Ok(()) => {
            metrics
                .config_reloads
                .with_label_values(&["log_level", "ok"])
                .inc();
            tracing::info!(target: "pylon::control", level = %b.level, "log level changed");
            Ok(Json(LogLevelBody { level: level.get() }))
        }
        Err(e) => {
            metrics
                .config_reloads
                .with_label_values(&["log_level", "error"])
                .inc();
            Err(AdminError::bad_request(format!(
                "`{}` is not a log filter: {e}",
                b.level
            )))
        }
    }
}
