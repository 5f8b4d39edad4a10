//! Budget notifications: when spend crosses a configured share of a budget, one JSON event per
//! threshold and period goes to the configured webhooks — once, across all instances, because
//! each event is first claimed in the store.

use std::time::Duration;

use serde_json::json;

/// Where and when to notify.
pub(crate) struct Notifier {
    thresholds: Vec<f64>,
    webhooks: Vec<String>,
    http: reqwest::Client,
}

/// One budget as checked on refresh.
pub(crate) struct Check<'a> {
    pub scope: &'static str,
    pub id: &'a str,
    pub name: &'a str,
    pub owner: &'a str,
    pub period: &'a str,
    pub period_tag: &'a str,
    pub budget_usd: f64,
    pub spent_usd: f64,
}

impl Notifier {
    pub fn new(config: &pylon_config::Budgets) -> Notifier {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Notifier {
            thresholds: config.thresholds.clone(),
            webhooks: config.webhooks.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Claims and sends the events this spend has earned.
    pub async fn check(
        &self,
        store: &pylon_store::Store,
        gateway: &pylon_proxy::Gateway,
        c: Check<'_>,
        now: i64,
    ) -> Result<(), pylon_store::StoreError> {
        if self.webhooks.is_empty() || c.budget_usd <= 0.0 {
            return Ok(());
        }
        for &t in &self.thresholds {
            if c.spent_usd < t * c.budget_usd {
                continue;
            }
            let pct = (t * 100.0).round() as i64;
            if !store
                .claim_budget_event(c.owner, c.period_tag, pct, now)
                .await?
            {
                continue;
            }
            let event = json!({
                "type": "budget.threshold",
                "scope": c.scope, "id": c.id, "name": c.name,
                "threshold": t, "spent_usd": c.spent_usd, "budget_usd": c.budget_usd,
                "period": c.period, "period_tag": c.period_tag, "at": now,
            });
            tracing::info!(target: "pylon::budget", scope = c.scope, id = c.id, threshold = t, spent_usd = c.spent_usd, "budget threshold crossed");
            for url in &self.webhooks {
                let (http, url, event) = (self.http.clone(), url.clone(), event.clone());
                gateway.spawn(async move { deliver(&http, &url, &event).await });
            }
        }
        Ok(())
    }
}

/// Posts an event (budget or rollout), retrying a few times with backoff; failures are logged.
pub(crate) async fn deliver(http: &reqwest::Client, url: &str, event: &serde_json::Value) {
    for attempt in 0..4u32 {
        match http.post(url).json(event).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                tracing::warn!(target: "pylon::webhook", url, status = %r.status(), attempt, "webhook refused the event")
            }
            Err(e) => {
                tracing::warn!(target: "pylon::webhook", url, error = %e, attempt, "webhook unreachable")
            }
        }
        tokio::time::sleep(Duration::from_millis(250 * 2u64.pow(attempt))).await;
    }
}
