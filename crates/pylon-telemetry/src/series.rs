//! The series one finished request updates, found once per (route, model, provider) and kept:
//! a label lookup hashes every value with SipHash and takes the vector's lock, and a request
//! made six of them.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{Counter, Histogram, IntCounter};

use crate::metrics::{status_class, Metrics};

/// Most (route, model, provider) triples kept; beyond, lookups go to the vectors (labels are
/// bounded sets, so this is only reached by a misconfiguration, and counted).
const MAX_SERIES: usize = 4096;

/// Status classes in the order of [`RequestSeries::requests`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Handles of one route, model and provider's request series. Token and spend series are made
/// on first use, so a model that never reported tokens has none (as with the vectors).
pub struct RequestSeries {
    route: &'static str,
    model: String,
    provider: String,
    requests: [OnceLock<IntCounter>; 5],
    /// `pylon_request_duration_seconds{route, model}`.
    pub duration: Histogram,
    /// `pylon_overhead_seconds{route}`.
    pub overhead: Histogram,
    input_tokens: OnceLock<IntCounter>,
    output_tokens: OnceLock<IntCounter>,
    cost: OnceLock<Counter>,
}

impl RequestSeries {
    fn new(m: &Metrics, route: &'static str, model: &str, provider: &str) -> RequestSeries {
        RequestSeries {
            route,
            model: model.to_owned(),
            provider: provider.to_owned(),
            requests: Default::default(),
            duration: m.request_duration.with_label_values(&[route, model]),
            overhead: m.overhead.with_label_values(&[route]),
            input_tokens: OnceLock::new(),
            output_tokens: OnceLock::new(),
            cost: OnceLock::new(),
        }
    }

    /// `pylon_requests_total` for a status.
    pub fn requests(&self, m: &Metrics, status: u16) -> &IntCounter {
        let class = status_class(status);
        let i = CLASSES.iter().position(|c| *c == class).unwrap_or(4);
        self.requests[i].get_or_init(|| {
            m.requests
                .with_label_values(&[self.route, &self.model, &self.provider, class])
        })
    }

    /// `pylon_tokens_total` for input and output.
    pub fn tokens(&self, m: &Metrics) -> (&IntCounter, &IntCounter) {
        let of = |kind: &str| {
            m.tokens
                .with_label_values(&[self.model.as_str(), self.provider.as_str(), kind])
        };
        (
            self.input_tokens.get_or_init(|| of("input")),
            self.output_tokens.get_or_init(|| of("output")),
        )
    }

    /// `pylon_cost_usd_total`.
    pub fn cost(&self, m: &Metrics) -> &Counter {
        self.cost
            .get_or_init(|| m.cost.with_label_values(&[&self.model, &self.provider]))
    }

    fn is(&self, route: &str, model: &str, provider: &str) -> bool {
        self.route == route && self.model == model && self.provider == provider
    }
}

/// The kept series, by a hash of their labels.
#[derive(Default)]
pub(crate) struct SeriesCache {
    by_hash: Mutex<foldhash::HashMap<u64, Arc<RequestSeries>>>,
    /// Seeded per process; SipHash cost ~600 instructions a request here.
    hasher: foldhash::fast::RandomState,
}

impl SeriesCache {
    fn hash(&self, route: &str, model: &str, provider: &str) -> u64 {
        self.hasher.hash_one((route, model, provider))
    }
}

impl Metrics {
    /// The request series of a route, model and provider.
    pub fn request_series(
        &self,
        route: &'static str,
        model: &str,
        provider: &str,
    ) -> Arc<RequestSeries> {
        let cache = &self.series;
        let h = cache.hash(route, model, provider);
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still whole.
        let mut map = cache.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&h).filter(|s| s.is(route, model, provider)) {
            return s.clone();
        }
        let s = Arc::new(RequestSeries::new(self, route, model, provider));
        if map.len() < MAX_SERIES && !map.contains_key(&h) {
            map.insert(h, s.clone());
        } else {
            drop(map);
            self.bounded_drops
                .with_label_values(&["metric_series_cache"])
                .inc();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        let family = m.gather().into_iter().find(|f| f.name() == name);
        let Some(family) = family else { return 0.0 };
        family
            .get_metric()
            .iter()
            .find(|s| {
                labels.iter().all(|(k, v)| {
                    s.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map_or(0.0, |s| {
                if s.get_counter().get_value() != 0.0 {
                    s.get_counter().get_value()
                } else {
                    s.get_histogram().get_sample_count() as f64
                }
            })
    }

    #[test]
    fn cached_series_count_in_the_exported_vectors() {
        let m = Metrics::new(false).unwrap();
        for status in [200, 200, 503] {
            let s = m.request_series("/v1/chat/completions", "gpt", "openai");
            s.requests(&m, status).inc();
            s.duration.observe(0.1);
        }
        let other = m.request_series("/v1/chat/completions", "gpt", "anthropic");
        other.requests(&m, 404).inc();
        let (i, o) = other.tokens(&m);
        i.inc_by(3);
        o.inc_by(4);
        let chat = ("route", "/v1/chat/completions");
        let gpt = ("model", "gpt");
        let ok = [chat, gpt, ("provider", "openai"), ("status_class", "2xx")];
        assert_eq!(value(&m, "pylon_requests_total", &ok), 2.0);
        let failed = [chat, gpt, ("provider", "openai"), ("status_class", "5xx")];
        assert_eq!(value(&m, "pylon_requests_total", &failed), 1.0);
        let other = [
            chat,
            gpt,
            ("provider", "anthropic"),
            ("status_class", "4xx"),
        ];
        assert_eq!(value(&m, "pylon_requests_total", &other), 1.0);
        assert_eq!(
            value(&m, "pylon_request_duration_seconds", &[chat, gpt]),
            3.0
        );
        let input = [gpt, ("provider", "anthropic"), ("type", "input")];
        assert_eq!(value(&m, "pylon_tokens_total", &input), 3.0);
        // No tokens were reported for openai: no series made for them.
        let none = [gpt, ("provider", "openai"), ("type", "input")];
        assert_eq!(value(&m, "pylon_tokens_total", &none), 0.0);
        assert!(Arc::ptr_eq(
            &m.request_series("/v1/chat/completions", "gpt", "openai"),
            &m.request_series("/v1/chat/completions", "gpt", "openai"),
        ));
    }
}
