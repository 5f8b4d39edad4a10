//! `[alerting]`, `[[alerts]]`, `[[alert_receivers]]` and `[alert_routing]`: rules over Pylon's
//! own series, where their notifications go, and what a firing alert may do to a rollout.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// `[alerting]`: how often rules are evaluated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerting {
    #[serde(default = "default_evaluate_every", with = "humantime_serde")]
    pub evaluate_every: Duration,
    /// Transitions and deliveries kept in the store for the history API, at most.
    #[serde(default = "default_history")]
    pub history: u64,
}

fn default_evaluate_every() -> Duration {
    Duration::from_secs(10)
}

fn default_history() -> u64 {
    10_000
}

impl Default for Alerting {
    fn default() -> Self {
        Alerting {
            evaluate_every: default_evaluate_every(),
            history: default_history(),
        }
    }
}

/// What a rule watches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    Threshold,
    BurnRate,
    Anomaly,
    Budget,
    Health,
}

impl AlertKind {
    /// The name used in pylon.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Threshold => "threshold",
            AlertKind::BurnRate => "burn-rate",
            AlertKind::Anomaly => "anomaly",
            AlertKind::Budget => "budget",
            AlertKind::Health => "health",
        }
    }
}

/// How urgent an alert is; a firing critical inhibits the warnings and infos of its group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Which way an anomaly must go to count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    #[default]
    Up,
    Down,
    Both,
}

/// What a firing alert does to a rollout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutAction {
    pub name: Spanned<String>,
    /// `pause` or `abort`.
    pub action: Spanned<String>,
}

/// One `[[alerts]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub name: Spanned<String>,
    pub kind: AlertKind,
    /// A named series (the README lists them).
    #[serde(default)]
    pub series: Option<Spanned<String>>,
    /// Which part of the series: `model`, `provider`, `route`, `target`, `team`, `key`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// One alert per value of these labels seen in the series (e.g. `["model"]`: each model
    /// alerts on its own, named `<name>:model=<value>`), instead of one for the whole series.
    #[serde(default)]
    pub by: Vec<String>,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_: Option<Duration>,
    #[serde(default)]
    pub severity: Severity,
    /// `summary`, `description`, `runbook`, … sent with every notification.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Burn rate: the objective (e.g. 0.999 of requests succeed).
    #[serde(default)]
    pub objective: Option<f64>,
    /// Burn rate over latency: a request slower than this is bad.
    #[serde(default, with = "humantime_serde")]
    pub latency: Option<Duration>,
    /// Anomaly: the robust score (in MADs) beyond which a point is anomalous.
    #[serde(default = "default_score")]
    pub score: f64,
    #[serde(default)]
    pub direction: Direction,
    /// Anomaly: `[n, m]`: n anomalous points among the last m.
    #[serde(default = "default_n_of_m")]
    pub n_of_m: [u32; 2],
    /// Anomaly: below this many requests per second the rule does not judge (quiet periods).
    #[serde(default)]
    pub min_rate: f64,
    /// What a firing alert does to a rollout.
    #[serde(default)]
    pub rollout: Option<RolloutAction>,
    /// An `[[alert_escalations]]` policy run while it fires unacknowledged.
    #[serde(default)]
    pub escalation: Option<Spanned<String>>,
}

/// One `[[alert_escalations]]`: steps of (delay, receivers), the whole repeated `repeat` times,
/// until the alert is acknowledged or resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    pub name: Spanned<String>,
    pub steps: Vec<EscalationStep>,
    #[serde(default)]
    pub repeat: u32,
}

/// One escalation step: after `after` (from the step before), these receivers are notified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationStep {
    #[serde(default, with = "humantime_serde")]
    pub after: Duration,
    pub receivers: Vec<Spanned<String>>,
}

fn default_score() -> f64 {
    5.0
}

fn default_n_of_m() -> [u32; 2] {
    [3, 5]
}

/// Where a receiver delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiverKind {
    /// Alertmanager's webhook format, version 4.
    Webhook,
    /// An Alertmanager's `POST /api/v2/alerts`.
    Alertmanager,
    Slack,
    Pagerduty,
}

/// One `[[alert_receivers]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertReceiver {
    pub name: Spanned<String>,
    pub kind: ReceiverKind,
    pub url: Spanned<String>,
    /// PagerDuty's integration (routing) key.
    #[serde(default)]
    pub routing_key: Option<crate::Secret>,
}

/// A node of the routing tree: alerts matching `matchers` go to `receiver` (children first).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRoute {
    #[serde(default)]
    pub receiver: Option<Spanned<String>>,
    /// Label equality matchers (`severity`, `alertname`, or any rule label).
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub group_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub group_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub repeat_interval: Option<Duration>,
    /// Also try the siblings after this route matched.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    #[serde(default)]
    pub routes: Vec<AlertRoute>,
}

