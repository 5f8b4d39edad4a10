//! `/admin/v1/alerts`: every rule's alert, the history of transitions and deliveries, and
//! acknowledgement.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{actor, AdminError, AdminQuery, ErrorBody};
use crate::alerts::AlertError;
use crate::Control;

impl From<AlertError> for AdminError {
    fn from(e: AlertError) -> Self {
        match e {
            AlertError::Unknown(_) => {
                AdminError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            AlertError::NotFiring(_) => {
                AdminError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            AlertError::Invalid(_) => AdminError::bad_request(e.to_string()),
            AlertError::Conflict(_) => {
                AdminError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            AlertError::Store(s) => s.into(),
        }
    }
}

/// Every rule's alert: `state` (inactive, pending, firing, resolved), labels, annotations,
/// `acked`, timestamps (ms since the epoch) and the receivers it routes to.
#[utoipa::path(get, path = "/admin/v1/alerts", operation_id = "list_alerts", tag = "alerts",
    responses((status = 200, description = "the alerts", body = Vec<Object>)))]
pub(super) async fn list(State(c): State<Arc<Control>>) -> Result<Json<Vec<Value>>, AdminError> {
    Ok(Json(c.alerts.list().await?))
}

/// History filters.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryQuery {
    /// One alert's history only.
    alert: Option<String>,
    /// At most this many events (default 100, at most 1,000).
    limit: Option<i64>,
    /// `json` (default), or an export: `jsonl` (one event per line) or `csv`.
    #[param(pattern = "^(json|jsonl|csv)$")]
    format: Option<String>,
}

/// What happened, newest first: transitions (pending, firing, resolved, inactive), deliveries
/// (notified, delivery_failed), acknowledgements and the rollout actions alerts took.
#[utoipa::path(get, path = "/admin/v1/alerts/history", operation_id = "alert_history", tag = "alerts",
    params(HistoryQuery),
    responses((status = 200, description = "events, newest first; `format=jsonl` or `csv` for an export",
               content((Vec<Object> = "application/json"), (String = "application/x-ndjson"), (String = "text/csv"))),
              (status = 400, body = ErrorBody)))]
pub(super) async fn history(
    State(c): State<Arc<Control>>,
    AdminQuery(q): AdminQuery<HistoryQuery>,
) -> Result<axum::response::Response, AdminError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let events = c.alerts.history(q.alert.as_deref(), limit).await?;
    let (kind, body) = match q.format.as_deref().unwrap_or("json") {
        "json" => return Ok(Json(events).into_response()),
        "jsonl" => (
            "application/x-ndjson",
            events.iter().map(|e| format!("{e}\n")).collect::<String>(),
        ),
        "csv" => {
            let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            let mut out = String::from("at,alert,kind,detail\n");
            for e in &events {
                out.push_str(&format!(
                    "{},{},{},{}\n",
                    e["at"],
                    quote(e["alert"].as_str().unwrap_or_default()),
                    quote(e["kind"].as_str().unwrap_or_default()),
                    quote(&e["detail"].to_string())
                ));
            }
            ("text/csv; charset=utf-8", out)
        }
        other => {
            return Err(AdminError::bad_request(format!(
                "`format={other}`: use json, jsonl or csv"
            )))
        }
    };
    Ok(([(axum::http::header::CONTENT_TYPE, kind)], body).into_response())
}

/// Acknowledges a firing alert: it is not re-notified for `for` (default `1h`, e.g.
/// `{"for": "30m"}`); if it still fires then, it pages again. `x-pylon-actor` names who.
#[utoipa::path(post, path = "/admin/v1/alerts/{name}/ack", operation_id = "ack_alert", tag = "alerts",
    params(("name" = String, Path, description = "The alert's name: its rule's, or for a rule with `by` `<rule>:<label>=<value>`")),
    request_body(content = Object, description = "optional: {\"for\": \"30m\"}"),
    responses((status = 200, description = "the alert", body = Object),
              (status = 400, body = ErrorBody, description = "a bad duration"),
              (status = 404, body = ErrorBody, description = "no such rule"),
              (status = 409, body = ErrorBody, description = "the alert is not firing")))]
pub(super) async fn ack(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let lasting = if body.is_empty() {
        None
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| AdminError::bad_request(format!("the body is not JSON: {e}")))?;
        match v.get("for") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                humantime::parse_duration(s)
                    .map_err(|e| AdminError::bad_request(format!("`for`: {e}; e.g. \"30m\"")))?,
            ),
            Some(_) => return Err(AdminError::bad_request("`for` is a duration like \"30m\"")),
        }
    };
    Ok(Json(c.alerts.ack(&name, &actor(&headers), lasting).await?))
}

