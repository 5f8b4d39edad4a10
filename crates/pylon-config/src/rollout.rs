//! `[[rollouts]]`: moving one model's or app route's traffic to a candidate, judged by Pylon's
//! own metrics; `[flags]`: feature flags served over OFREP.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::Target;

/// One rollout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub name: Spanned<String>,
    /// The subject when it is a model alias (`[[models]]` name).
    #[serde(default)]
    pub model: Option<Spanned<String>>,
    /// The subject when it is an app route (`[[routes]]` prefix).
    #[serde(default)]
    pub route: Option<Spanned<String>>,
    /// The subject when it is a feature flag (a guarded flag): the candidate's share of
    /// targeting keys gets `candidate.variant`, the rest the flag's default variant; the judge
    /// compares the AI requests of the two groups (of `model`, when given, else of every model).
    #[serde(default)]
    pub flag: Option<Spanned<String>>,
    #[serde(default)]
    pub strategy: RolloutStrategy,
    pub candidate: Spanned<Candidate>,
    #[serde(default)]
    pub steps: Vec<Spanned<RolloutStep>>,
    /// What keeps a caller on one arm: `key`, `user`, `ip` or `header:<name>`.
    #[serde(default = "default_stickiness")]
    pub stickiness: Spanned<String>,
    /// Requests carrying this header (any value) are served by the candidate whatever the
    /// weight: blue-green's preview, and a way to try any candidate by hand.
    #[serde(default = "default_preview_header")]
    pub preview_header: String,
    /// Virtual-key names always served by the candidate (testers).
    #[serde(default)]
    pub preview_keys: Vec<String>,
    /// Blue-green: how long the stable stays warm after the switch, with analysis continuing.
    #[serde(default = "default_rollback_window", with = "humantime_serde")]
    pub rollback_window: Duration,
    /// A URL that must answer 2xx before the rollout goes to 100 %.
    #[serde(default)]
    pub confirm_url: Option<Spanned<String>>,
    /// Receives one JSON event per state change.
    #[serde(default)]
    pub webhook: Option<Spanned<String>>,
    /// Start when Pylon starts (otherwise: `pylon rollout start` or the admin API).
    #[serde(default = "yes")]
    pub start: bool,
    #[serde(default)]
    pub analysis: Analysis,
}

fn default_stickiness() -> Spanned<String> {
    Spanned::new(0..0, "key".to_owned())
}

fn default_preview_header() -> String {
    "x-pylon-preview".to_owned()
}

fn default_rollback_window() -> Duration {
    Duration::from_secs(600)
}

fn yes() -> bool {
    true
}

/// How a rollout reaches the candidate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutStrategy {
    #[default]
    Canary,
    BlueGreen,
    Shadow,
}

/// The candidate variant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// A model subject's candidate targets (default: the model's own, for a prompt version).
    #[serde(default)]
    pub targets: Vec<Target>,
    #[serde(default)]
    pub system_prompt: Option<SystemPrompt>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// A route subject's candidate upstream (a new release of the application).
    #[serde(default)]
    pub upstream: Option<String>,
    /// A flag subject's candidate variant.
    #[serde(default)]
    pub variant: Option<String>,
}

/// A system prompt override: put before the client's, or in place of it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SystemPrompt {
    Prepend(String),
    Replace(String),
}

/// One step: the candidate's share and how long it is held (no `hold`: until resumed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStep {
    pub weight: f64,
    #[serde(default, with = "humantime_serde")]
    pub hold: Option<Duration>,
}

/// `[rollouts.analysis]`: how the judge decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    #[serde(default = "default_max_inconclusive")]
    pub max_inconclusive: u32,
    #[serde(default = "some_error_increase")]
    pub max_error_rate_increase: Option<f64>,
    #[serde(default = "some_ratio")]
    pub max_latency_ratio: Option<f64>,
    #[serde(default = "some_ratio")]
    pub max_ttft_ratio: Option<f64>,
    #[serde(default = "some_cost_ratio")]
    pub max_cost_ratio: Option<f64>,
    /// Absolute bounds on the candidate alone.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub max_p95_latency: Option<Duration>,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            interval: default_interval(),
            min_requests: default_min_requests(),
            failure_limit: default_failure_limit(),
            max_inconclusive: default_max_inconclusive(),
            max_error_rate_increase: some_error_increase(),
            max_latency_ratio: some_ratio(),
            max_ttft_ratio: some_ratio(),
            max_cost_ratio: some_cost_ratio(),
            max_error_rate: None,
            max_p95_latency: None,
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_min_requests() -> u64 {
    50
}

fn default_failure_limit() -> u32 {
    2
}

fn default_max_inconclusive() -> u32 {
    30
}

fn some_error_increase() -> Option<f64> {
    Some(0.02)
}

fn some_ratio() -> Option<f64> {
    Some(1.25)
}

fn some_cost_ratio() -> Option<f64> {
    Some(1.5)
}

/// `[flags]`: feature flags served over OFREP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// Flag definitions in flagd's JSON format; re-read when it changes. Flags made through the
    /// admin API (kept in the store) are added to these and win on the same key.
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
    /// How often the file and the store are checked for changes.
    #[serde(default = "default_flag_poll", with = "humantime_serde")]
    pub poll: Duration,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            file: None,
            poll: default_flag_poll(),
        }
    }
}

fn default_flag_poll() -> Duration {
    Duration::from_secs(1)
}
