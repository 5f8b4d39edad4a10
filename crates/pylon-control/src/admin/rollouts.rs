//! `/admin/v1/rollouts`: every rollout's state, one with its live per-arm figures and verdict
//! history, and the operator's commands.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::Value;

use super::{actor, AdminError, ErrorBody};
use crate::rollouts::RolloutError;
use crate::Control;

impl From<RolloutError> for AdminError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Unknown(_) => {
                AdminError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            RolloutError::Refused { .. } => {
                AdminError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            RolloutError::Invalid(_) => AdminError::bad_request(e.to_string()),
            RolloutError::Conflict(_) => {
                AdminError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            RolloutError::Store(s) => s.into(),
        }
    }
}

/// Every configured rollout: subject, strategy, state, weight and step.
#[utoipa::path(get, path = "/admin/v1/rollouts", operation_id = "list_rollouts", tag = "rollouts",
    responses((status = 200, description = "the rollouts", body = Vec<Object>)))]
pub(super) async fn list(State(c): State<Arc<Control>>) -> Result<Json<Vec<Value>>, AdminError> {
    Ok(Json(c.rollouts.list().await?))
}

/// Makes a rollout: the body is a `[[rollouts]]` entry of pylon.toml as JSON, checked the same
/// way, kept in the store and applied by every instance within a second. It starts at once
/// unless `"start": false`. `x-pylon-actor` names who made it.
#[utoipa::path(post, path = "/admin/v1/rollouts", operation_id = "create_rollout", tag = "rollouts",
    request_body(content = Object, description = "a [[rollouts]] entry as JSON: name, model | route | flag, strategy, candidate, steps, stickiness, analysis, …"),
    responses((status = 201, description = "the rollout", body = Object),
              (status = 400, body = ErrorBody, description = "not a valid rollout (unknown subject, bad steps, …)"),
              (status = 409, body = ErrorBody, description = "a rollout of that name, or of that subject, exists")))]
pub(super) async fn create(
    State(c): State<Arc<Control>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let definition: Value = serde_json::from_slice(&body)
        .map_err(|e| AdminError::bad_request(format!("the body is not JSON: {e}")))?;
    if !definition.is_object() {
        return Err(AdminError::bad_request(
            "the body must be a rollout (an object like a [[rollouts]] entry)",
        ));
    }
    let made = c.rollouts.create(&definition, &actor(&headers)).await?;
    Ok((StatusCode::CREATED, Json(made)))
}

/// Forgets a rollout made through the API once it moves no traffic (pending, rolled back or
/// aborted), with its verdict history.
#[utoipa::path(delete, path = "/admin/v1/rollouts/{name}", operation_id = "delete_rollout", tag = "rollouts",
    params(("name" = String, Path, description = "The rollout's name")),
    responses((status = 204, description = "forgotten"),
              (status = 404, body = ErrorBody, description = "no such rollout"),
              (status = 409, body = ErrorBody, description = "declared in pylon.toml, or still moving traffic")))]
pub(super) async fn delete(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    c.rollouts.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One rollout: `name`, `state` (pending, progressing, paused, promoted, rolled_back,
/// aborted), `weight`, `step`, live per-arm figures (`arms`) and the latest verdicts with the
/// figures that produced them.
#[utoipa::path(get, path = "/admin/v1/rollouts/{name}", operation_id = "show_rollout", tag = "rollouts",
    params(("name" = String, Path, description = "The rollout's name")),
    responses((status = 200, description = "the rollout", body = Object),
               (status = 404, body = ErrorBody, description = "no such rollout")))]
pub(super) async fn show(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AdminError> {
    Ok(Json(c.rollouts.status(&name).await?))
}

/// Applies a command: `start`, `pause`, `resume`, `promote` (to 100 % now), `abort` (back to
/// stable, final) or `rollback` (back to stable; also within a blue-green rollback window).
#[utoipa::path(post, path = "/admin/v1/rollouts/{name}/{command}", operation_id = "command_rollout", tag = "rollouts",
    params(("name" = String, Path, description = "The rollout's name"),
           ("command" = String, Path, description = "start, pause, resume, promote, abort or rollback")),
    responses((status = 200, description = "the rollout after the command", body = Object),
              (status = 404, body = ErrorBody, description = "no such rollout or command"),
              (status = 409, body = ErrorBody, description = "the command does not apply in the rollout's state")))]
pub(super) async fn command(
    State(c): State<Arc<Control>>,
    Path((name, command)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    Ok(Json(c.rollouts.command(&name, &command).await?))
}
