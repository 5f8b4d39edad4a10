//! What one dashboard stream pushes: rates over the last second from the metrics registry,
//! per model, breakers, rollouts, flags, alerts, and the spend figures the people who pay look
//! at (read from the store at most every two seconds, shared by every stream).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pylon_store::{Bucket, Dim};
use serde_json::{json, Value};

use crate::alerts::series::{self, Sample};
use crate::keys::unix_now_ms as now_ms;
use crate::Control;

/// How often the store-backed (executive) figures are read again: with the 1 s push, a number
/// on screen is at most this plus the ledger's flush old.
const EXECUTIVE: Duration = Duration::from_secs(2);

/// The executive figures, shared by every dashboard stream: the store is read once per period
/// however many people watch, and one reader at a time (the others show the last figures).
#[derive(Default)]
pub(crate) struct Executive {
    last: std::sync::Mutex<Option<(Instant, Value)>>,
    reading: tokio::sync::Mutex<()>,
}

impl Executive {
    fn get(&self, fresh_within: Duration) -> Option<Value> {
        let g = self.last.lock().ok()?;
        g.as_ref()
            .filter(|(at, _)| at.elapsed() < fresh_within)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, v: Value) {
        if let Ok(mut g) = self.last.lock() {
            *g = Some((Instant::now(), v));
        }
    }
}

/// One stream's state between pushes.
pub(super) struct Live {
    control: Arc<Control>,
    prev: Option<Sample>,
}

/// The figures of one series for a set of labels (`null` where there is nothing to say).
fn figures(prev: &Sample, cur: &Sample, labels: &BTreeMap<String, String>) -> Value {
    let v = |s: &str| series::read(s, labels, prev, cur).map(|r| r.value);
    json!({
        "rps": v("requests"),
        "error_rate": v("error_rate"),
        "p50_ms": v("latency_p50").map(|s| s * 1000.0),
        "p95_ms": v("latency_p95").map(|s| s * 1000.0),
        "ttft_p95_ms": v("ttft_p95").map(|s| s * 1000.0),
        "tokens_per_s": v("tokens"),
        "cost_per_hour": v("cost"),
    })
}

impl Live {
    pub(super) fn new(control: Arc<Control>) -> Live {
        Live {
            control,
            prev: None,
        }
    }