/// The series a rule may watch: name, what it measures, the labels it can be narrowed by (the
/// README's list).
pub const SERIES: &[(&str, &str, &[&str])] = &[
    (
        "requests",
        "requests per second",
        &["route", "model", "provider", "team"],
    ),
    (
        "errors",
        "server-side failures (5xx) per second",
        &["route", "model", "provider", "team"],
    ),
    (
        "error_rate",
        "share of requests that failed server-side",
        &["route", "model", "provider", "team"],
    ),
    (
        "latency_p50",
        "median request latency, seconds",
        &["route", "model"],
    ),
    (
        "latency_p95",
        "95th percentile request latency, seconds",
        &["route", "model"],
    ),
    (
        "latency_p99",
        "99th percentile request latency, seconds",
        &["route", "model"],
    ),
    (
        "ttft_p95",
        "95th percentile time to first token, seconds",
        &["model", "provider"],
    ),
    (
        "tokens",
        "tokens per second, input and output",
        &["model", "provider", "team"],
    ),
    (
        "cost",
        "provider spend, USD per hour",
        &["model", "provider", "team"],
    ),
    (
        "cache_hit_rate",
        "share of cache lookups answered from the cache",
        &[],
    ),
    (
        "rejections",
        "requests refused by limits or budgets per second",
        &[],
    ),
    ("open_streams", "streams being relayed", &[]),
    (
        "breaker_open",
        "targets whose circuit breaker is open",
        &["model", "target"],
    ),
    (
        "request_log_dropped",
        "request-log rows dropped per second",
        &[],
    ),
    (
        "receiver_failures",
        "alert notifications that could not be delivered (after retries), per second",
        &["receiver"],
    ),
    (
        "dependency_down",
        "dependencies failing their check: store, redis, disk, probe:<provider>",
        &["dependency"],
    ),
    (
        "tls_days_left",
        "days until the served TLS certificate expires (no value without TLS)",
        &[],
    ),
    (
        "tls_renewal_failures",
        "consecutive failed ACME certificate orders (0 once one succeeds)",
        &[],
    ),
];

