//! The rollout phase: which arm serves this request. The arm is a pure function of the rollout
//! and the caller's stickiness key (`pylon_policy::bucket`), so a caller stays on one arm across
//! requests and instances with no shared state; a preview header or a tester key always gets
//! the candidate. The candidate may rewrite the request (a prompt version), and a shadow
//! rollout sends a copy of some requests to the candidate as well.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use pylon_config::SystemPrompt;
use pylon_policy::bucket::in_candidate;
use pylon_types::Principal;
use serde_json::{json, Value};

use crate::context::{Api, Call};
use crate::gateway::{Arm, ArmState, Gateway};
use crate::log::Record;
use crate::snapshot::{Model, ModelCandidate, RolloutSpec, Snapshot, Stickiness};
use crate::{ingress, ProxyError};

/// A copy of the request for a shadow candidate; its answer is discarded.
pub(crate) struct Shadow {
    pub call: Call,
    pub model: Arc<Model>,
    pub state: Arc<ArmState>,
}

/// The call as its arm serves it, the model to serve it with, and a shadow copy to send.
pub(crate) type Assigned = (Box<Call>, Arc<Model>, Option<Box<Shadow>>);

/// Who the request is, for stickiness.
pub(crate) struct Caller<'a> {
    pub principal: Option<&'a Principal>,
    pub parts: &'a Parts,
    pub ip: Option<IpAddr>,
    /// The end user the request body names, if any.
    pub user: Option<&'a str>,
}

impl Caller<'_> {
    /// The stickiness key: the configured identity, else the next best one that exists.
    fn key(&self, how: &Stickiness) -> String {
        let header = |name: &http::HeaderName| {
            self.parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let key = self.principal.map(|p| p.key_id.clone());
        let user = self
            .user
            .map(str::to_owned)
            .or_else(|| self.principal.and_then(|p| p.user_id.clone()));
        let ip = self.ip.map(|ip| ip.to_string());
        let chosen = match how {
            Stickiness::Key => key,
            Stickiness::User => user.or(key),
            Stickiness::Ip => ip.clone(),
            Stickiness::Header(h) => header(h),
        };
        chosen.or(ip).unwrap_or_default()
    }

    /// Whether this caller asked for (or is entitled to) the candidate whatever the weight.
    fn previews(&self, spec: &RolloutSpec) -> bool {
        self.parts.headers.contains_key(&spec.preview_header)
            || self
                .principal
                .is_some_and(|p| spec.preview_keys.contains(&p.key_name))
    }

    /// The arm this caller gets at `weight` percent.
    pub fn arm(&self, spec: &RolloutSpec, weight: f64) -> Arm {
        if self.previews(spec) || in_candidate(&spec.name, &self.key(&spec.stickiness), weight) {
            Arm::Candidate
        } else {
            Arm::Stable
        }
    }

    /// Whether this caller's request is copied to a shadow candidate at `share` percent.
    fn shadowed(&self, spec: &RolloutSpec, share: f64) -> bool {
        share > 0.0 && in_candidate(&spec.name, &self.key(&spec.stickiness), share)
    }
}

/// Assigns the call to an arm of its model's rollout, if the model has one: the model (and
/// possibly the body) to serve it with, and a shadow copy to send.
pub(crate) fn assign(
    gw: &Gateway,
    snap: &Snapshot,
    caller: &Caller<'_>,
    call: Box<Call>,
    model: Arc<Model>,
    record: &mut Record,
) -> Result<Assigned, ProxyError> {
    let Some(candidate) = snap.rollouts.get(&model.name) else {
        // A guarded flag judges the AI requests of each group of its users; routing is unchanged.
        let guarded = snap
            .flag_rollouts
            .iter()
            .find(|f| f.model.as_ref().is_none_or(|m| *m == model.name));
        if let Some(f) = guarded {
            if let Some(state) = gw.rollout(&f.spec.name) {
                let arm = caller.arm(&f.spec, state.weights().0);
                record.arm = Some((state, arm));
            }
        }
        return Ok((call, model, None));
    };
    let Some(state) = gw.rollout(&candidate.spec.name) else {
        return Ok((call, model, None));
    };
    let (weight, shadow) = state.weights();
    let arm = caller.arm(&candidate.spec, weight);
    record.arm = Some((state.clone(), arm));
    if arm == Arm::Candidate {
        let call = variant(gw, snap, caller, candidate, &call)?.unwrap_or(call);
        return Ok((call, candidate.model.clone(), None));
    }
    let copy = if caller.shadowed(&candidate.spec, shadow) {
        let copy = match variant(gw, snap, caller, candidate, &call)? {
            Some(c) => c,
            None => reparse(gw, snap, caller, call.api, call.body.clone())?,
        };
        Some(Box::new(Shadow {
            call: *copy,
            model: candidate.model.clone(),
            state,
        }))
    } else {
        None
    };
    Ok((call, model, copy))
}