    /// The next push, as JSON text.
    pub(super) async fn next(&mut self) -> String {
        let now = now_ms();
        let gw = &self.control.gateway;
        let cur = Sample::of(&gw.gather_metrics(), now);
        let prev = self
            .prev
            .replace(cur.clone())
            .unwrap_or_else(|| cur.clone());
        let none = BTreeMap::new();
        let mut overview = figures(&prev, &cur, &none);
        let extra = |s: &str| series::read(s, &none, &prev, &cur).map(|r| r.value);
        overview["cache_hit_rate"] = json!(extra("cache_hit_rate"));
        overview["open_streams"] = json!(extra("open_streams"));
        overview["cache_saved_usd"] = json!(cur.total("pylon_cache_cost_saved_usd_total"));
        overview["requests_total"] = json!(cur.total("pylon_requests_total"));
        let models: Vec<Value> = cur
            .label_values("pylon_requests_total", "model")
            .into_iter()
            .filter(|m| m != "-")
            .map(|m| {
                let labels = BTreeMap::from([("model".to_owned(), m.clone())]);
                let mut f = figures(&prev, &cur, &labels);
                f["model"] = json!(m);
                f
            })
            .collect();
        let breakers: Vec<Value> = cur
            .gauges("pylon_circuit_breaker_state")
            .into_iter()
            .map(|(labels, v)| {
                let state = match v as i64 {
                    0 => "closed",
                    1 => "half-open",
                    _ => "open",
                };
                json!({"model": labels.get("model"), "target": labels.get("target"), "state": state})
            })
            .collect();
        let c = &self.control;
        // Each rollout with its arms side by side and the judge's latest verdicts.
        let mut rollouts = Vec::new();
        for r in c.rollouts.list().await.unwrap_or_default() {
            let name = r["name"].as_str().unwrap_or_default().to_owned();
            let mut full = c.rollouts.status(&name).await.unwrap_or(r);
            if let Some(v) = full["verdicts"].as_array_mut() {
                v.truncate(3);
            }
            rollouts.push(full);
        }
        let alerts = c.alerts.list().await.unwrap_or_default();
        let flags: Vec<Value> = c
            .flags
            .list()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|f| {
                json!({
                    "key": f["key"], "source": f["source"],
                    "state": f["definition"]["state"],
                    "default": f["definition"]["defaultVariant"],
                    "variants": f["definition"]["variants"],
                    "definition": f["definition"],
                })
            })
            .collect();
        let executive = self.executive().await;
        json!({
            "at": now,
            "overview": overview,
            "models": models,
            "breakers": breakers,
            "rollouts": rollouts,
            "flags": flags,
            "alerts": alerts,
            "executive": executive,
        })
        .to_string()
    }

    /// Month-to-date spend per team and key with its projection to the month's end, active
    /// keys today, and each SLO's error budget left; read from the store every two seconds.
    async fn executive(&mut self) -> Value {
        let shared = &self.control.executive;
        if let Some(v) = shared.get(EXECUTIVE) {
            return v;
        }
        let Ok(_reading) = shared.reading.try_lock() else {
            return shared.get(Duration::MAX).unwrap_or(Value::Null);
        };
        let now = (now_ms() / 1000) as i64;
        let day = now - now.rem_euclid(86_400);
        let month = month_start(now);
        let elapsed = (now - month).max(1) as f64;
        let month_len = days_in_month(now) as f64 * 86_400.0;
        let store = &self.control.store;
        let spend = |rows: Vec<pylon_store::UsageBucket>| -> Vec<Value> {
            let mut v: Vec<Value> = rows
                .into_iter()
                .map(|r| {
                    json!({
                        "id": r.keys.first(), "spent_usd": r.cost_usd, "requests": r.requests,
                        "projected_usd": r.cost_usd / elapsed * month_len,
                        "cost_per_request_usd": r.cost_usd / r.requests.max(1) as f64,
                    })
                })
                .collect();
            v.sort_by(|a, b| {
                b["spent_usd"]
                    .as_f64()
                    .partial_cmp(&a["spent_usd"].as_f64())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            v.truncate(20);
            v
        };
        let keys = store
            .usage_report(&[Dim::Key], Bucket::All, month, now + 3600)
            .await
            .unwrap_or_default();
        let teams = store
            .usage_report(&[Dim::Team], Bucket::All, month, now + 3600)
            .await
            .unwrap_or_default();
        let days = store
            .usage_report(&[], Bucket::Day, now - 14 * 86_400, now + 3600)
            .await
            .unwrap_or_default();
        let active_today = store
            .usage_report(&[Dim::Key], Bucket::All, day, now + 3600)
            .await
            .map_or(0, |r| r.len());
        let total: f64 = keys.iter().map(|k| k.cost_usd).sum();
        let v = json!({
            "spent_month_usd": total,
            "projected_month_usd": total / elapsed * month_len,
            "active_keys_today": active_today,
            "keys": spend(keys),
            "teams": spend(teams),
            "daily": days.iter().map(|d| json!({
                "day": d.bucket, "requests": d.requests, "errors": d.errors, "cost_usd": d.cost_usd,
                "cost_per_request_usd": d.cost_usd / d.requests.max(1) as f64,
                "availability": 1.0 - d.errors as f64 / d.requests.max(1) as f64,
            })).collect::<Vec<_>>(),
        });
        shared.put(v.clone());
        v
    }
}

/// Unix seconds at the start of the month holding `t` (UTC).
fn month_start(t: i64) -> i64 {
    let day = pylon_types::day::civil_day(t);
    // `YYYY-MM-DD`: back to the first.
    let dom: i64 = day.get(8..10).and_then(|d| d.parse().ok()).unwrap_or(1);
    let midnight = t - t.rem_euclid(86_400);
    midnight - (dom - 1) * 86_400
}

fn days_in_month(t: i64) -> i64 {
    let start = month_start(t);
    // The first of next month is 28 to 31 days on.
    (28..=31)
        .find(|d| pylon_types::day::civil_day(start + d * 86_400).get(8..10) == Some("01"))
        .unwrap_or(30)
}
