//! Probes and metrics endpoints: `/livez`, `/readyz`, `/startupz`, `/health`
//! (`application/health+json`, draft-inadarei-api-health-check) and `/metrics`.
//!
//! Handlers read state that background checks keep current (the control plane pings the store
//! and Redis); a probe never waits on a dependency itself.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::breaker::Breaker;

/// A certificate this close to expiry makes the health report warn (certbot renews at 30 days
/// left, ACME clients at a third of the lifetime: two weeks means renewal is failing).
const TLS_WARN: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);
use crate::gateway::Check;
use crate::gateway::Gateway;

fn read<T: Clone>(m: &Mutex<T>) -> Option<T> {
    m.lock().ok().map(|g| g.clone())
}

/// Why the gateway should not get traffic now, if it should not.
fn not_ready(gw: &Gateway) -> Option<String> {
    if gw.draining.load(Ordering::SeqCst) {
        return Some("draining: shutdown has begun".into());
    }
    if let Some(c) = read(&gw.deps.store).flatten().filter(|c| !c.ok) {
        return Some(format!(
            "store unreachable: {}",
            c.error.unwrap_or_default()
        ));
    }
    let now = Instant::now();
    let snap = gw.snapshot();
    snap.model_names.iter().find_map(|name| {
        let model = snap.models.get(name)?;
        let all_open = !model.targets.is_empty()
            && model
                .targets
                .iter()
                .all(|t| t.health.breaker(now) == Breaker::Open);
        all_open.then(|| format!("model `{name}`: every target's circuit breaker is open"))
    })
}

/// `GET /readyz`: 200 when config, store and at least one target per model are usable.
pub(crate) async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    match not_ready(&gw) {
        None => "ready".into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// `GET /startupz`: Pylon serves only after its config, store and keys are loaded.
pub(crate) async fn startupz() -> &'static str {
    "started"
}

