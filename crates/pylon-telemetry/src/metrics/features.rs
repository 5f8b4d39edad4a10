//! The metrics of features only some deployments turn on: the semantic cache and rollouts.

use prometheus::{
    CounterVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::{
    counter, float_counter, gauge, histogram, single_counter, DEPENDENCY_BUCKETS, REQUEST_BUCKETS,
};

/// What the semantic cache decided, and what its judge cost.
pub struct SemanticMetrics {
    /// Hits answered by a similar question.
    pub hits: IntCounter,
    /// Time of the vector search.
    pub lookup: prometheus::Histogram,
    /// Candidates above the threshold that were not served, by reason (a guard's class,
    /// `blocked` by feedback, `judge` refused, `judge_error`).
    pub rejected: IntCounterVec,
    /// Questions not compared at all (`too_long`, `no_embedding`).
    pub skipped: IntCounterVec,
    /// Judge calls by decision (`accept`, `reject`, `error`), and decisions reused from memory.
    pub judge: IntCounterVec,
    pub judge_memo: IntCounter,
    pub judge_seconds: prometheus::Histogram,
    pub judge_cost: prometheus::Counter,
    /// Hits reported wrong through `POST /admin/v1/cache/feedback`.
    pub wrong: IntCounter,
}

/// Rollouts: what each arm served, its weight and state.
pub struct RolloutMetrics {
    /// Requests by rollout, arm (`stable`, `candidate`) and outcome (`ok`, `error`: a
    /// server-side failure). Shadow copies count as the candidate's.
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    /// Time to first token per arm (streams).
    pub ttft: HistogramVec,
    pub cost: CounterVec,
    /// The candidate's share of traffic, in percent.
    pub weight: prometheus::GaugeVec,
    /// 1 for the rollout's current state, 0 for the others.
    pub state: IntGaugeVec,
    /// Verdicts by rollout and outcome (`pass`, `fail`, `inconclusive`).
    pub verdicts: IntCounterVec,
}

impl RolloutMetrics {
    pub(super) fn new(r: &Registry) -> Result<RolloutMetrics, prometheus::Error> {
        let weight = prometheus::GaugeVec::new(
            Opts::new(
                "pylon_rollout_weight_percent",
                "The candidate's share of a rollout's traffic.",
            ),
            &["rollout"],
        )?;
        r.register(Box::new(weight.clone()))?;
        Ok(RolloutMetrics {
            requests: counter(
                r,
                "pylon_rollout_requests_total",
                "Requests a rollout's arms served.",
                &["rollout", "arm", "outcome"],
            )?,
            duration: histogram(
                r,
                "pylon_rollout_request_duration_seconds",
                "Request duration per rollout arm.",
                &["rollout", "arm"],
                REQUEST_BUCKETS,
            )?,
            ttft: histogram(
                r,
                "pylon_rollout_time_to_first_token_seconds",
                "Time to first token per rollout arm (streams).",
                &["rollout", "arm"],
                REQUEST_BUCKETS,
            )?,
            cost: float_counter(
                r,
                "pylon_rollout_cost_usd_total",
                "Spend per rollout arm, in US dollars.",
                &["rollout", "arm"],
            )?,
            weight,
            state: gauge(
                r,
                "pylon_rollout_state",
                "1 for a rollout's current state.",
                &["rollout", "state"],
            )?,
            verdicts: counter(
                r,
                "pylon_rollout_verdicts_total",
                "The rollout judge's verdicts.",
                &["rollout", "outcome"],
            )?,
        })
    }
}

impl SemanticMetrics {
    pub(super) fn new(r: &Registry) -> Result<SemanticMetrics, prometheus::Error> {
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = prometheus::Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            )?;
            r.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let judge_cost = prometheus::Counter::new(
            "pylon_cache_semantic_judge_cost_usd_total",
            "Spend on semantic-cache judge calls, in US dollars.",
        )?;
        r.register(Box::new(judge_cost.clone()))?;
        Ok(SemanticMetrics {
            hits: single_counter(
                r,
                "pylon_cache_semantic_hits_total",
                "Cache hits answered by a similar question.",
            )?,
            lookup: histogram(
                "pylon_cache_semantic_lookup_seconds",
                "Vector search time of the semantic cache.",
                DEPENDENCY_BUCKETS,
            )?,
            rejected: counter(
                r,
                "pylon_cache_semantic_rejected_total",
                "Similar cached questions not served, by reason.",
                &["reason"],
            )?,
            skipped: counter(
                r,
                "pylon_cache_semantic_skipped_total",
                "Questions the semantic cache did not compare, by reason.",
                &["reason"],
            )?,
            judge: counter(
                r,
                "pylon_cache_semantic_judge_total",
                "Semantic-cache judge calls by decision.",
                &["decision"],
            )?,
            judge_memo: single_counter(
                r,
                "pylon_cache_semantic_judge_memo_total",
                "Judge decisions reused from memory instead of a call.",
            )?,
            judge_seconds: histogram(
                "pylon_cache_semantic_judge_seconds",
                "Time of semantic-cache judge calls.",
                REQUEST_BUCKETS,
            )?,
            judge_cost,
            wrong: single_counter(
                r,
                "pylon_cache_semantic_wrong_total",
                "Semantic hits reported wrong by feedback.",
            )?,
        })
    }
}
