//! `/admin/v1/rollouts`: every rollout's state, one with its live per-arm figures and verdict
//! history, and the operator's commands.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::{AdminError, ErrorBody};
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
