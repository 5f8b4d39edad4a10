//! The rollouts of a snapshot: how each picks a request's arm, and the candidates (a model's
//! other targets or prompt version, a flag's variant, an app route's other upstream) built
//! over the snapshot's providers and models.

use foldhash::HashMap;
use std::sync::Arc;

use http::HeaderName;

use super::{targets_of, Model, Provider, Snapshot};
use crate::breaker::Policy;

/// What keeps a caller on one arm of a rollout.
pub(crate) enum Stickiness {
    Key,
    User,
    Ip,
    Header(HeaderName),
}

/// How a rollout picks a request's arm.
pub(crate) struct RolloutSpec {
    pub name: Arc<str>,
    pub stickiness: Stickiness,
    /// Requests with this header go to the candidate whatever the weight.
    pub preview_header: HeaderName,
    /// Key names always served by the candidate.
    pub preview_keys: Vec<String>,
}

impl RolloutSpec {
    fn new(r: &pylon_config::Rollout) -> RolloutSpec {
        let st = r.stickiness.get_ref();
        let stickiness = match st.as_str() {
            "user" => Stickiness::User,
            "ip" => Stickiness::Ip,
            other => match other
                .strip_prefix("header:")
                .and_then(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
            {
                Some(h) => Stickiness::Header(h),
                None => Stickiness::Key,
            },
        };
        RolloutSpec {
            name: Arc::from(r.name.get_ref().as_str()),
            stickiness,
            preview_header: HeaderName::from_bytes(
                r.preview_header.to_ascii_lowercase().as_bytes(),
            )
            .unwrap_or(HeaderName::from_static("x-pylon-preview")),
            preview_keys: r.preview_keys.clone(),
        }
    }
}

/// A model rollout's candidate: its targets and the request overrides (a prompt version).
pub(crate) struct ModelCandidate {
    pub spec: RolloutSpec,
    pub model: Arc<Model>,
    pub system_prompt: Option<pylon_config::SystemPrompt>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
}

impl ModelCandidate {
    /// Whether serving the candidate changes the request body.
    pub fn rewrites(&self) -> bool {
        self.system_prompt.is_some() || self.temperature.is_some() || self.max_tokens.is_some()
    }
}

/// A guarded flag: the rollout's share of targeting keys gets `variant`, the others the flag's
/// default; AI requests (of `model`, or all) are counted per group for the judge.
pub(crate) struct FlagRollout {
    pub spec: RolloutSpec,
    pub flag: String,
    pub variant: String,
    pub model: Option<String>,
}

impl Snapshot {
    /// The guarded-flag rollout of `flag`, if it has one.
    pub(crate) fn flag_rollout(&self, flag: &str) -> Option<&FlagRollout> {
        self.flag_rollouts
            .iter()
            .find(|f| f.flag == flag)
            .map(|f| &**f)
    }
}

/// An app route rollout's candidate: another upstream (a new release of the application).
pub(crate) struct RouteCandidate {
    pub spec: RolloutSpec,
    pub upstream: http::Uri,
}

/// The rollouts of a snapshot, by kind of subject.
#[derive(Default)]
pub(super) struct RolloutParts {
    pub models: HashMap<String, Arc<ModelCandidate>>,
    pub flags: Vec<Arc<FlagRollout>>,
    pub routes: HashMap<String, Arc<RouteCandidate>>,
}

/// Builds the rollouts' candidates over a snapshot's providers and models.
pub(super) fn rollout_parts(
    rollouts: &[pylon_config::Rollout],
    providers: &HashMap<String, Arc<Provider>>,
    models: &HashMap<String, Arc<Model>>,
    policy: Policy,
) -> RolloutParts {
    let mut parts = RolloutParts::default();
    for r in rollouts {
        let c = r.candidate.get_ref();
        if let Some(flag) = &r.flag {
            parts.flags.push(Arc::new(FlagRollout {
                spec: RolloutSpec::new(r),
                flag: flag.get_ref().clone(),
                variant: c.variant.clone().unwrap_or_default(),
                model: r.model.as_ref().map(|m| m.get_ref().clone()),
            }));
            continue;
        }
        if let (Some(prefix), Some(upstream)) = (&r.route, &c.upstream) {
            if let Ok(upstream) = upstream.trim_end_matches('/').parse() {
                parts.routes.insert(
                    prefix.get_ref().clone(),
                    Arc::new(RouteCandidate {
                        spec: RolloutSpec::new(r),
                        upstream,
                    }),
                );
            }
            continue;
        }
        let Some(subject) = r.model.as_ref().and_then(|m| models.get(m.get_ref())) else {
            continue;
        };
        let targets = if c.targets.is_empty() {
            // A prompt version: the same targets (and their health), other overrides.
            subject.targets.clone()
        } else {
            targets_of(&c.targets, providers, policy, None)
        };
        let model = Model {
            name: subject.name.clone(),
            strategy: subject.strategy,
            targets,
            fallbacks: subject.fallbacks.clone(),
            retries: subject.retries,
            rpm: subject.rpm,
            tpm: subject.tpm,
            log_bodies: subject.log_bodies,
            metric_name: subject.metric_name.clone(),
            response_timeout: subject.response_timeout,
            resend_on_timeout: subject.resend_on_timeout,
            drop_unsupported: subject.drop_unsupported,
            // The candidate is judged on its own answers: never served from, nor stored
            // into, the stable's cache.
            cache: None,
        };
        parts.models.insert(
            subject.name.clone(),
            Arc::new(ModelCandidate {
                spec: RolloutSpec::new(r),
                model: Arc::new(model),
                system_prompt: c.system_prompt.clone(),
                temperature: c.temperature,
                max_tokens: c.max_tokens,
            }),
        );
    }
    parts
}