/// The alerting sections' problems, at their places in the file.
pub(crate) fn check(config: &crate::Config, problems: &mut Vec<(usize, String)>) {
    if config.alerting.evaluate_every < Duration::from_secs(1) {
        problems.push((0, "alerting.evaluate_every must be at least 1s".to_owned()));
    }
    let receivers: Vec<&str> = config
        .alert_receivers
        .iter()
        .map(|r| r.name.get_ref().as_str())
        .collect();
    let mut seen = std::collections::HashSet::new();
    for r in &config.alert_receivers {
        if !seen.insert(r.name.get_ref()) {
            problems.push((
                r.name.span().start,
                format!("receiver `{}` is declared twice", r.name.get_ref()),
            ));
        }
        if crate::validate::bad_url(r.url.get_ref()).is_some() {
            problems.push((
                r.url.span().start,
                format!(
                    "receiver `{}`: `{}` is not an http(s) URL",
                    r.name.get_ref(),
                    r.url.get_ref()
                ),
            ));
        }
        if r.kind == ReceiverKind::Pagerduty && r.routing_key.is_none() {
            problems.push((
                r.name.span().start,
                format!(
                    "receiver `{}`: PagerDuty needs routing_key",
                    r.name.get_ref()
                ),
            ));
        }
    }
    route(&config.alert_routing, &receivers, true, problems);
    let mut policies = std::collections::HashSet::new();
    for e in &config.alert_escalations {
        if !policies.insert(e.name.get_ref().as_str()) {
            problems.push((
                e.name.span().start,
                format!("escalation `{}` is declared twice", e.name.get_ref()),
            ));
        }
        if e.steps.is_empty() {
            problems.push((
                e.name.span().start,
                format!("escalation `{}` has no steps", e.name.get_ref()),
            ));
        }
        for r in e.steps.iter().flat_map(|s| &s.receivers) {
            if !receivers.contains(&r.get_ref().as_str()) {
                problems.push((
                    r.span().start,
                    format!(
                        "receiver `{}` is not declared in [[alert_receivers]]",
                        r.get_ref()
                    ),
                ));
            }
        }
    }
    // Alerts with an escalation policy are told through it; the others need a route.
    let unrouted = config.alerts.iter().any(|a| a.escalation.is_none());
    if unrouted && config.alert_routing.receiver.is_none() && !receivers.is_empty() {
        problems.push((
            0,
            "alert_routing.receiver: name the default receiver".to_owned(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for a in &config.alerts {
        let name = a.name.get_ref();
        let at = a.name.span().start;
        let mut bad = |msg: String| problems.push((at, format!("alert `{name}`: {msg}")));
        if !names.insert(name) {
            bad("declared twice".into());
        }
        if name.contains(':') {
            bad("names may not contain `:` (it joins a rule's name to the labels of the alerts its `by` makes)".into());
        }
        // Burn-rate rules count requests: the labels of `requests`.
        if a.kind == AlertKind::Budget {
            if !a.by.is_empty() {
                bad("`by` splits a series; a budget rule watches one owner".into());
            }
            // A budget rule watches one key's (by name) or one team's (by id) budget.
            let scope: Vec<&String> = a.labels.keys().collect();
            if !matches!(scope.as_slice(), [k] if *k == "key" || *k == "team") {
                bad("a budget rule names one owner: labels = { key = \"<key name>\" } or { team = \"<team id>\" }".into());
            }
        } else {
            let series_name = a
                .series
                .as_ref()
                .map_or("requests", |s| s.get_ref().as_str());
            // Per-team series count requests, tokens and spend by team alone.
            let team = a.labels.contains_key("team") || a.by.iter().any(|b| b == "team");
            let others = a.labels.keys().chain(&a.by).any(|l| l != "team");
            if team && (others || a.latency.is_some()) {
                bad("`team` stands alone: per-team series are not split by route, model or provider, nor by latency".into());
            }
            if let Some((_, _, labels)) = SERIES.iter().find(|(n, ..)| *n == series_name) {
                for l in &a.by {
                    if !labels.contains(&l.as_str()) || a.labels.contains_key(l) {
                        bad(format!(
                            "by `{l}`: series `{series_name}` is split by {} (and not by a label the rule already fixes)",
                            if labels.is_empty() {
                                "nothing".to_owned()
                            } else {
                                labels.join(", ")
                            }
                        ));
                    }
                }
                for l in a.labels.keys() {
                    if !labels.contains(&l.as_str()) {
                        bad(format!(
                            "label `{l}`: series `{series_name}` is narrowed by {}",
                            if labels.is_empty() {
                                "nothing".to_owned()
                            } else {
                                labels.join(", ")
                            }
                        ));
                    }
                }
            }
        }
        let known = |s: &str| SERIES.iter().any(|(n, ..)| *n == s);
        match (a.kind, &a.series) {
            (AlertKind::Threshold | AlertKind::Anomaly | AlertKind::Health, None) => {
                bad("name a series, e.g. series = \"error_rate\"".into());
            }
            (_, Some(s)) if !known(s.get_ref()) => {
                let all: Vec<&str> = SERIES.iter().map(|(n, ..)| *n).collect();
                problems.push((
                    s.span().start,
                    format!(
                        "alert `{name}`: series `{}` is not one of {}",
                        s.get_ref(),
                        all.join(", ")
                    ),
                ));
            }
            _ => {}
        }
        let mut bad = |msg: String| problems.push((at, format!("alert `{name}`: {msg}")));
        match a.kind {
            AlertKind::Threshold | AlertKind::Health => {
                if a.above.is_none() == a.below.is_none() {
                    bad("give exactly one of above = … or below = …".into());
                }
            }
            AlertKind::BurnRate => {
                if !a.objective.is_some_and(|o| o > 0.0 && o < 1.0) {
                    bad("objective must be between 0 and 1, e.g. objective = 0.999".into());
                }
            }
            AlertKind::Anomaly => {
                let [n, m] = a.n_of_m;
                if n == 0 || n > m || m > 60 {
                    bad(format!("n_of_m = [{n}, {m}]: need 1 ≤ n ≤ m ≤ 60"));
                }
                if a.score <= 0.0 {
                    bad("score must be above 0".into());
                }
            }
            AlertKind::Budget => {
                if !a.above.is_some_and(|f| f > 0.0) {
                    bad(
                        "above = the share of the budget spent that alerts, e.g. above = 0.8"
                            .into(),
                    );
                }
            }
        }
        if let Some(e) = &a.escalation {
            if !policies.contains(e.get_ref().as_str()) {
                problems.push((
                    e.span().start,
                    format!(
                        "alert `{name}`: escalation `{}` is not declared in [[alert_escalations]]",
                        e.get_ref()
                    ),
                ));
            }
        }
        if let Some(r) = &a.rollout {
            if !matches!(r.action.get_ref().as_str(), "pause" | "abort") {
                problems.push((
                    r.action.span().start,
                    format!(
                        "alert `{name}`: rollout action `{}` is not pause or abort",
                        r.action.get_ref()
                    ),
                ));
            }
        }
    }
}

fn route(r: &AlertRoute, receivers: &[&str], root: bool, problems: &mut Vec<(usize, String)>) {
    if let Some(name) = &r.receiver {
        if !receivers.contains(&name.get_ref().as_str()) {
            problems.push((
                name.span().start,
                format!(
                    "receiver `{}` is not declared in [[alert_receivers]]",
                    name.get_ref()
                ),
            ));
        }
    }
    if root && !r.matchers.is_empty() {
        problems.push((
            0,
            "alert_routing: the root route matches every alert; put matchers on its routes"
                .to_owned(),
        ));
    }
    for child in &r.routes {
        route(child, receivers, false, problems);
    }
}
