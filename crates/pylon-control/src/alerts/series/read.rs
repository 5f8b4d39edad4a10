//! What a rule reads from two samples: the named series (rates, ratios, percentiles, levels)
//! narrowed by the rule's labels.

use std::collections::BTreeMap;

use super::{Labels, Sample, Value};

const REQUESTS: &str = "pylon_requests_total";
const DURATION: &str = "pylon_request_duration_seconds";
const TTFT: &str = "pylon_time_to_first_token_seconds";
const TOKENS: &str = "pylon_tokens_total";
const COST: &str = "pylon_cost_usd_total";
const CACHE: &str = "pylon_cache_requests_total";
const REJECTED: &str = "pylon_rejected_requests_total";
const STREAMS: &str = "pylon_open_streams";
const BREAKERS: &str = "pylon_circuit_breaker_state";
const LOG_DROPPED: &str = "pylon_request_log_dropped_total";
const CACHE_SAVED: &str = "pylon_cache_cost_saved_usd_total";
const DEPENDENCIES: &str = "pylon_dependency_up";
const TLS_NOT_AFTER: &str = "pylon_tls_certificate_not_after_seconds";
const ACME_FAILURES: &str = "pylon_acme_renewal_failures";
const DELIVERIES: &str = "pylon_alert_deliveries_total";
const TEAM_REQUESTS: &str = "pylon_team_requests_total";
const TEAM_TOKENS: &str = "pylon_team_tokens_total";
const TEAM_COST: &str = "pylon_team_cost_usd_total";
pub(super) const USED: [&str; 18] = [
    TEAM_REQUESTS,
    TEAM_TOKENS,
    TEAM_COST,
    REQUESTS,
    DURATION,
    TTFT,
    TOKENS,
    COST,
    CACHE,
    REJECTED,
    STREAMS,
    BREAKERS,
    LOG_DROPPED,
    CACHE_SAVED,
    DEPENDENCIES,
    DELIVERIES,
    TLS_NOT_AFTER,
    ACME_FAILURES,
];

/// A series' value over the interval between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reading {
    pub value: f64,
    /// Requests per second behind it (the anomaly detector's quiet floor).
    pub traffic: f64,
}

impl Sample {
    /// Σ of a family's counters or gauges (all label sets).
    pub fn total(&self, family: &str) -> f64 {
        self.families.get(family).map_or(0.0, |m| {
            m.values()
                .map(|v| match v {
                    Value::Scalar(x) | Value::Gauge(x) => *x,
                    Value::Histogram(..) => 0.0,
                })
                .sum()
        })
    }

