//! The config in force and reloading it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{AdminError, ErrorBody};
use crate::config::{ConfigStatus, ReloadError, Reloaded};
use crate::Control;

/// The config in force: its hash, when and where from it was loaded, settings waiting for a
/// restart, the last refused reload, and the config itself with secrets redacted.
#[utoipa::path(get, path = "/admin/v1/config", operation_id = "get_config", tag = "operations",
    responses((status = 200, body = ConfigStatus)))]
pub(super) async fn show(State(c): State<Arc<Control>>) -> Json<ConfigStatus> {
    Json(c.config_status())
}

/// Reads the config file again and puts it in force (as SIGHUP does). A file with problems is
/// refused (422, with file:line:col for each) and the running config kept.
#[utoipa::path(post, path = "/admin/v1/config/reload", operation_id = "reload_config", tag = "operations",
    responses((status = 200, body = Reloaded),
              (status = 409, body = ErrorBody, description = "Started without a config file."),
              (status = 422, body = ErrorBody, description = "The file has problems; the running config is kept.")))]
pub(super) async fn reload(State(c): State<Arc<Control>>) -> Result<Json<Reloaded>, AdminError> {
    c.reload_config().await.map(Json).map_err(|e| {
        let (status, code) = match e {
            ReloadError::NoFile => (StatusCode::CONFLICT, "no_config_file"),
            ReloadError::Invalid(_) | ReloadError::Build(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config")
            }
        };
        AdminError::new(status, code, e.to_string())
    })
}
