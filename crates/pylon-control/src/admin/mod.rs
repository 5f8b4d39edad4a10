//! The admin API: `/admin/v1/…` behind the admin token, `/openapi.json` and `/docs`.

mod cache;
mod keys;
mod providers;
mod requests;
mod teams;
mod types;
mod usage;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pylon_store::StoreError;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::Control;
pub use types::*;

/// The admin routes, the OpenAPI document and the Swagger UI (served from the binary, offline).
pub fn router(control: Arc<Control>) -> Router {
    let api = Router::new()
        .route("/admin/v1/keys", post(keys::create).get(keys::list))
        .route("/admin/v1/keys/{id}", get(keys::show).delete(keys::revoke))
        .route("/admin/v1/keys/{id}/rotate", post(keys::rotate))
        .route(
            "/admin/v1/teams",
            post(teams::create_team).get(teams::list_teams),
        )
        .route("/admin/v1/teams/{id}", get(teams::show_team))
        .route(
            "/admin/v1/users",
            post(teams::create_user).get(teams::list_users),
        )
        .route("/admin/v1/usage", get(usage::usage))
        .route("/admin/v1/requests", get(requests::list))
        .route("/admin/v1/cache", axum::routing::delete(cache::purge))
        .route("/admin/v1/errors", get(requests::errors))
        .route(
            "/admin/v1/log/level",
            get(requests::get_level).put(requests::set_level),
        )
        .route("/admin/v1/usage/estimate", get(usage::estimate))
        .route("/admin/v1/providers", get(providers::list))
        .route(
            "/admin/v1/providers/{name}/credential",
            axum::routing::put(providers::set_credential),
        )
        .route(
            "/admin/v1/secrets/rotate-master",
            post(providers::rotate_master),
        )
        .layer(middleware::from_fn_with_state(
            control.clone(),
            require_admin,
        ))
        .with_state(control);
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", openapi()))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Pylon admin API", description = "Keys, teams, users and usage of a Pylon gateway."),
    paths(keys::create, keys::list, keys::show, keys::revoke, keys::rotate,
          teams::create_team, teams::list_teams, teams::show_team, teams::create_user, teams::list_users,
          usage::usage, usage::estimate, requests::list, requests::errors, cache::purge, requests::get_level, requests::set_level, providers::list, providers::set_credential, providers::rotate_master),
    modifiers(&AdminToken),
    security(("admin_token" = [])),
    tags((name = "keys", description = "Virtual keys"), (name = "teams", description = "Teams and users"),
         (name = "usage", description = "Spend and token usage"),
         (name = "requests", description = "The request log and error groups"),
         (name = "operations", description = "Run-time operations"),
         (name = "cache", description = "The response cache"),
         (name = "providers", description = "Provider credentials, encrypted at rest"))
)]
struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document of the admin API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Lets a request through only with `Authorization: Bearer <admin token>`, compared in
/// constant time (of the token's hash, so its length does not leak either).
async fn require_admin(State(c): State<Arc<Control>>, req: Request, next: Next) -> Response {
    let Some(expected) = c.admin_token else {
        return AdminError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            "the admin API is disabled: set PYLON_ADMIN_TOKEN or [admin] token_file",
        )
        .into_response();
    };
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| pylon_proxy::hash_key(t.trim()));
    match presented {
        Some(hash) if bool::from(hash.ct_eq(&expected)) => next.run(req).await,
        Some(_) => AdminError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "the admin token is wrong",
        )
        .into_response(),
        None => AdminError::new(
            StatusCode::UNAUTHORIZED,
            "missing_admin_token",
            "send the admin token as `Authorization: Bearer …`",
        )
        .into_response(),
    }
}

/// An admin API error: status and an OpenAI-style JSON body.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AdminError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(crate) fn from_secrets(e: crate::secrets::SecretsError) -> Self {
        use crate::secrets::SecretsError;
        match e {
            SecretsError::NoMasterKey | SecretsError::BadMasterKey(_) => {
                AdminError::new(StatusCode::BAD_REQUEST, "no_master_key", e.to_string())
            }
            other => AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "secrets_error",
                other.to_string(),
            ),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => {
                AdminError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::NotFound(_) => {
                AdminError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            other => {
                tracing::error!(target: "pylon::control", error = %other, "store failure in the admin API");
                AdminError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store is unavailable; retry shortly",
                )
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                r#type: "admin_error".into(),
                code: self.code.into(),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Parses a JSON body strictly (unknown fields are errors), with a clear 400.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::bad_request(format!("invalid body: {e}")))
}
