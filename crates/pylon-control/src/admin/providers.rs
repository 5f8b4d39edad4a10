//! `/admin/v1/providers`: provider credentials, stored encrypted; master-key rotation.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{parse, AdminError, AdminPath, ErrorBody};
use crate::keys::unix_now;
use crate::Control;

/// A provider and where its credential comes from (never the credential itself).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProviderView {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    /// `stored` (encrypted in the store, wins), `config`, or `none`.
    pub credential: String,
    /// The master key a stored credential is encrypted under.
    pub master_key_id: Option<String>,
    pub updated_at: Option<i64>,
}

/// A credential to store.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    /// Printable ASCII without spaces, as provider keys are.
    #[schema(pattern = "^[!-~]+$")]
    pub api_key: String,
}

/// The outcome of a master-key rotation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Rotated {
    /// Credentials re-encrypted by this call.
    pub reencrypted: usize,
    pub master_key_id: String,
}

async fn views(c: &Control) -> Result<Vec<ProviderView>, AdminError> {
    let stored = c.store.credentials().await?;
    Ok(c.gateway
        .providers()
        .into_iter()
        .map(|(name, kind, base_url, in_config)| {
            let s = stored.iter().find(|s| s.provider == name);
            ProviderView {
                credential: if s.is_some() {
                    "stored"
                } else if in_config {
                    "config"
                } else {
                    "none"
                }
                .into(),
                master_key_id: s.map(|s| s.master_key_id.clone()),
                updated_at: s.map(|s| s.updated_at),
                kind: format!("{kind:?}").to_lowercase(),
                name,
                base_url,
            }
        })
        .collect())
}

/// Lists providers and the source of each one's credential.
#[utoipa::path(get, path = "/admin/v1/providers", operation_id = "list_providers", tag = "providers", responses((status = 200, body = [ProviderView])))]
pub(super) async fn list(
    State(c): State<Arc<Control>>,
) -> Result<Json<Vec<ProviderView>>, AdminError> {
    Ok(Json(views(&c).await?))
}

/// Stores a provider's credential, encrypted under the current master key; used at once.
#[utoipa::path(put, path = "/admin/v1/providers/{name}/credential", operation_id = "set_provider_credential", tag = "providers", params(("name" = String, Path)),
    request_body = NewCredential,
    responses((status = 200, body = ProviderView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "No master key is configured (`PYLON_MASTER_KEY`)."),
              (status = 500, body = ErrorBody, description = "Encryption failed.")))]
pub(super) async fn set_credential(
    State(c): State<Arc<Control>>,
    AdminPath(name): AdminPath<String>,
    body: Bytes,
) -> Result<Json<ProviderView>, AdminError> {
    let req: NewCredential = parse(&body)?;
    if !c.gateway.providers().iter().any(|p| p.0 == name) {
        return Err(AdminError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("provider `{name}` is not configured"),
        ));
    }
    if req.api_key.is_empty() || !req.api_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AdminError::bad_request(
            "`api_key` must be printable ASCII without spaces",
        ));
    }
    let sealed = c
        .keyring
        .seal(&name, req.api_key.trim(), unix_now())
        .map_err(AdminError::from_secrets)?;
    c.store.put_credential(&sealed).await?;
    c.gateway.set_credential(&name, Some(req.api_key.trim()));
    tracing::info!(target: "pylon::control", provider = %name, master_key_id = %sealed.master_key_id, "provider credential stored");
    let view = views(&c).await?.into_iter().find(|v| v.name == name);
    view.map(Json)
        .ok_or_else(|| AdminError::bad_request("provider vanished"))
}

/// Re-encrypts every stored credential under the current master key (run after adding a new
/// `PYLON_MASTER_KEY` with the old one in `PYLON_MASTER_KEY_PREVIOUS`).
#[utoipa::path(post, path = "/admin/v1/secrets/rotate-master", operation_id = "rotate_master_key", tag = "providers",
    responses((status = 200, body = Rotated), (status = 409, body = ErrorBody, description = "No master key is configured (`PYLON_MASTER_KEY`)."),
              (status = 500, body = ErrorBody, description = "Re-encryption failed; nothing was changed.")))]
pub(super) async fn rotate_master(
    State(c): State<Arc<Control>>,
) -> Result<Json<Rotated>, AdminError> {
    let reencrypted = c.rotate_master().await?;
    let master_key_id = c.keyring.current_id().unwrap_or_default().to_owned();
    tracing::info!(target: "pylon::control", reencrypted, %master_key_id, "master key rotated");
    Ok(Json(Rotated {
        reencrypted,
        master_key_id,
    }))
}
