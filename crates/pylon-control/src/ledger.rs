//! The ledger: drains the data plane's request queue into the store in batches — request-log
//! rows with their hourly rollups and error groups, and the daily usage that budgets read — so
//! the request path never waits on a write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pylon_proxy::{Gateway, RequestEvent, UsageTotal};
use pylon_store::{HourlyTotal, RequestRow, Store, UsageDelta};
use pylon_telemetry::Metrics;
use pylon_types::day::civil_day;
use tokio::sync::{mpsc, watch};

/// Most distinct (day, key, model) usage groups kept while the store is unreachable.
const MAX_PENDING_GROUPS: usize = 100_000;
/// Rows are written as soon as this many are pending, not only every `flush`: a second of rows
/// under load (tens of thousands) held at once was most of the gateway's memory under load.
/// Fewer, larger transactions cost the SQLite thread less per row (each commit rewrites the
/// index pages it touched); 4,096 rows are a few MiB.
const WRITE_AT: usize = 4_096;
/// The queue is drained at least this often.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// How the ledger runs.
pub(crate) struct Settings {
    /// Write request-log rows (rollups and usage are written either way).
    pub rows: bool,
    /// Write what is pending this often: the most a crash loses.
    pub flush: Duration,
    /// Rows held while the store is slow or down; beyond that they are dropped and counted.
    pub max_rows: usize,
}

/// Pending writes.
#[derive(Default)]
struct Pending {
    /// Daily usage by day number, key and model: looked up by reference, so an event of a
    /// group already pending allocates nothing (one event per request reaches this thread).
    usage: HashMap<i64, HashMap<String, HashMap<String, UsageDelta>>>,
    /// Groups in `usage`.
    usage_groups: usize,
    rows: Vec<RequestRow>,
    /// Rollups of requests whose events overflowed the queue (no rows).
    rollups: Vec<HourlyTotal>,
}

