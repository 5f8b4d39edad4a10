//! Pylon's own series, read from its metrics: two gathers of the registry a few seconds apart
//! give rates, ratios and percentiles narrowed by a rule's labels (see `pylon_config::SERIES`).

use std::collections::HashMap;

use pylon_telemetry::prometheus::proto::{MetricFamily, MetricType};
use serde::{Deserialize, Serialize};

mod read;

use read::{before, USED};
pub use read::{failed_and_total, family, read, slow_and_total, Reading};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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
