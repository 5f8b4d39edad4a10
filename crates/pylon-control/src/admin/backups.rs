//! `/admin/v1/backups`: take a backup now, list them, download one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{AdminError, AdminPath, ErrorBody};
use crate::backups::{BackupFile, Taken};
use crate::Control;

/// Takes a consistent backup of the whole store now, into the backup dir (oldest beyond
/// `[backup] keep` are deleted).
#[utoipa::path(post, path = "/admin/v1/backups", operation_id = "create_backup", tag = "operations",
    responses((status = 201, body = Taken), (status = 500, body = ErrorBody, description = "The backup failed; nothing was kept.")))]
pub(super) async fn create(
    State(c): State<Arc<Control>>,
) -> Result<(StatusCode, Json<Taken>), AdminError> {
    c.backups
        .take()
        .await
        .map(|t| (StatusCode::CREATED, Json(t)))
        .map_err(|e| {
            AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backup_failed",
                e.to_string(),
            )
        })
}

/// The backups in the backup dir, newest first.
#[utoipa::path(get, path = "/admin/v1/backups", operation_id = "list_backups", tag = "operations",
    responses((status = 200, body = Vec<BackupFile>)))]
pub(super) async fn list(State(c): State<Arc<Control>>) -> Json<Vec<BackupFile>> {
    Json(c.backups.list())
}

/// Downloads one backup (`application/gzip`), to keep it off the machine.
#[utoipa::path(get, path = "/admin/v1/backups/{name}", operation_id = "download_backup", tag = "operations",
    params(("name" = String, Path, description = "A name from the list.")),
    responses((status = 200, description = "The archive.", content_type = "application/gzip"),
              (status = 404, body = ErrorBody)))]
pub(super) async fn download(
    State(c): State<Arc<Control>>,
    AdminPath(name): AdminPath<String>,
) -> Result<Response, AdminError> {
    let not_found = || {
        AdminError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no backup named `{}`: see GET /admin/v1/backups",
                name.chars().take(80).collect::<String>()
            ),
        )
    };
    let path = c.backups.path_of(&name).ok_or_else(not_found)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| not_found())?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    // Fused: a layer that polls once more after the end gets `None`, not a panic.
    let stream = futures_util::StreamExt::fuse(stream);
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