/// Drains the queue every `flush / 4` or 50 ms (never woken per event: that would cost the
/// request path a cross-thread wake-up each) and writes every `flush`, or as soon as `WRITE_AT`
/// rows are pending while the store keeps up. On `stop`, drains and writes what is left, then
/// returns.
pub(crate) async fn run(
    store: Store,
    gateway: Arc<Gateway>,
    mut rx: mpsc::Receiver<RequestEvent>,
    settings: Settings,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending = Pending::default();
    let drain = (settings.flush / 4).clamp(Duration::from_millis(10), DRAIN_EVERY);
    let mut tick = tokio::time::interval(drain);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = tokio::time::Instant::now();
    // False after a failed write: then only the `flush` interval retries, not every event.
    let mut keeping_up = true;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let mut closed = false;
        let mut drained = 0u32;
        loop {
            match rx.try_recv() {
                Ok(e) => {
                    add(&mut pending, e, &settings, &metrics);
                    drained += 1;
                    // Thousands of events in one go would hold this worker for milliseconds,
                    // and a request waiting behind it on the same worker would see that.
                    if drained.is_multiple_of(256) {
                        tokio::task::yield_now().await;
                    }
                    if keeping_up && pending.rows.len() >= WRITE_AT {
                        keeping_up = flush(&store, &mut pending, &settings, &metrics).await;
                        last_flush = tokio::time::Instant::now();
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        for t in gateway.take_usage_overflow() {
            add_usage(&mut pending, Spent::from(&t));
            add_rollup(&mut pending, t);
        }
        if stopping || closed || last_flush.elapsed() >= settings.flush {
            keeping_up = flush(&store, &mut pending, &settings, &metrics).await;
            last_flush = tokio::time::Instant::now();
        }
        if stopping || closed {
            return;
        }
    }
}

/// Adds a group of requests that have no rows to the pending hourly rollups.
fn add_rollup(p: &mut Pending, t: UsageTotal) {
    if p.rollups.len() < MAX_PENDING_GROUPS {
        p.rollups.push(HourlyTotal {
            hour: t.at_ms.div_euclid(3_600_000) * 3600,
            key_id: t.key_id,
            team_id: t.team_id.unwrap_or_default(),
            model: t.model,
            provider: t.provider.unwrap_or_default(),
            requests: t.requests as i64,
            errors: t.errors as i64,
            input_tokens: t.input_tokens as i64,
            output_tokens: t.output_tokens as i64,
            cost_usd: t.cost_usd,
            latency_ms_sum: t.latency_ms_sum,
        });
    }
}

/// One request, or a group of them, to add to the daily usage.
struct Spent<'a> {
    at_ms: i64,
    key_id: &'a str,
    team_id: Option<&'a str>,
    model: &'a str,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

impl<'a> From<&'a UsageTotal> for Spent<'a> {
    fn from(t: &'a UsageTotal) -> Self {
        Spent {
            at_ms: t.at_ms,
            key_id: &t.key_id,
            team_id: t.team_id.as_deref(),
            model: &t.model,
            requests: t.requests,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            cost_usd: t.cost_usd,
        }
    }
}

/// Adds a group of requests to the pending daily usage.
fn add_usage(p: &mut Pending, t: Spent<'_>) {
    let day = t.at_ms.div_euclid(86_400_000);
    let full = p.usage_groups >= MAX_PENDING_GROUPS;
    let by_model = match p.usage.get_mut(&day).and_then(|k| k.get_mut(t.key_id)) {
        Some(m) => m,
        None if full => return drop_usage(),
        None => p
            .usage
            .entry(day)
            .or_default()
            .entry(t.key_id.to_owned())
            .or_default(),
    };
    let d = match by_model.get_mut(t.model) {
        Some(d) => d,
        None if full => return drop_usage(),
        None => {
            p.usage_groups += 1;
            by_model
                .entry(t.model.to_owned())
                .or_insert_with(|| UsageDelta {
                    day: civil_day(t.at_ms.div_euclid(1000)),
                    key_id: t.key_id.to_owned(),
                    team_id: t.team_id.unwrap_or_default().to_owned(),
                    model: t.model.to_owned(),
                    requests: 0,
                    input_tokens: 0,
                    output_tokens: 0,
                    cost_usd: 0.0,
                })
        }
    };
    d.requests += t.requests as i64;
    d.input_tokens += t.input_tokens as i64;
    d.output_tokens += t.output_tokens as i64;
    d.cost_usd += t.cost_usd;
}

fn drop_usage() {
    tracing::warn!(target: "pylon::usage", "usage backlog full (store unreachable?): dropping an event");
}

fn add(p: &mut Pending, e: RequestEvent, s: &Settings, metrics: &Metrics) {
    let failed = e.status >= 400 || e.outcome == "broken";
    add_usage(
        p,
        Spent {
            at_ms: e.at_ms,
            key_id: &e.key_id,
            team_id: e.team_id.as_deref(),
            model: &e.model,
            requests: 1,
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
            cost_usd: e.cost_usd,
        },
    );
    if p.rows.len() >= s.max_rows {
        // The row goes; the request still counts in the hourly rollups (they come from rows).
        metrics.request_log_dropped.inc();
        add_rollup(
            p,
            UsageTotal {
                at_ms: e.at_ms,
                key_id: e.key_id,
                team_id: e.team_id,
                model: e.model,
                provider: e.provider,
                requests: 1,
                errors: u64::from(failed),
                input_tokens: e.input_tokens,
                output_tokens: e.output_tokens,
                cost_usd: e.cost_usd,
                latency_ms_sum: e.latency_ms,
            },
        );
        return;
    }
    p.rows.push(RequestRow {
        at_ms: e.at_ms,
        request_id: e.request_id,
        key_id: e.key_id,
        user_id: e.user,
        team_id: e.team_id,
        route: e.route.to_owned(),
        model: e.model,
        served_model: e.served_model,
        provider: e.provider,
        status: i64::from(e.status),
        outcome: e.outcome.to_owned(),
        error_class: e.error_class.map(str::to_owned),
        error: e.error,
        latency_ms: e.latency_ms,
        ttft_ms: e.ttft_ms,
        input_tokens: e.input_tokens as i64,
        output_tokens: e.output_tokens as i64,
        cost_usd: e.cost_usd,
        cache: e.cache.map(str::to_owned),
        attempts: i64::from(e.attempts),
        fallback: e.fallback,
        stream: e.stream,
        trace_id: e.trace_id,
        cache_similarity: e.semantic.as_ref().map(|s| f64::from(s.similarity)),
        cache_matched: e.semantic.as_ref().map(|s| s.matched.clone()),
        cache_entry: e.semantic.as_ref().map(|s| s.entry.clone()),
        cache_question: e.semantic.map(|s| s.question),
    });
}

/// Times a store operation into the metrics.
pub(crate) async fn timed<T>(
    metrics: &Metrics,
    op: &'static str,
    f: impl std::future::Future<Output = Result<T, pylon_store::StoreError>>,
) -> Result<T, pylon_store::StoreError> {
    let started = Instant::now();
    let r = f.await;
    metrics
        .store_duration
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    if r.is_err() {
        metrics.store_errors.with_label_values(&[op]).inc();
    }
    r
}

/// Writes what is pending; false when something could not be written (kept for the next try).
async fn flush(store: &Store, p: &mut Pending, s: &Settings, metrics: &Metrics) -> bool {
    let mut ok = true;
    if !p.usage.is_empty() {
        let batch: Vec<UsageDelta> = p
            .usage
            .values()
            .flat_map(HashMap::values)
            .flat_map(HashMap::values)
            .cloned()
            .collect();
        match timed(metrics, "add_usage", store.add_usage(&batch)).await {
            Ok(()) => {
                p.usage.clear();
                p.usage_groups = 0;
            }
            // Kept and retried at the next flush; aggregates keep the backlog small.
            Err(e) => {
                ok = false;
                tracing::warn!(target: "pylon::usage", error = %e, groups = batch.len(), "could not write usage; will retry")
            }
        }
    }
    if !p.rows.is_empty() {
        match timed(
            metrics,
            "record_requests",
            store.record_requests(&p.rows, s.rows),
        )
        .await
        {
            Ok(()) => p.rows.clear(),
            Err(e) => {
                ok = false;
                tracing::warn!(target: "pylon::usage", error = %e, rows = p.rows.len(), "could not write the request log; will retry")
            }
        }
    }
    if !p.rollups.is_empty() {
        match timed(metrics, "add_rollups", store.add_rollups(&p.rollups)).await {
            Ok(()) => p.rollups.clear(),
            Err(e) => {
                ok = false;
                tracing::warn!(target: "pylon::usage", error = %e, groups = p.rollups.len(), "could not write overflowed rollups; will retry")
            }
        }
    }
    metrics.request_log_pending.set(p.rows.len() as i64);
    ok
}

/// Deletes request-log rows beyond the retention age and row count, every ten minutes.
pub(crate) async fn prune_loop(store: Store, cfg: pylon_config::RequestLog, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_ms = crate::keys::unix_now() * 1000;
        let before = now_ms - i64::try_from(cfg.retention.as_millis()).unwrap_or(i64::MAX);
        match timed(
            &metrics,
            "prune_requests",
            store.prune_requests(before, cfg.max_rows),
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(target: "pylon::usage", deleted = n, "request log pruned"),
            Err(e) => {
                tracing::warn!(target: "pylon::usage", error = %e, "could not prune the request log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, status: u16) -> RequestEvent {
        RequestEvent {
            at_ms: 1_700_000_000_000,
            request_id: id.into(),
            key_id: "k".into(),
            user: None,
            team_id: None,
            route: "/v1/chat/completions",
            model: "m".into(),
            served_model: None,
            provider: Some("p".into()),
            status,
            outcome: if status < 400 { "ok" } else { "error" },
            error_class: None,
            error: None,
            latency_ms: 10.0,
            ttft_ms: None,
            input_tokens: 3,
            output_tokens: 4,
            cost_usd: 0.5,
            cache: None,
            attempts: 1,
            fallback: None,
            stream: false,
            trace_id: None,
            semantic: None,
        }
    }

    #[test]
    fn a_row_dropped_past_max_rows_still_counts_in_usage_and_rollups() {
        let metrics = Metrics::new(false).unwrap();
        let settings = Settings {
            rows: true,
            flush: Duration::from_secs(1),
            max_rows: 1,
        };
        let mut p = Pending::default();
        add(&mut p, event("a", 200), &settings, &metrics);
        add(&mut p, event("b", 502), &settings, &metrics);
        assert_eq!(p.rows.len(), 1);
        assert_eq!(metrics.request_log_dropped.get(), 1);
        let usage: i64 = p
            .usage
            .values()
            .flat_map(HashMap::values)
            .flat_map(HashMap::values)
            .map(|u| u.requests)
            .sum();
        assert_eq!(usage, 2, "both requests are billed");
        assert_eq!(p.rollups.len(), 1, "the dropped row's request is rolled up");
        let r = &p.rollups[0];
        assert_eq!((r.requests, r.errors, r.cost_usd), (1, 1, 0.5));
        assert_eq!(r.provider, "p");
    }

    #[test]
    fn usage_groups_by_day_key_and_model_and_stops_growing_at_its_bound() {
        let metrics = Metrics::new(false).unwrap();
        let settings = Settings {
            rows: false,
            flush: Duration::from_secs(1),
            max_rows: 0,
        };
        let mut p = Pending::default();
        let day = 86_400_000;
        for (at_ms, key, model) in [
            (0, "k", "m"),
            (day - 1, "k", "m"),
            (day, "k", "m"),
            (0, "k2", "m"),
            (0, "k", "m2"),
        ] {
            let mut e = event("r", 200);
            (e.at_ms, e.key_id, e.model) = (at_ms, key.into(), model.into());
            add(&mut p, e, &settings, &metrics);
        }
        assert_eq!(p.usage_groups, 4);
        let first = &p.usage[&0]["k"]["m"];
        assert_eq!((first.day.as_str(), first.requests), ("1970-01-01", 2));
        assert_eq!(p.usage[&1]["k"]["m"].day, "1970-01-02");
        p.usage_groups = MAX_PENDING_GROUPS;
        let mut known = event("r", 200);
        (known.at_ms, known.key_id, known.model) = (0, "k".into(), "m".into());
        add(&mut p, known, &settings, &metrics);
        add(&mut p, event("new", 200), &settings, &metrics);
        assert_eq!(
            p.usage[&0]["k"]["m"].requests, 3,
            "a pending group still adds up"
        );
        let keys = p.usage.values().flat_map(HashMap::values).count();
        assert_eq!(keys, 3, "no group is made past the bound");
    }
}