/// The call as the candidate receives it, when its overrides change the body.
fn variant(
    gw: &Gateway,
    snap: &Snapshot,
    caller: &Caller<'_>,
    c: &ModelCandidate,
    call: &Call,
) -> Result<Option<Box<Call>>, ProxyError> {
    if !c.rewrites() || matches!(call.api, Api::Embeddings | Api::Completions) {
        return Ok(None);
    }
    let body = rewrite(&call.body, call.api, c)?;
    let mut new = reparse(gw, snap, caller, call.api, body)?;
    // The conversation was resolved once; the candidate continues the same one.
    if let (Some(old), Some(n)) = (&call.responses, &mut new.responses) {
        n.items.clone_from(&old.items);
        n.expanded = old.expanded;
        n.unknown_previous.clone_from(&old.unknown_previous);
        n.owner.clone_from(&old.owner);
    }
    Ok(Some(new))
}

fn reparse(
    gw: &Gateway,
    snap: &Snapshot,
    caller: &Caller<'_>,
    api: Api,
    body: Bytes,
) -> Result<Box<Call>, ProxyError> {
    ingress::parse(
        api,
        body,
        &caller.parts.headers,
        &gw.settings().validation,
        &snap.forwardable,
    )
}

/// Applies the candidate's overrides (system prompt, temperature, max_tokens) to a chat or
/// Messages body.
fn rewrite(body: &[u8], api: Api, c: &ModelCandidate) -> Result<Bytes, ProxyError> {
    let bad = |e: serde_json::Error| {
        ProxyError::from(pylon_providers::TranslateError::Json {
            what: "request",
            source: e,
        })
    };
    let mut v: Value = serde_json::from_slice(body).map_err(bad)?;
    let Some(obj) = v.as_object_mut() else {
        return Ok(Bytes::copy_from_slice(body));
    };
    if let Some(t) = c.temperature {
        obj.insert("temperature".into(), json!(t));
    }
    if let Some(m) = c.max_tokens {
        let field = match api {
            Api::Chat if obj.contains_key("max_completion_tokens") => "max_completion_tokens",
            Api::Responses => "max_output_tokens",
            _ => "max_tokens",
        };
        obj.insert(field.into(), json!(m));
    }
    if let Some(sp) = &c.system_prompt {
        match api {
            Api::Chat => chat_system(obj, sp),
            Api::Messages => messages_system(obj, sp),
            Api::Responses => responses_system(obj, sp),
            Api::Embeddings | Api::Completions => {}
        }
    }
    serde_json::to_vec(&v).map(Bytes::from).map_err(bad)
}

fn joined(first: &str, then: &str) -> String {
    format!("{first}\n\n{then}")
}

/// OpenAI chat: the system message is the first of `messages`.
fn chat_system(obj: &mut serde_json::Map<String, Value>, sp: &SystemPrompt) {
    let Some(messages) = obj.get_mut("messages").and_then(Value::as_array_mut) else {
        return;
    };
    let is_system = |m: &Value| matches!(m["role"].as_str(), Some("system" | "developer"));
    match sp {
        SystemPrompt::Replace(text) => {
            messages.retain(|m| !is_system(m));
            messages.insert(0, json!({"role": "system", "content": text}));
        }
        SystemPrompt::Prepend(text) => {
            if let Some(first) = messages.first_mut().filter(|m| is_system(m)) {
                if let Some(existing) = first["content"].as_str() {
                    first["content"] = json!(joined(text, existing));
                    return;
                }
            }
            messages.insert(0, json!({"role": "system", "content": text}));
        }
    }
}

