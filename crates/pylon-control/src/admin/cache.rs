//! `DELETE /admin/v1/cache`: purge cached answers; `POST /admin/v1/cache/feedback`: report a
//! semantic hit wrong.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{parse, AdminError, AdminQuery, ErrorBody};
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

/// A semantic cache hit that answered the wrong question.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The `x-request-id` of the wrong response.
    #[schema(pattern = "^[!-~]{1,200}$")]
    pub request_id: String,
    /// Why it was wrong (kept in Pylon's log, not in the store).
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub note: Option<String>,
}

/// What the report did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedbackResult {
    pub request_id: String,
    /// The cache entry that answered; it is deleted (here and in Redis).
    pub entry: String,
    /// The cached question it matched (shortened), and how similar it was.
    pub matched: Option<String>,
    pub similarity: Option<f64>,
    /// Whether this instance still held the entry.
    pub evicted: bool,
    /// The (question, entry) pair is never served again.
    pub blocked: bool,
}

/// Marks a semantic hit wrong: deletes the entry that answered and blocks that answer for that
/// question, found through the request log (the hit must have been logged).
#[utoipa::path(post, path = "/admin/v1/cache/feedback", operation_id = "cache_feedback", tag = "cache",
    request_body = Feedback,
    responses((status = 200, body = FeedbackResult),
              (status = 404, body = ErrorBody, description = "No semantic hit with this request id is in the request log (yet: rows are written within `request_log.flush`)."),
              (status = 409, body = ErrorBody, description = "caching is off")))]
pub(super) async fn feedback(
    State(c): State<Arc<Control>>,
    body: Bytes,
) -> Result<Json<FeedbackResult>, AdminError> {
    let f: Feedback = parse(&body)?;
    if f.request_id.is_empty()
        || f.request_id.len() > 200
        || !f.request_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(AdminError::bad_request(
            "`request_id` must be 1 to 200 printable ASCII characters",
        ));
    }
    if f.note.as_ref().is_some_and(|n| n.chars().count() > 1000) {
        return Err(AdminError::bad_request(
            "`note` must be at most 1000 characters",
        ));
    }
    let found = c.store.semantic_hit(&f.request_id).await?;
    let Some((row, entry, question)) = found.and_then(|r| {
        let (e, q) = (r.cache_entry.clone()?, r.cache_question.clone()?);
        Some((r, e, q))
    }) else {
        return Err(AdminError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no semantic cache hit `{}` in the request log: check the id (the response's x-request-id) and retry after the log's next flush",
                f.request_id
            ),
        ));
    };
    let Some(evicted) = c.gateway.report_wrong_hit(&question, &entry).await else {
        return Err(AdminError::new(
            axum::http::StatusCode::CONFLICT,
            "cache_disabled",
            "the response cache is off ([cache] enabled = false)",
        ));
    };
    tracing::warn!(target: "pylon::control", request_id = %f.request_id, entry = %entry, note = f.note.as_deref(), "semantic cache hit reported wrong: entry evicted, pair blocked");
    Ok(Json(FeedbackResult {
        request_id: f.request_id,
        entry,
        matched: row.cache_matched,
        similarity: row.cache_similarity,
        evicted,
        blocked: true,
    }))
}