/// `GET /metrics`: Prometheus text exposition.
pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    if let Some(c) = &gw.cache {
        c.sync().await;
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        gw.render_metrics(),
    )
        .into_response()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn worst(a: &'static str, b: &'static str) -> &'static str {
    let rank = |s| match s {
        "fail" => 2,
        "warn" => 1,
        _ => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

fn dependency(component_type: &str, c: &Check) -> Value {
    let mut v = json!({
        "componentType": component_type,
        "observedValue": (c.latency.as_secs_f64() * 1e6).round() / 1e3,
        "observedUnit": "ms",
        "status": if c.ok { "pass" } else { "fail" },
        "time": rfc3339(c.at),
    });
    if let Some(e) = &c.error {
        v["output"] = json!(e);
    }
    v
}

/// `GET /health`: every component's state in `application/health+json`.
pub(crate) async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    let now = Instant::now();
    let now_text = rfc3339(SystemTime::now());
    let mut checks = serde_json::Map::new();
    let mut status = "pass";
    if let Some(c) = read(&gw.deps.store).flatten() {
        status = worst(status, if c.ok { "pass" } else { "fail" });
        checks.insert(
            "store:responseTime".into(),
            json!([dependency("datastore", &c)]),
        );
    }
    if let Some(c) = read(&gw.deps.redis).flatten() {
        // Limits fall back to local state: degraded, not down.
        status = worst(status, if c.ok { "pass" } else { "warn" });
        let mut v = dependency("datastore", &c);
        if !c.ok {
            v["status"] = json!("warn");
        }
        checks.insert("redis:responseTime".into(), json!([v]));
    }
    let probes = read(&gw.deps.probes).unwrap_or_default();
    let mut providers: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let snap = gw.snapshot();
    for name in &snap.model_names {
        let Some(model) = snap.models.get(name) else {
            continue;
        };
        let mut usable = false;
        for t in &model.targets {
            let b = t.health.breaker(now);
            usable |= b != Breaker::Open;
            let target_status = match b {
                Breaker::Closed => "pass",
                Breaker::HalfOpen | Breaker::Open => "warn",
            };
            status = worst(status, target_status);
            let mut v = json!({
                "componentId": format!("{}/{}", t.provider.name, t.model),
                "componentType": "component",
                "observedValue": t.health.latency_us() as f64 / 1e3,
                "observedUnit": "ms",
                "status": target_status,
                "time": now_text,
                "output": format!("model `{name}`, circuit breaker {}", b.as_str()),
            });
            if let Some(p) = probes.get(&t.provider.name) {
                v["probe"] = dependency("component", p);
            }
            providers
                .entry(format!("provider:{}", t.provider.name))
                .or_default()
                .push(v);
        }
        if !usable && !model.targets.is_empty() {
            status = "fail";
        }
    }
    for (k, v) in providers {
        checks.insert(k, Value::Array(v));
    }
    if let Some((used, free)) = read(&gw.deps.disk).flatten() {
        let s = if used >= gw.deps.disk_warn {
            "warn"
        } else {
            "pass"
        };
        status = worst(status, s);
        checks.insert(
            "disk:utilization".into(),
            json!([{
                "componentType": "system",
                "observedValue": (used * 1000.0).round() / 10.0,
                "observedUnit": "percent",
                "status": s,
                "time": now_text,
                "output": format!("{} MiB free in the data dir", free / (1024 * 1024)),
            }]),
        );
    }
    if let Some(b) = read(&gw.deps.backup).flatten() {
        let age = b
            .last_ok
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
        let s = match age {
            Some(a) if a <= b.every * 2 && b.error.is_none() => "pass",
            _ => "warn",
        };
        status = worst(status, s);
        let mut v = json!({
            "componentType": "system",
            "observedValue": age.map(|a| a.as_secs()),
            "observedUnit": "seconds since the last good backup",
            "status": s,
            "time": now_text,
        });
        if let Some(e) = &b.error {
            v["output"] = json!(format!("the last backup failed: {e}"));
        } else if age.is_none() {
            v["output"] = json!("no backup yet");
        }
        checks.insert("backup:age".into(), json!([v]));
    }
    if let Some(not_after) = read(&gw.deps.tls_not_after).flatten() {
        let left = not_after.duration_since(SystemTime::now());
        let days = left.as_ref().map_or(0, |d| d.as_secs() / 86_400);
        let s = match left {
            Err(_) => "fail",
            Ok(d) if d < TLS_WARN => "warn",
            Ok(_) => "pass",
        };
        status = worst(status, s);
        let mut v = json!({
            "componentType": "system",
            "observedValue": days,
            "observedUnit": "days until the certificate expires",
            "status": s,
            "time": now_text,
        });
        if s != "pass" {
            v["output"] = json!("renew the certificate and reload (SIGHUP)");
        }
        checks.insert("tls:certificate".into(), json!([v]));
    }
    if let Some(a) = read(&gw.deps.acme).flatten() {
        let s = match (a.serving, a.failures) {
            (false, _) => "fail",
            (true, 0) => "pass",
            (true, _) => "warn",
        };
        status = worst(status, s);
        let mut v = json!({
            "componentType": "component",
            "observedValue": a.failures,
            "observedUnit": "consecutive failed orders",
            "status": s,
            "time": now_text,
        });
        let renews = a.renew_at.map(httpdate::fmt_http_date);
        v["output"] = json!(match (&a.error, a.serving) {
            (Some(e), true) => format!("renewal failed ({e}); the current certificate is served until it expires, retrying with backoff"),
            (Some(e), false) => format!("no certificate yet: {e}"),
            (None, false) => "no certificate yet: the order is in progress".to_owned(),
            (None, true) => format!("renews {}", renews.unwrap_or_default()),
        });
        checks.insert("tls:acme".into(), json!([v]));
    }
    let rss = gw.deps.rss.load(Ordering::Relaxed);
    if rss > 0 {
        checks.insert(
            "memory:utilization".into(),
            json!([{
                "componentType": "system",
                "observedValue": rss,
                "observedUnit": "bytes",
                "status": "pass",
                "time": now_text,
            }]),
        );
    }
    checks.insert(
        "limits:ipRate".into(),
        json!([{
            "componentType": "component",
            "observedValue": gw.settings().ip_rpm.unwrap_or(0),
            "observedUnit": "requests per minute per client IP (0: off)",
            "status": "pass",
            "time": now_text,
        }]),
    );
    if gw.draining.load(Ordering::SeqCst) {
        status = "fail";
    }
    let body = json!({
        "status": status,
        "version": "1",
        "releaseId": env!("CARGO_PKG_VERSION"),
        "serviceId": "pylon",
        "description": "Pylon AI gateway",
        "checks": checks,
    });
    let code = if status == "fail" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/health+json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body.to_string(),
    )
        .into_response()
}
