//! `DELETE /admin/v1/cache`: purge cached answers.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AdminError, AdminQuery, ErrorBody};
use crate::Control;

/// Which cached answers to delete; every given filter must match (none: everything).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PurgeQuery {
    /// `g` (global), `t:<team id>` or `k:<key id>`.
    namespace: Option<String>,
    /// A configured model name.
    model: Option<String>,
    /// Answers stored for this virtual key id.
    key: Option<String>,
}

/// How many answers were deleted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
}

/// Deletes cached answers by namespace, model or key, in this instance and in Redis.
#[utoipa::path(delete, path = "/admin/v1/cache", operation_id = "purge_cache", tag = "cache", params(PurgeQuery),
    responses((status = 200, body = Purged), (status = 409, body = ErrorBody, description = "caching is off")))]
pub(super) async fn purge(
    State(c): State<Arc<Control>>,
    AdminQuery(q): AdminQuery<PurgeQuery>,
) -> Result<Json<Purged>, AdminError> {
    match c
        .gateway
        .purge_cache(q.namespace.as_deref(), q.model.as_deref(), q.key.as_deref())
        .await
    {
        Some(purged) => Ok(Json(Purged { purged })),
        None => Err(AdminError::new(
            axum::http::StatusCode::CONFLICT,
            "cache_disabled",
            "the response cache is off ([cache] enabled = false)",
        )),
    }
}
