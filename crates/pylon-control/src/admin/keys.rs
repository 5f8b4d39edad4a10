//! `/admin/v1/keys`: create (the key is shown once), list, show, revoke, rotate.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use pylon_store::ApiKey;

use super::{
    parse, AdminError, AdminPath, BudgetBody, CreatedKey, ErrorBody, KeyView, LimitsBody, NewKey,
    Rotate,
};
use crate::keys::{generate, unix_now};
use crate::Control;

/// A whole number (up to six digits) and one unit of `s`, `m`, `h`, `d` or `w`.
fn duration(what: &str, text: &str) -> Result<Duration, AdminError> {
    let bad = || AdminError::bad_request(format!("`{what}` is not a duration like `30d` or `1h`"));
    let unit = text.chars().last().ok_or_else(bad)?;
    let n = &text[..text.len() - unit.len_utf8()];
    if n.is_empty() || n.len() > 6 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n * secs))
}

fn new_key_material() -> Result<(String, String, String), AdminError> {
    generate().map_err(|e| {
        AdminError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rng_failed",
            format!("no randomness for a key: {e}"),
        )
    })
}

/// Applies a change to the data plane now rather than at the next periodic refresh.
async fn refresh(c: &Control) {
    if let Err(e) = c.refresh_keys().await {
        tracing::warn!(target: "pylon::control", error = %e, "key change stored, but refreshing the key index failed");
    }
}

/// Creates a key and returns it, once, in the field `key`.
#[utoipa::path(post, path = "/admin/v1/keys", operation_id = "create_key", tag = "keys", request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn create(
    State(c): State<Arc<Control>>,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), AdminError> {
    let req: NewKey = parse(&body)?;
    if req.name.trim_matches([' ', '\t', '\r', '\n']).is_empty() {
        return Err(AdminError::bad_request("`name` must not be blank"));
    }
    req.limits.as_ref().map(LimitsBody::check).transpose()?;
    req.budget.as_ref().map(BudgetBody::check).transpose()?;
    if let Some(models) = &req.allowed_models {
        let known = c.gateway.model_names();
        if let Some(bad) = models
            .iter()
            .find(|m| !known.contains(m) && !m.contains('/'))
        {
            return Err(AdminError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("`allowed_models` names `{bad}`, which is not a configured model"),
            ));
        }
    }
    if let Some(team) = &req.team_id {
        c.store.team(team).await?;
    }
    let now = unix_now();
    let expires_at = match &req.expires_in {
        Some(d) => Some(now + duration("expires_in", d)?.as_secs() as i64),
        None => None,
    };
    let (key, hash, prefix) = new_key_material()?;
    let row = ApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        hash,
        prefix,
        name: req.name,
        team_id: req.team_id,
        user_id: req.user_id,
        allowed_models: req.allowed_models,
        scopes: req
            .scopes
            .map(|s| s.iter().map(|x| x.as_str().to_owned()).collect()),
        limits: req.limits.unwrap_or_default().into(),
        budget: req.budget.map(Into::into),
        metadata: req.metadata.unwrap_or_else(|| serde_json::json!({})),
        expires_at,
        revoked_at: None,
        replaced_by: None,
        created_at: now,
    };
    c.store.insert_key(&row).await?;
    refresh(&c).await;
    tracing::info!(target: "pylon::control", key_id = %row.id, name = %row.name, "key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key,
            info: KeyView::of(row, now),
        }),
    ))
}

/// Lists every key (without the keys themselves).
#[utoipa::path(get, path = "/admin/v1/keys", operation_id = "list_keys", tag = "keys", responses((status = 200, body = [KeyView])))]
pub(super) async fn list(State(c): State<Arc<Control>>) -> Result<Json<Vec<KeyView>>, AdminError> {
    let now = unix_now();
    Ok(Json(
        c.store
            .list_keys()
            .await?
            .into_iter()
            .map(|k| KeyView::of(k, now))
            .collect(),
    ))
}

/// Shows one key.
#[utoipa::path(get, path = "/admin/v1/keys/{id}", operation_id = "show_key", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)))]
pub(super) async fn show(
    State(c): State<Arc<Control>>,
    AdminPath(id): AdminPath<String>,
) -> Result<Json<KeyView>, AdminError> {
    Ok(Json(KeyView::of(c.store.key(&id).await?, unix_now())))
}

/// Revokes a key at once.
#[utoipa::path(delete, path = "/admin/v1/keys/{id}", operation_id = "revoke_key", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke(
    State(c): State<Arc<Control>>,
    AdminPath(id): AdminPath<String>,
) -> Result<Json<KeyView>, AdminError> {
    let now = unix_now();
    c.store.revoke_key(&id, now).await?;
    refresh(&c).await;
    tracing::info!(target: "pylon::control", key_id = %id, "key revoked");
    Ok(Json(KeyView::of(c.store.key(&id).await?, now)))
}

/// Issues a new key with the same settings; the old one stays valid for the grace period.
#[utoipa::path(post, path = "/admin/v1/keys/{id}/rotate", operation_id = "rotate_key", tag = "keys", params(("id" = String, Path)),
    request_body(content = Option<Rotate>, description = "Optional; without it the old key stays valid for 24 hours."),
    responses((status = 201, body = CreatedKey), (status = 404, body = ErrorBody)))]
pub(super) async fn rotate(
    State(c): State<Arc<Control>>,
    AdminPath(id): AdminPath<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), AdminError> {
    let req: Rotate = if body.is_empty() || body.trim_ascii() == b"null" {
        Rotate::default()
    } else {
        parse(&body)?
    };
    let grace = duration("grace", req.grace.as_deref().unwrap_or("24h"))?;
    let old = c.store.key(&id).await?;
    let now = unix_now();
    let (key, hash, prefix) = new_key_material()?;
    let new = ApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        hash,
        prefix,
        created_at: now,
        revoked_at: None,
        replaced_by: None,
        ..old
    };
    c.store
        .rotate_key(&id, &new, now + grace.as_secs() as i64)
        .await?;
    refresh(&c).await;
    tracing::info!(target: "pylon::control", old_key_id = %id, key_id = %new.id, grace = ?grace, "key rotated");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key,
            info: KeyView::of(new, now),
        }),
    ))
}
