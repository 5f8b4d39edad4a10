//! The Responses API's conversations: a request continuing a stored response (phase, after
//! ingress), an answer kept when it is done, and `GET`/`DELETE /v1/responses/{id}`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::HeaderMap;
use pylon_providers::responses;
use pylon_types::{Dialect, Principal};
use serde_json::{json, Value};

use crate::context::Call;
use crate::gateway::Gateway;
use crate::stored::{ResponseStore, Stored};
use crate::{ingress, ProxyError};

/// Whose stored responses a caller may see: its key's (everyone's `-` with auth off).
fn owner_of(principal: Option<&Principal>) -> String {
    principal.map_or_else(|| "-".to_owned(), |p| p.key_id.clone())
}

/// Prepends the conversation of `previous_response_id` when Pylon holds it. One it does not
/// hold is left for an OpenAI provider (it may know its own ids); any other provider refuses it.
pub(crate) async fn resolve(
    gw: &Gateway,
    principal: Option<&Principal>,
    call: &mut Call,
) -> Result<(), ProxyError> {
    let Some(r) = call.responses.as_mut() else {
        return Ok(());
    };
    r.owner = owner_of(principal);
    let Some(prev) = r
        .request
        .get("previous_response_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Ok(());
    };
    match gw.responses.get(&prev, &r.owner).await {
        Ok(stored) => {
            let mut items = responses::conversation(&stored.input, &stored.response);
            items.append(&mut r.items);
            r.items = items;
            r.expanded = true;
        }
        Err(ProxyError::NoResponse(_)) => r.unknown_previous = Some(prev),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Where a finished answer goes, taken from the call before it is answered.
pub(crate) struct Keep {
    store: Arc<ResponseStore>,
    owner: String,
    input: Vec<Value>,
}

impl Keep {
    /// The keeper for a Responses call that asked to be stored.
    pub fn of(call: &Call) -> Option<Keep> {
        let r = call.responses.as_ref().filter(|r| r.store)?;
        // A rollout's shadow copy is never kept: the client never saw it.
        let gw = &call.record.as_ref().filter(|rec| !rec.shadow)?.gw;
        Some(Keep {
            store: gw.responses.clone(),
            owner: r.owner.clone(),
            input: r.items.clone(),
        })
    }

    /// Keeps `response` under its own id (the provider's, or the one Pylon gave it).
    pub fn put(self, response: Value) {
        let Some(id) = response
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return;
        };
        self.store.put(
            id,
            Stored {
                owner: self.owner,
                input: self.input,
                response,
                size: 0,
            },
        );
    }
}

/// The caller's owner name, or the error to answer with.
fn caller(gw: &Gateway, headers: &HeaderMap) -> Result<String, ProxyError> {
    let principal = ingress::authorize(gw, headers)?;
    if let Some(p) = principal.as_deref().filter(|p| !p.has_scope("ai")) {
        return Err(ProxyError::Forbidden(format!(
            "key `{}` may not read responses (its scopes do not include `ai`)",
            p.key_name
        )));
    }
    Ok(owner_of(principal.as_deref()))
}

/// `GET /v1/responses/{id}`.
pub(crate) async fn get(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let found = match caller(&gw, &headers) {
        Ok(owner) => gw.responses.get(&id, &owner).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(s) => Json(&s.response).into_response(),
        Err(e) => e.into_response(Dialect::OpenAi),
    }
}

/// `DELETE /v1/responses/{id}`.
pub(crate) async fn delete(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let done = match caller(&gw, &headers) {
        Ok(owner) => gw.responses.delete(&id, &owner).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => Json(json!({"id": id, "object": "response", "deleted": true})).into_response(),
        Err(e) => e.into_response(Dialect::OpenAi),
    }
}

/// `order` of `GET /v1/responses/{id}/input_items` (newest first unless `asc`).
#[derive(serde::Deserialize)]
pub(crate) struct Order {
    #[serde(default)]
    order: Option<String>,
}

/// `GET /v1/responses/{id}/input_items`: the conversation the response was given.
pub(crate) async fn input_items(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    Query(q): Query<Order>,
    headers: HeaderMap,
) -> Response {
    let found = match caller(&gw, &headers) {
        Ok(owner) => gw.responses.get(&id, &owner).await,
        Err(e) => Err(e),
    };
    let s = match found {
        Ok(s) => s,
        Err(e) => return e.into_response(Dialect::OpenAi),
    };
    let mut data = s.input.clone();
    if q.order.as_deref() != Some("asc") {
        data.reverse();
    }
    let id_of = |v: Option<&Value>| v.and_then(|i| i.get("id")).cloned();
    Json(json!({"object": "list", "first_id": id_of(data.first()),
        "last_id": id_of(data.last()), "has_more": false, "data": data}))
    .into_response()
}