/// A new silence.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct NewSilence {
    /// Label equality matchers (`alertname`, `severity`, `model`, …); at least one.
    matchers: BTreeMap<String, String>,
    /// How long, e.g. `"2h"`.
    #[serde(rename = "for")]
    lasting: String,
    /// When it starts, ms since the epoch (default: now).
    starts_at: Option<u64>,
    #[serde(default)]
    comment: String,
}

/// Silences in force or to come.
#[utoipa::path(get, path = "/admin/v1/alerts/silences", operation_id = "list_silences", tag = "alerts",
    responses((status = 200, description = "the silences", body = Vec<Object>)))]
pub(super) async fn silences(
    State(c): State<Arc<Control>>,
) -> Result<Json<Vec<Value>>, AdminError> {
    Ok(Json(c.alerts.silences().await?))
}

/// Silences alerts whose labels match every matcher: they are not notified (nor escalated)
/// while it lasts. `x-pylon-actor` names the author.
#[utoipa::path(post, path = "/admin/v1/alerts/silences", operation_id = "create_silence", tag = "alerts",
    request_body = NewSilence,
    responses((status = 201, description = "the silence", body = Object),
              (status = 400, body = ErrorBody, description = "no matchers, or a bad duration")))]
pub(super) async fn silence(
    State(c): State<Arc<Control>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let s: NewSilence = serde_json::from_slice(&body)
        .map_err(|e| AdminError::bad_request(format!("not a silence: {e}")))?;
    if s.matchers.is_empty() {
        return Err(AdminError::bad_request(
            "a silence needs at least one matcher, e.g. {\"alertname\": \"chat-errors\"}",
        ));
    }
    let lasting = humantime::parse_duration(&s.lasting)
        .map_err(|e| AdminError::bad_request(format!("`for`: {e}; e.g. \"2h\"")))?;
    let made = c
        .alerts
        .silence(
            s.matchers,
            s.starts_at,
            lasting,
            &actor(&headers),
            &s.comment,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(made)))
}

/// Ends a silence now.
#[utoipa::path(delete, path = "/admin/v1/alerts/silences/{id}", operation_id = "expire_silence", tag = "alerts",
    params(("id" = String, Path, description = "The silence's id")),
    responses((status = 204, description = "ended"),
              (status = 404, body = ErrorBody, description = "no such silence in force")))]
pub(super) async fn unsilence(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    c.alerts.unsilence(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replays a rule over a series, with the live evaluator's code: `{"rule": {…[[alerts]]
/// entry…}, "points": [[t, value, traffic?], …]}` (t in unix seconds or ms), or, without
/// `points`, over the store's hourly history between `from` and `to` (unix seconds; default the
/// last four weeks). Answers the stretches that would have fired and every point judged.
#[utoipa::path(post, path = "/admin/v1/alerts/backtest", operation_id = "backtest_alert", tag = "alerts",
    request_body(content = Object, description = "{\"rule\": {…}, \"points\": [[t, v], …]} or {\"rule\": {…}, \"from\": …, \"to\": …}"),
    responses((status = 200, description = "firings and judged points", body = Object),
              (status = 400, body = ErrorBody, description = "not a valid rule or series")))]
pub(super) async fn backtest(
    State(c): State<Arc<Control>>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| AdminError::bad_request(format!("the body is not JSON: {e}")))?;
    Ok(Json(c.alerts.backtest(&v).await?))
}

/// Makes an alert rule: the body is an `[[alerts]]` entry of pylon.toml as JSON, checked the
/// same way, kept in the store and evaluated from the next round. `x-pylon-actor` names who.
#[utoipa::path(post, path = "/admin/v1/alerts/rules", operation_id = "create_alert_rule", tag = "alerts",
    request_body(content = Object, description = "an [[alerts]] entry as JSON"),
    responses((status = 201, description = "the rule's alert", body = Object),
              (status = 400, body = ErrorBody, description = "not a valid rule"),
              (status = 409, body = ErrorBody, description = "a rule of that name exists")))]
pub(super) async fn create_rule(
    State(c): State<Arc<Control>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| AdminError::bad_request(format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(AdminError::bad_request(
            "the body must be an alert rule (an object like an [[alerts]] entry)",
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(c.alerts.create(&v, &actor(&headers)).await?),
    ))
}

/// Forgets an alert rule made through the admin API (its history stays).
#[utoipa::path(delete, path = "/admin/v1/alerts/rules/{name}", operation_id = "delete_alert_rule", tag = "alerts",
    params(("name" = String, Path, description = "The rule's name")),
    responses((status = 204, description = "forgotten"),
              (status = 404, body = ErrorBody, description = "no such rule"),
              (status = 409, body = ErrorBody, description = "declared in pylon.toml")))]
pub(super) async fn delete_rule(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    c.alerts.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
