//! `/admin/v1/flags`: feature flags in flagd's format — list, create or replace, disable,
//! enable, delete, and each flag's audit trail. The `x-pylon-actor` header names who acted
//! (default `admin`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::Value;

use super::{actor, AdminError, ErrorBody};
use crate::flags::FlagError;
use crate::Control;

impl From<FlagError> for AdminError {
    fn from(e: FlagError) -> Self {
        match e {
            FlagError::Invalid(_) => AdminError::bad_request(e.to_string()),
            FlagError::Unknown(_) => {
                AdminError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            FlagError::FromFile(_) => {
                AdminError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            FlagError::Store(s) => s.into(),
        }
    }
}

/// Every flag in force: key, `source` (`file` or `store`) and definition.
#[utoipa::path(get, path = "/admin/v1/flags", operation_id = "list_flags", tag = "flags",
    responses((status = 200, description = "the flags", body = Vec<Object>)))]
pub(super) async fn list(State(c): State<Arc<Control>>) -> Result<Json<Vec<Value>>, AdminError> {
    Ok(Json(c.flags.list().await?))
}

/// Creates or replaces a flag; the body is a flagd flag definition (`state`, `variants`,
/// `defaultVariant`, `targeting`, `metadata`). Every instance serves it within `flags.poll`.
#[utoipa::path(put, path = "/admin/v1/flags/{key}", operation_id = "put_flag", tag = "flags",
    params(("key" = String, Path, description = "The flag's key")),
    request_body(content = Object, description = "a flagd flag definition"),
    responses((status = 200, description = "the flag as stored", body = Object),
              (status = 400, body = ErrorBody, description = "not a valid flag definition")))]
pub(super) async fn put(
    State(c): State<Arc<Control>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let definition: Value = serde_json::from_slice(&body)
        .map_err(|e| AdminError::bad_request(format!("the body is not JSON: {e}")))?;
    if !definition.is_object() {
        return Err(AdminError::bad_request(
            "the body must be a flagd flag definition (an object)",
        ));
    }
    Ok(Json(c.flags.put(&key, definition, &actor(&headers)).await?))
}

/// Deletes a flag made through the admin API (a file's flags are changed in the file).
#[utoipa::path(delete, path = "/admin/v1/flags/{key}", operation_id = "delete_flag", tag = "flags",
    params(("key" = String, Path, description = "The flag's key")),
    responses((status = 204, description = "deleted"),
              (status = 404, body = ErrorBody, description = "no such flag"),
              (status = 409, body = ErrorBody, description = "the flag comes from the flags file")))]
pub(super) async fn delete(
    State(c): State<Arc<Control>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, AdminError> {
    c.flags.delete(&key, &actor(&headers)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Disables a flag: clients get their code default until it is enabled again.
#[utoipa::path(post, path = "/admin/v1/flags/{key}/disable", operation_id = "disable_flag", tag = "flags",
    params(("key" = String, Path, description = "The flag's key")),
    responses((status = 200, description = "the flag", body = Object),
              (status = 404, body = ErrorBody, description = "no such flag")))]
pub(super) async fn disable(
    State(c): State<Arc<Control>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    Ok(Json(
        c.flags.set_state(&key, false, &actor(&headers)).await?,
    ))
}

/// Enables a disabled flag.
#[utoipa::path(post, path = "/admin/v1/flags/{key}/enable", operation_id = "enable_flag", tag = "flags",
    params(("key" = String, Path, description = "The flag's key")),
    responses((status = 200, description = "the flag", body = Object),
              (status = 404, body = ErrorBody, description = "no such flag")))]
pub(super) async fn enable(
    State(c): State<Arc<Control>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    Ok(Json(c.flags.set_state(&key, true, &actor(&headers)).await?))
}

/// Who changed a flag, when, how, and its definition after each change, newest first.
#[utoipa::path(get, path = "/admin/v1/flags/{key}/history", operation_id = "flag_history", tag = "flags",
    params(("key" = String, Path, description = "The flag's key")),
    responses((status = 200, description = "the changes", body = Vec<Object>)))]
pub(super) async fn history(
    State(c): State<Arc<Control>>,
    Path(key): Path<String>,
) -> Result<Json<Vec<Value>>, AdminError> {
    Ok(Json(c.flags.history(&key).await?))
}