    /// The values a label takes in a family, sorted.
    pub fn label_values(&self, family: &str, label: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .families
            .get(family)
            .into_iter()
            .flat_map(|m| m.keys())
            .filter_map(|l| l.iter().find(|(k, _)| k == label).map(|(_, v)| v.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The combinations of `labels` that `series` has data for, each as a label map (a rule
    /// with `by` gets one alert per combination). Unknown models (`-`) are left out.
    pub fn combinations(&self, series: &str, labels: &[String]) -> Vec<BTreeMap<String, String>> {
        let Some(family) = family(series, labels.iter().any(|l| l == "team")) else {
            return Vec::new();
        };
        let mut out: Vec<BTreeMap<String, String>> = self
            .families
            .get(family)
            .into_iter()
            .flat_map(|m| m.keys())
            .filter_map(|l| {
                labels
                    .iter()
                    .map(|want| {
                        let v = l.iter().find(|(k, _)| k == want).map(|(_, v)| v.clone())?;
                        (v != "-").then(|| (want.clone(), v))
                    })
                    .collect::<Option<BTreeMap<_, _>>>()
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A gauge family's values by labels.
    pub fn gauges(&self, family: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut out: Vec<(BTreeMap<String, String>, f64)> = self
            .families
            .get(family)
            .into_iter()
            .flatten()
            .filter_map(|(l, v)| match v {
                Value::Scalar(x) | Value::Gauge(x) => Some((l.iter().cloned().collect(), *x)),
                Value::Histogram(..) => None,
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn matches(labels: &Labels, want: &BTreeMap<String, String>, extra: &[(&str, &str)]) -> bool {
    let has = |k: &str, v: &str| labels.iter().any(|(lk, lv)| lk == k && lv == v);
    want.iter().all(|(k, v)| has(k, v)) && extra.iter().all(|(k, v)| has(k, v))
}

/// The same metric in the earlier sample.
pub(super) fn before<'a>(prev: &'a Sample, family: &str, labels: &Labels) -> Option<&'a Value> {
    prev.families.get(family)?.get(labels)
}

/// Σ of how much matching counters grew (a counter that went down restarted: its value counts).
fn growth(
    prev: &Sample,
    cur: &Sample,
    family: &str,
    want: &BTreeMap<String, String>,
    extra: &[(&str, &str)],
) -> f64 {
    let Some(metrics) = cur.families.get(family) else {
        return 0.0;
    };
    metrics
        .iter()
        .filter(|(l, _)| matches(l, want, extra))
        .map(|(l, v)| match (v, before(prev, family, l)) {
            (Value::Scalar(now), Some(Value::Scalar(then))) if now >= then => now - then,
            (Value::Scalar(now), _) => *now,
            _ => 0.0,
        })
        .sum()
}

/// Σ of matching gauges now.
fn level(
    cur: &Sample,
    family: &str,
    want: &BTreeMap<String, String>,
    f: impl Fn(f64) -> f64,
) -> f64 {
    cur.families.get(family).map_or(0.0, |metrics| {
        metrics
            .iter()
            .filter(|(l, _)| matches(l, want, &[]))
            .map(|(_, v)| match v {
                Value::Scalar(x) | Value::Gauge(x) => f(*x),
                Value::Histogram(..) => 0.0,
            })
            .sum()
    })
}

/// Matching histograms' growth: cumulative bucket counts and the total.
fn histogram_growth(
    prev: &Sample,
    cur: &Sample,
    family: &str,
    want: &BTreeMap<String, String>,
) -> (Vec<(f64, u64)>, u64) {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let mut total = 0;
    for (l, v) in cur.families.get(family).into_iter().flatten() {
        let Value::Histogram(now, count) = v else {
            continue;
        };
        if !matches(l, want, &[]) {
            continue;
        }
        let then = match before(prev, family, l) {
            Some(Value::Histogram(b, c)) if c <= count => Some((b, *c)),
            _ => None,
        };
        total += count - then.map_or(0, |t| t.1);
        for (i, (upper, cum)) in now.iter().enumerate() {
            let was = then.and_then(|t| t.0.get(i)).map_or(0, |b| b.1);
            let grew = cum.saturating_sub(was);
            match buckets.get_mut(i) {
                Some(b) => b.1 += grew,
                None => buckets.push((*upper, grew)),
            }
        }
    }
    (buckets, total)
}

/// The `q` quantile of a histogram's growth, interpolated within its bucket; `None` if empty.
fn quantile(buckets: &[(f64, u64)], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(upper, cum) in buckets {
        if cum as f64 >= rank {
            let in_bucket = (cum - lower.1) as f64;
            let into = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (upper - lower.0) * into);
        }
        lower = (upper, cum);
    }
    // Beyond the last finite bound: that bound is the best that can be said.
    Some(lower.0)
}

/// Requests whose latency was above `threshold_s`, and all requests (a latency SLO's bad and
/// total), from the duration histogram.
pub fn slow_and_total(
    prev: &Sample,
    cur: &Sample,
    want: &BTreeMap<String, String>,
    threshold_s: f64,
) -> (f64, f64) {
    let (buckets, total) = histogram_growth(prev, cur, DURATION, want);
    // The smallest bound at or above the threshold: requests within it count as fast.
    let fast = buckets
        .iter()
        .find(|(upper, _)| *upper >= threshold_s)
        .map_or(total, |b| b.1);
    ((total.saturating_sub(fast)) as f64, total as f64)
}

/// Server-side failures and all requests (an availability SLO's bad and total).
pub fn failed_and_total(
    prev: &Sample,
    cur: &Sample,
    want: &BTreeMap<String, String>,
) -> (f64, f64) {
    let family = if want.contains_key("team") {
        TEAM_REQUESTS
    } else {
        REQUESTS
    };
    (
        growth(prev, cur, family, want, &[("status_class", "5xx")]),
        growth(prev, cur, family, want, &[]),
    )
}

/// The metric family a named series is read from (burn-rate rules: `requests`); a rule about
/// a team reads the per-team families.
pub fn family(series: &str, team: bool) -> Option<&'static str> {
    if team {
        return match series {
            "requests" | "errors" | "error_rate" => Some(TEAM_REQUESTS),
            "tokens" => Some(TEAM_TOKENS),
            "cost" => Some(TEAM_COST),
            _ => None,
        };
    }
    Some(match series {
        "requests" | "errors" | "error_rate" => REQUESTS,
        "latency_p50" | "latency_p95" | "latency_p99" => DURATION,
        "ttft_p95" => TTFT,
        "tokens" => TOKENS,
        "cost" => COST,
        "cache_hit_rate" => CACHE,
        "rejections" => REJECTED,
        "open_streams" => STREAMS,
        "breaker_open" => BREAKERS,
        "request_log_dropped" => LOG_DROPPED,
        "receiver_failures" => DELIVERIES,
        "dependency_down" => DEPENDENCIES,
        "tls_days_left" => TLS_NOT_AFTER,
        "tls_renewal_failures" => ACME_FAILURES,
        _ => return None,
    })
}

/// A named series between two samples; `None` when it has no value (no requests for a ratio or
/// a percentile).
pub fn read(
    series: &str,
    want: &BTreeMap<String, String>,
    prev: &Sample,
    cur: &Sample,
) -> Option<Reading> {
    let secs = (cur.at_ms.saturating_sub(prev.at_ms) as f64 / 1000.0).max(1e-3);
    let team = want.contains_key("team");
    let (requests_f, tokens_f, cost_f) = if team {
        (TEAM_REQUESTS, TEAM_TOKENS, TEAM_COST)
    } else {
        (REQUESTS, TOKENS, COST)
    };
    if team && family(series, true).is_none() {
        return None;
    }
    let requests = growth(prev, cur, requests_f, want, &[]);
    let traffic = requests / secs;
    let value = match series {
        "requests" => traffic,
        "errors" => growth(prev, cur, requests_f, want, &[("status_class", "5xx")]) / secs,
        "error_rate" => {
            if requests == 0.0 {
                return None;
            }
            growth(prev, cur, requests_f, want, &[("status_class", "5xx")]) / requests
        }
        "latency_p50" | "latency_p95" | "latency_p99" => {
            let q = match series {
                "latency_p50" => 0.5,
                "latency_p95" => 0.95,
                _ => 0.99,
            };
            let (b, total) = histogram_growth(prev, cur, DURATION, want);
            quantile(&b, total, q)?
        }
        "ttft_p95" => {
            let (b, total) = histogram_growth(prev, cur, TTFT, want);
            quantile(&b, total, 0.95)?
        }
        "tokens" => growth(prev, cur, tokens_f, want, &[]) / secs,
        "cost" => growth(prev, cur, cost_f, want, &[]) * 3600.0 / secs,
        "cache_hit_rate" => {
            let all = growth(prev, cur, CACHE, want, &[]);
            if all == 0.0 {
                return None;
            }
            growth(prev, cur, CACHE, want, &[("result", "hit")]) / all
        }
        "rejections" => growth(prev, cur, REJECTED, want, &[]) / secs,
        "open_streams" => level(cur, STREAMS, want, |x| x),
        "breaker_open" => level(cur, BREAKERS, want, |x| if x >= 2.0 { 1.0 } else { 0.0 }),
        "request_log_dropped" => growth(prev, cur, LOG_DROPPED, want, &[]) / secs,
        "receiver_failures" => growth(prev, cur, DELIVERIES, want, &[("outcome", "failed")]) / secs,
        "dependency_down" => level(cur, DEPENDENCIES, want, |x| if x < 1.0 { 1.0 } else { 0.0 }),
        "tls_days_left" => {
            let not_after = level(cur, TLS_NOT_AFTER, want, |x| x);
            if not_after <= 0.0 {
                return None;
            }
            (not_after - cur.at_ms as f64 / 1000.0) / 86_400.0
        }
        "tls_renewal_failures" => level(cur, ACME_FAILURES, want, |x| x),
        _ => return None,
    };
    Some(Reading { value, traffic })
}
