//! `/admin/v1/alerts`: every rule's alert, the history of transitions and deliveries, and
//! acknowledgement.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{actor, AdminError, ErrorBody};
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
pub(super) struct HistoryQuery {
    /// One alert's history only.
    alert: Option<String>,
    /// At most this many events (default 100, at most 1,000).
    limit: Option<i64>,
}

/// What happened, newest first: transitions (pending, firing, resolved, inactive), deliveries
/// (notified, delivery_failed), acknowledgements and the rollout actions alerts took.
#[utoipa::path(get, path = "/admin/v1/alerts/history", operation_id = "alert_history", tag = "alerts",
    params(HistoryQuery),
    responses((status = 200, description = "events, newest first", body = Vec<Object>)))]
pub(super) async fn history(
    State(c): State<Arc<Control>>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Vec<Value>>, AdminError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(c.alerts.history(q.alert.as_deref(), limit).await?))
}

/// Acknowledges a firing alert: it is not re-notified for `for` (default `1h`, e.g.
/// `{"for": "30m"}`); if it still fires then, it pages again. `x-pylon-actor` names who.
#[utoipa::path(post, path = "/admin/v1/alerts/{name}/ack", operation_id = "ack_alert", tag = "alerts",
    params(("name" = String, Path, description = "The alert rule's name")),
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