/// Anthropic Messages: the system prompt is the `system` field, a string or text blocks.
fn messages_system(obj: &mut serde_json::Map<String, Value>, sp: &SystemPrompt) {
    let new = match (sp, obj.get_mut("system")) {
        (SystemPrompt::Replace(text), _) | (SystemPrompt::Prepend(text), None) => json!(text),
        (SystemPrompt::Prepend(text), Some(Value::String(s))) => json!(joined(text, s)),
        (SystemPrompt::Prepend(text), Some(Value::Array(blocks))) => {
            blocks.insert(0, json!({"type": "text", "text": text}));
            return;
        }
        (SystemPrompt::Prepend(text), Some(_)) => json!(text),
    };
    obj.insert("system".into(), new);
}

/// Responses API: the system prompt is `instructions`.
fn responses_system(obj: &mut serde_json::Map<String, Value>, sp: &SystemPrompt) {
    let new = match (sp, obj.get("instructions").and_then(Value::as_str)) {
        (SystemPrompt::Prepend(text), Some(existing)) => joined(text, existing),
        (SystemPrompt::Replace(text) | SystemPrompt::Prepend(text), _) => text.clone(),
    };
    obj.insert("instructions".into(), json!(new));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(sp: Option<SystemPrompt>) -> ModelCandidate {
        ModelCandidate {
            spec: RolloutSpec {
                name: Arc::from("r"),
                stickiness: Stickiness::Key,
                preview_header: http::HeaderName::from_static("x-pylon-preview"),
                preview_keys: Vec::new(),
            },
            model: Arc::new(crate::snapshot::tests::model_with_weights(&[1])),
            system_prompt: sp,
            temperature: Some(0.2),
            max_tokens: Some(64),
        }
    }

    fn rewritten(api: Api, body: Value, sp: SystemPrompt) -> Value {
        let out = rewrite(body.to_string().as_bytes(), api, &candidate(Some(sp))).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_prompt_version_prepends_or_replaces_the_chat_system_message() {
        let body = json!({"model": "m", "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "hi"}]});
        let v = rewritten(
            Api::Chat,
            body.clone(),
            SystemPrompt::Prepend("Be brief.".into()),
        );
        assert_eq!(v["messages"][0]["content"], "Be brief.\n\nBe kind.");
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);
        assert_eq!(
            (v["temperature"].as_f64(), v["max_tokens"].as_u64()),
            (Some(0.2), Some(64))
        );
        let v = rewritten(
            Api::Chat,
            body,
            SystemPrompt::Replace("Only French.".into()),
        );
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "Only French."})
        );
        assert_eq!(v["messages"][1]["role"], "user");
        let bare = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let v = rewritten(Api::Chat, bare, SystemPrompt::Prepend("Be brief.".into()));
        assert_eq!(v["messages"][0]["role"], "system");
    }

    #[test]
    fn a_prompt_version_edits_the_messages_system_field() {
        let body = json!({"model": "m", "max_tokens": 10, "system": "Be kind.", "messages": []});
        let v = rewritten(
            Api::Messages,
            body,
            SystemPrompt::Prepend("Be brief.".into()),
        );
        assert_eq!(v["system"], "Be brief.\n\nBe kind.");
        let blocks =
            json!({"model": "m", "system": [{"type": "text", "text": "x"}], "messages": []});
        let v = rewritten(
            Api::Messages,
            blocks,
            SystemPrompt::Prepend("Be brief.".into()),
        );
        assert_eq!(v["system"][0]["text"], "Be brief.");
        assert_eq!(v["system"][1]["text"], "x");
    }
}
