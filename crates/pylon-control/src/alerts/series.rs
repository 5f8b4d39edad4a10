//! Pylon's own series, read from its metrics: two gathers of the registry a few seconds apart
//! give rates, ratios and percentiles narrowed by a rule's labels (see `pylon_config::SERIES`).

use std::collections::{BTreeMap, HashMap};

use pylon_telemetry::prometheus::proto::{MetricFamily, MetricType};
use serde::{Deserialize, Serialize};

/// One metric's value in a gather.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Value {
    /// A counter.
    Scalar(f64),
    Gauge(f64),
    /// (upper bound, cumulative count), and the total count.
    Histogram(Vec<(f64, u64)>, u64),
}

type Labels = Vec<(String, String)>;

/// The registry at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub at_ms: u64,
    /// Each family's metrics by label set (a rule's series looks the same set up in the
    /// earlier sample: by hash, not by scan).
    families: HashMap<String, HashMap<Labels, Value>>,
}

impl Sample {
    /// Keeps the families the series are made from.
    pub fn of(families: &[MetricFamily], at_ms: u64) -> Sample {
        let mut out = HashMap::new();
        for f in families {
            if !USED.contains(&f.name()) {
                continue;
            }
            let metrics = f
                .get_metric()
                .iter()
                .map(|m| {
                    let labels: Labels = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_owned(), l.value().to_owned()))
                        .collect();
                    let value = match f.get_field_type() {
                        MetricType::COUNTER => Value::Scalar(m.get_counter().get_value()),
                        MetricType::GAUGE => Value::Gauge(m.get_gauge().get_value()),
                        MetricType::HISTOGRAM => {
                            let h = m.get_histogram();
                            Value::Histogram(
                                h.get_bucket()
                                    .iter()
                                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                                    .collect(),
                                h.get_sample_count(),
                            )
                        }
                        _ => Value::Scalar(0.0),
                    };
                    (labels, value)
                })
                .collect();
            out.insert(f.name().to_owned(), metrics);
        }
        Sample {
            at_ms,
            families: out,
        }
    }

    /// What grew since `prev` (counters, histograms), and gauges as they are now: what one
    /// instance hands the evaluator.
    pub fn delta(&self, prev: &Sample) -> Sample {
        let families = self
            .families
            .iter()
            .map(|(name, metrics)| {
                let grown = metrics
                    .iter()
                    .map(|(l, v)| {
                        let d = match (v, before(prev, name, l)) {
                            (Value::Scalar(now), Some(Value::Scalar(then))) if now >= then => {
                                Value::Scalar(now - then)
                            }
                            (Value::Histogram(now, c), Some(Value::Histogram(then, tc)))
                                if tc <= c && now.len() == then.len() =>
                            {
                                Value::Histogram(
                                    now.iter()
                                        .zip(then)
                                        .map(|(a, b)| (a.0, a.1.saturating_sub(b.1)))
                                        .collect(),
                                    c - tc,
                                )
                            }
                            // New, or restarted: all of it is growth.
                            (other, _) => other.clone(),
                        };
                        (l.clone(), d)
                    })
                    // What did not move is not worth handing over.
                    .filter(|(_, d)| !matches!(d, Value::Scalar(x) if *x == 0.0))
                    .filter(|(_, d)| !matches!(d, Value::Histogram(_, 0)))
                    .collect();
                (name.clone(), grown)
            })
            .collect();
        Sample {
            at_ms: self.at_ms,
            families,
        }
    }

    /// Adds a delta's growth (gauges are kept apart, per instance: see [`Combined`]).
    fn add(&mut self, delta: &Sample) {
        for (name, metrics) in &delta.families {
            let mine = self.families.entry(name.clone()).or_default();
            for (l, v) in metrics {
                match (mine.get_mut(l), v) {
                    (Some(Value::Scalar(a)), Value::Scalar(b)) => *a += b,
                    (Some(Value::Histogram(a, ac)), Value::Histogram(b, bc))
                        if a.len() == b.len() =>
                    {
                        for (x, y) in a.iter_mut().zip(b) {
                            x.1 += y.1;
                        }
                        *ac += bc;
                    }
                    (None, Value::Scalar(_) | Value::Histogram(..)) => {
                        mine.insert(l.clone(), v.clone());
                    }
                    _ => {}
                }
            }
        }
    }

    fn gauges_only(&self) -> Sample {
        Sample {
            at_ms: self.at_ms,
            families: self
                .families
                .iter()
                .map(|(n, m)| {
                    let g: HashMap<Labels, Value> = m
                        .iter()
                        .filter(|(_, v)| matches!(v, Value::Gauge(_)))
                        .map(|(l, v)| (l.clone(), v.clone()))
                        .collect();
                    (n.clone(), g)
                })
                .filter(|(_, g)| !g.is_empty())
                .collect(),
        }
    }

    /// As JSON, to hand to the evaluating instance.
    pub fn to_wire(&self) -> String {
        let families: Vec<(&String, Vec<(&Labels, &Value)>)> = self
            .families
            .iter()
            .map(|(n, m)| (n, m.iter().collect()))
            .collect();
        serde_json::json!({"at_ms": self.at_ms, "families": families}).to_string()
    }

    /// From [`Sample::to_wire`].
    pub fn from_wire(text: &str) -> Option<Sample> {
        #[derive(Deserialize)]
        struct Wire {
            at_ms: u64,
            families: Vec<(String, Vec<(Labels, Value)>)>,
        }
        let w: Wire = serde_json::from_str(text).ok()?;
        Some(Sample {
            at_ms: w.at_ms,
            families: w
                .families
                .into_iter()
                .map(|(n, m)| (n, m.into_iter().collect()))
                .collect(),
        })
    }
}

