//! The usage ledger: drains the data plane's usage queue into daily aggregates in the store,
//! in batches, so the request path never waits on a write.

use std::collections::HashMap;
use std::time::Duration;

use pylon_proxy::UsageEvent;
use pylon_store::{Store, UsageDelta};
use pylon_types::day::civil_day;
use tokio::sync::mpsc;

/// Most distinct (day, key, model) groups kept while the store is unreachable.
const MAX_PENDING: usize = 100_000;

/// Drains the queue every quarter second (never woken per event: that would cost the request
/// path a cross-thread wake-up each) and writes the aggregates every `every`.
pub async fn run(store: Store, mut rx: mpsc::Receiver<UsageEvent>, every: Duration) {
    let mut pending: HashMap<(String, String, String), UsageDelta> = HashMap::new();
    let drain_every = Duration::from_millis(250).min(every);
    let mut tick = tokio::time::interval(drain_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        loop {
            match rx.try_recv() {
                Ok(e) => add(&mut pending, e),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    flush(&store, &mut pending).await;
                    return;
                }
            }
        }
        if last_flush.elapsed() >= every {
            flush(&store, &mut pending).await;
            last_flush = tokio::time::Instant::now();
        }
    }
}

fn add(pending: &mut HashMap<(String, String, String), UsageDelta>, e: UsageEvent) {
    let day = civil_day(e.at);
    if pending.len() >= MAX_PENDING
        && !pending.contains_key(&(day.clone(), e.key_id.clone(), e.model.clone()))
    {
        tracing::warn!(target: "pylon::usage", "usage backlog full (store unreachable?): dropping an event");
        return;
    }
    let d = pending
        .entry((day.clone(), e.key_id.clone(), e.model.clone()))
        .or_insert_with(|| UsageDelta {
            day,
            key_id: e.key_id,
            team_id: e.team_id.unwrap_or_default(),
            model: e.model,
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
        });
    d.requests += 1;
    d.input_tokens += e.input_tokens as i64;
    d.output_tokens += e.output_tokens as i64;
    d.cost_usd += e.cost_usd;
}

async fn flush(store: &Store, pending: &mut HashMap<(String, String, String), UsageDelta>) {
    if pending.is_empty() {
        return;
    }
    let batch: Vec<UsageDelta> = pending.values().cloned().collect();
    match store.add_usage(&batch).await {
        Ok(()) => pending.clear(),
        // Kept and retried at the next tick; aggregates keep the backlog small.
        Err(e) => {
            tracing::warn!(target: "pylon::usage", error = %e, groups = batch.len(), "could not write usage; will retry")
        }
    }
}
