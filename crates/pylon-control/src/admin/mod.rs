//! The admin API: `/admin/v1/…` behind the admin token, `/openapi.json` and `/docs`.

mod alerts;
mod backups;
mod cache;
mod config;
mod flags;
mod keys;
mod providers;
mod requests;
mod rollouts;
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
        .route(
            "/admin/v1/cache/feedback",
            axum::routing::post(cache::feedback),
        )
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
        .route("/admin/v1/flags", get(flags::list))
        .route(
            "/admin/v1/flags/{key}",
            axum::routing::put(flags::put).delete(flags::delete),
        )
        .route("/admin/v1/flags/{key}/disable", post(flags::disable))
        .route("/admin/v1/flags/{key}/enable", post(flags::enable))
        .route("/admin/v1/flags/{key}/history", get(flags::history))
        .route("/admin/v1/alerts", get(alerts::list))
        .route("/admin/v1/alerts/history", get(alerts::history))
        .route("/admin/v1/alerts/backtest", post(alerts::backtest))
        .route("/admin/v1/alerts/rules", post(alerts::create_rule))
        .route(
            "/admin/v1/alerts/rules/{name}",
            axum::routing::delete(alerts::delete_rule),
        )
        .route(
            "/admin/v1/alerts/silences",
            get(alerts::silences).post(alerts::silence),
        )
        .route(
            "/admin/v1/alerts/silences/{id}",
            axum::routing::delete(alerts::unsilence),
        )
        .route("/admin/v1/alerts/{name}/ack", post(alerts::ack))
        .route(
            "/admin/v1/rollouts",
            get(rollouts::list).post(rollouts::create),
        )
        .route(
            "/admin/v1/rollouts/{name}",
            get(rollouts::show).delete(rollouts::delete),
        )
        .route(
            "/admin/v1/rollouts/{name}/{command}",
            post(rollouts::command),
        )
        .route(
            "/admin/v1/backups",
            post(backups::create).get(backups::list),
        )
        .route("/admin/v1/backups/{name}", get(backups::download))
        .route("/admin/v1/config", get(config::show))
        .route("/admin/v1/config/reload", post(config::reload))
        .route(
            "/admin/v1/secrets/rotate-master",
            post(providers::rotate_master),
        )
        .layer(middleware::from_fn_with_state(
            control.clone(),
            require_admin,
        ))
        .with_state(control.clone());
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", openapi()))
        .merge(crate::dashboard::router(control))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Pylon admin API", description = "Keys, teams, users and usage of a Pylon gateway."),
    paths(keys::create, keys::list, keys::show, keys::revoke, keys::rotate,
          teams::create_team, teams::list_teams, teams::show_team, teams::create_user, teams::list_users,
          usage::usage, usage::estimate, requests::list, requests::errors, cache::purge, cache::feedback, requests::get_level, requests::set_level, config::show, config::reload, backups::create, backups::list, backups::download, providers::list, providers::set_credential, providers::rotate_master,
          alerts::list, alerts::history, alerts::ack, alerts::backtest, alerts::create_rule, alerts::delete_rule, alerts::silences, alerts::silence, alerts::unsilence,
          rollouts::list, rollouts::create, rollouts::show, rollouts::delete, rollouts::command,
          flags::list, flags::put, flags::delete, flags::disable, flags::enable, flags::history),
    modifiers(&AdminToken, &CommonErrors),
    security(("admin_token" = [])),
    tags((name = "keys", description = "Virtual keys"), (name = "teams", description = "Teams and users"),
         (name = "usage", description = "Spend and token usage"),
         (name = "requests", description = "The request log and error groups"),
         (name = "operations", description = "Run-time operations"),
         (name = "cache", description = "The response cache"),
         (name = "providers", description = "Provider credentials, encrypted at rest"),
         (name = "rollouts", description = "Canary, blue-green and shadow rollouts"),
         (name = "alerts", description = "Alert rules, their history and acknowledgement"),
         (name = "flags", description = "Feature flags (flagd format), served over OFREP"))
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

/// The errors every operation can answer with, so the document lists every status the API
/// sends: 400 where there is input to reject, 401 without the admin token, 503 when the admin
/// API is disabled or the store is down.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let has_path_params = item.parameters.as_ref().is_some_and(|p| !p.is_empty());
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let takes_input = has_path_params
                    || op.request_body.is_some()
                    || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let responses = &mut op.responses.responses;
                if takes_input {
                    responses.entry("400".into()).or_insert_with(|| {
                        error("The request is malformed; the message says which part.").into()
                    });
                }
                responses.entry("401".into()).or_insert_with(|| {
                    error("The admin token is missing or wrong (`Authorization: Bearer …`).").into()
                });
                responses.entry("503".into()).or_insert_with(|| {
                    error("The admin API is disabled (no admin token configured) or the store is unavailable; retry shortly.").into()
                });
            }
        }
    }
}

/// `Query` whose rejection is an admin API error in JSON, not axum's plain text.
pub(crate) struct AdminQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for AdminQuery<T> {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, AdminError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| AdminQuery(q))
            .map_err(|e| AdminError::bad_request(e.body_text()))
    }
}

/// `Path` whose rejection is an admin API error in JSON.
pub(crate) struct AdminPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for AdminPath<T>
{
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, AdminError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| AdminPath(p))
            .map_err(|e| AdminError::bad_request(e.body_text()))
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
    // The dashboard's session: reads as is; a change only with the session's CSRF token.
    if presented.is_none() {
        if let crate::dashboard::Access::Session { csrf_ok } = c.sessions.access(req.headers()) {
            let reads = matches!(
                *req.method(),
                axum::http::Method::GET | axum::http::Method::HEAD
            );
            return if reads || csrf_ok {
                next.run(req).await
            } else {
                AdminError::new(
                    StatusCode::FORBIDDEN,
                    "csrf_token_missing",
                    "a change from the dashboard needs its CSRF token in x-pylon-csrf",
                )
                .into_response()
            };
        }
    }
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

/// Who acted, from the `x-pylon-actor` header (default `admin`), kept in audit trails.
pub(crate) fn actor(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-pylon-actor")
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect::<String>()
        })
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "admin".to_owned())
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
            // The request is fine; the server is not set up for it.
            SecretsError::NoMasterKey | SecretsError::BadMasterKey(_) => {
                AdminError::new(StatusCode::CONFLICT, "no_master_key", e.to_string())
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

/// Parses a JSON object body strictly (unknown fields are errors), with a clear 400.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    // serde would also read a struct from an array of its fields in order.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(AdminError::bad_request("invalid body: send a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| AdminError::bad_request(format!("invalid body: {e}")))
}
