//! `/admin/v1/teams` and `/admin/v1/users`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use pylon_store::{Team, User};

use super::{
    parse, AdminError, AdminPath, BudgetBody, ErrorBody, LimitsBody, NewTeam, NewUser, TeamView,
    UserView,
};
use crate::keys::unix_now;
use crate::Control;

/// Creates a team.
#[utoipa::path(post, path = "/admin/v1/teams", operation_id = "create_team", tag = "teams", request_body = NewTeam,
    responses((status = 201, body = TeamView), (status = 409, body = ErrorBody)))]
pub(super) async fn create_team(
    State(c): State<Arc<Control>>,
    body: Bytes,
) -> Result<(StatusCode, Json<TeamView>), AdminError> {
    let req: NewTeam = parse(&body)?;
    if req.name.trim_matches([' ', '\t', '\r', '\n']).is_empty() {
        return Err(AdminError::bad_request("`name` must not be blank"));
    }
    req.limits.as_ref().map(LimitsBody::check).transpose()?;
    req.budget.as_ref().map(BudgetBody::check).transpose()?;
    let team = Team {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        limits: req.limits.unwrap_or_default().into(),
        budget: req.budget.map(Into::into),
        metadata: req.metadata.unwrap_or_else(|| serde_json::json!({})),
        created_at: unix_now(),
    };
    c.store.create_team(&team).await?;
    Ok((StatusCode::CREATED, Json(team.into())))
}

/// Lists teams.
#[utoipa::path(get, path = "/admin/v1/teams", operation_id = "list_teams", tag = "teams", responses((status = 200, body = [TeamView])))]
pub(super) async fn list_teams(
    State(c): State<Arc<Control>>,
) -> Result<Json<Vec<TeamView>>, AdminError> {
    Ok(Json(
        c.store
            .list_teams()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Shows a team.
#[utoipa::path(get, path = "/admin/v1/teams/{id}", operation_id = "show_team", tag = "teams", params(("id" = String, Path)),
    responses((status = 200, body = TeamView), (status = 404, body = ErrorBody)))]
pub(super) async fn show_team(
    State(c): State<Arc<Control>>,
    AdminPath(id): AdminPath<String>,
) -> Result<Json<TeamView>, AdminError> {
    Ok(Json(c.store.team(&id).await?.into()))
}

/// Creates a user.
#[utoipa::path(post, path = "/admin/v1/users", operation_id = "create_user", tag = "teams", request_body = NewUser,
    responses((status = 201, body = UserView), (status = 404, body = ErrorBody, description = "`team_id` names no team."), (status = 409, body = ErrorBody)))]
pub(super) async fn create_user(
    State(c): State<Arc<Control>>,
    body: Bytes,
) -> Result<(StatusCode, Json<UserView>), AdminError> {
    let req: NewUser = parse(&body)?;
    if !req.email.contains('@') {
        return Err(AdminError::bad_request("`email` must be an email address"));
    }
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        email: req.email,
        team_id: req.team_id,
        created_at: unix_now(),
    };
    c.store.create_user(&user).await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// Lists users.
#[utoipa::path(get, path = "/admin/v1/users", operation_id = "list_users", tag = "teams", responses((status = 200, body = [UserView])))]
pub(super) async fn list_users(
    State(c): State<Arc<Control>>,
) -> Result<Json<Vec<UserView>>, AdminError> {
    Ok(Json(
        c.store
            .list_users()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}