/// Every instance's traffic as one registry: growth summed as it is handed over, gauges as
/// each instance last reported them (an instance silent for `stale_ms` no longer counts).
#[derive(Debug, Default)]
pub struct Combined {
    growth: Sample,
    gauges: HashMap<String, Sample>,
}

impl Combined {
    /// Adds what `instance` handed over at `now`.
    pub fn add(&mut self, instance: &str, delta: &Sample, now: u64) {
        self.growth.add(delta);
        let mut g = delta.gauges_only();
        g.at_ms = now;
        self.gauges.insert(instance.to_owned(), g);
    }

    /// The combined registry at `now`.
    pub fn sample(&mut self, now: u64, stale_ms: u64) -> Sample {
        self.gauges
            .retain(|_, g| now.saturating_sub(g.at_ms) <= stale_ms);
        let mut out = self.growth.clone();
        out.at_ms = now;
        for g in self.gauges.values() {
            for (name, metrics) in &g.families {
                let mine = out.families.entry(name.clone()).or_default();
                for (l, v) in metrics {
                    let Value::Gauge(x) = v else { continue };
                    if let Value::Gauge(sum) = mine.entry(l.clone()).or_insert(Value::Gauge(0.0)) {
                        *sum += x;
                    }
                }
            }
        }
        out
    }
}

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
const USED: [&str; 18] = [
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
fn before<'a>(prev: &'a Sample, family: &str, labels: &Labels) -> Option<&'a Value> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(model: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("model".to_owned(), model.to_owned())])
    }

    /// Days left on the certificate from the expiry gauge; nothing without TLS.
    #[test]
    fn tls_days_left_from_the_expiry_gauge() {
        let m = pylon_telemetry::Metrics::new(false).unwrap();
        let at_ms = 1_800_000_000_000;
        let none = Sample::of(&m.gather(), at_ms);
        assert!(read("tls_days_left", &BTreeMap::new(), &none, &none).is_none());
        m.tls_not_after.set(1_800_000_000 + 10 * 86_400 + 43_200);
        let s = Sample::of(&m.gather(), at_ms);
        let r = read("tls_days_left", &BTreeMap::new(), &s, &s).unwrap();
        assert_eq!(r.value, 10.5);
        m.acme_failures.set(3);
        let s = Sample::of(&m.gather(), at_ms);
        let r = read("tls_renewal_failures", &BTreeMap::new(), &s, &s).unwrap();
        assert_eq!(r.value, 3.0);
    }

    /// Rates, ratios and percentiles from a real registry, narrowed by labels.
    #[test]
    fn series_from_two_gathers() {
        let m = pylon_telemetry::Metrics::new(false).unwrap();
        let before = Sample::of(&m.gather(), 0);
        for (model, class, n) in [
            ("chat", "2xx", 90),
            ("chat", "5xx", 10),
            ("other", "5xx", 50),
        ] {
            m.requests
                .with_label_values(&["chat", model, "p", class])
                .inc_by(n);
        }
        for i in 0..100 {
            m.request_duration
                .with_label_values(&["chat", "chat"])
                .observe(if i < 90 { 0.2 } else { 4.0 });
        }
        let after = Sample::of(&m.gather(), 10_000);
        let r = |s: &str, model: &str| read(s, &labels(model), &before, &after);
        assert_eq!(r("requests", "chat").unwrap().value, 10.0);
        assert_eq!(r("error_rate", "chat").unwrap().value, 0.1);
        assert_eq!(r("error_rate", "nobody"), None, "no requests, no ratio");
        let p50 = r("latency_p50", "chat").unwrap().value;
        let p95 = r("latency_p95", "chat").unwrap().value;
        assert!(p50 > 0.1 && p50 <= 0.25, "{p50}");
        assert!(p95 > 2.5 && p95 <= 5.0, "{p95}");
        let (slow, total) = slow_and_total(&before, &after, &labels("chat"), 1.0);
        assert_eq!((slow, total), (10.0, 100.0));
        let (bad, total) = failed_and_total(&before, &after, &BTreeMap::new());
        assert_eq!((bad, total), (60.0, 150.0));
        // Health: a dependency failing its check counts once.
        m.dependency_up.with_label_values(&["store"]).set(0);
        m.dependency_up.with_label_values(&["redis"]).set(1);
        m.cache_cost_saved.inc_by(0.25);
        let now = Sample::of(&m.gather(), 20_000);
        let down = |labels: &BTreeMap<String, String>| {
            read("dependency_down", labels, &after, &now).unwrap().value
        };
        assert_eq!(down(&BTreeMap::new()), 1.0);
        let redis = BTreeMap::from([("dependency".to_owned(), "redis".to_owned())]);
        assert_eq!(down(&redis), 0.0);
        assert_eq!(now.total("pylon_cache_cost_saved_usd_total"), 0.25);
    }

    /// Two instances' growth, handed over as JSON, reads as one registry: counters and
    /// histograms add up, gauges are each instance's latest, summed, until it goes quiet.
    #[test]
    fn instances_combine_into_one_registry() {
        let (a, b) = (
            pylon_telemetry::Metrics::new(false).unwrap(),
            pylon_telemetry::Metrics::new(false).unwrap(),
        );
        let base = (Sample::of(&a.gather(), 0), Sample::of(&b.gather(), 0));
        let mut combined = Combined::default();
        combined.add("a", &base.0.delta(&base.0), 0);
        combined.add("b", &base.1.delta(&base.1), 0);
        let prev = combined.sample(0, 30_000);
        for (m, errors) in [(&a, 10), (&b, 30)] {
            m.requests
                .with_label_values(&["chat", "chat", "p", "5xx"])
                .inc_by(errors);
            m.requests
                .with_label_values(&["chat", "chat", "p", "2xx"])
                .inc_by(60);
            m.request_duration
                .with_label_values(&["chat", "chat"])
                .observe(0.2);
            m.open_streams.set(2);
        }
        let (da, db) = (
            Sample::of(&a.gather(), 10_000).delta(&base.0),
            Sample::of(&b.gather(), 10_000).delta(&base.1),
        );
        combined.add("a", &Sample::from_wire(&da.to_wire()).unwrap(), 10_000);
        combined.add("b", &Sample::from_wire(&db.to_wire()).unwrap(), 10_000);
        let cur = combined.sample(10_000, 30_000);
        let chat = labels("chat");
        assert_eq!(read("errors", &chat, &prev, &cur).unwrap().value, 4.0);
        assert_eq!(read("error_rate", &chat, &prev, &cur).unwrap().value, 0.25);
        assert!(read("latency_p95", &chat, &prev, &cur).is_some());
        assert_eq!(
            read("open_streams", &BTreeMap::new(), &prev, &cur)
                .unwrap()
                .value,
            4.0
        );
        // `b` stops reporting: its streams no longer count.
        combined.add("a", &da.delta(&da), 50_000);
        let later = combined.sample(50_000, 30_000);
        assert_eq!(
            read("open_streams", &BTreeMap::new(), &cur, &later)
                .unwrap()
                .value,
            2.0
        );
    }
}
