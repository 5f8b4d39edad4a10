//! Telling receivers: routes and grouping, silences and inhibition, an Alertmanager's own
//! re-sends, escalation steps, and each delivery retried with its outcome stored.

use super::*;

/// A route's grouping: its own settings over those it inherits.
fn grouping(node: &AlertRoute, inherited: &dispatch::Grouping) -> dispatch::Grouping {
    let ms = |d: Option<Duration>, default: u64| d.map_or(default, |d| d.as_millis() as u64);
    dispatch::Grouping {
        by: node
            .group_by
            .clone()
            .unwrap_or_else(|| inherited.by.clone()),
        wait_ms: ms(node.group_wait, inherited.wait_ms),
        interval_ms: ms(node.group_interval, inherited.interval_ms),
        repeat_ms: ms(node.repeat_interval, inherited.repeat_ms),
    }
}

/// The receivers an alert's labels route to, each with its grouping: the deepest matching
/// routes (siblings after one with `continue`), else the node's own receiver, inherited from
/// above when it names none.
pub(super) fn route(
    node: &AlertRoute,
    labels: &BTreeMap<String, String>,
    inherited: Option<&str>,
    settings: &dispatch::Grouping,
) -> Vec<(String, dispatch::Grouping)> {
    let receiver = node
        .receiver
        .as_ref()
        .map(|r| r.get_ref().as_str())
        .or(inherited);
    let here = grouping(node, settings);
    let mut out = Vec::new();
    for child in &node.routes {
        if dispatch::matches(&child.matchers, labels) {
            out.extend(route(child, labels, receiver, &here));
            if !child.continue_ {
                break;
            }
        }
    }
    if out.is_empty() {
        out.extend(receiver.map(|r| (r.to_owned(), here)));
    }
    out
}

impl Alerts {
    /// Tells receivers what changed: acknowledgements that ran out, then each alert not
    /// silenced or inhibited through its routes — grouped (wait, interval, repeat) for most
    /// receivers, one by one and re-sent every minute for an Alertmanager (which groups
    /// itself) — and escalation steps reached by alerts nobody acknowledged.
    pub(super) async fn dispatch(&self, now: u64) -> Result<(), AlertError> {
        let rows: HashMap<String, AlertRow> = self
            .store
            .alerts()
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let silences: Vec<dispatch::Silence> = self
            .store
            .silences(now as i64)
            .await?
            .into_iter()
            .map(|s| dispatch::Silence {
                matchers: serde_json::from_str(&s.matchers).unwrap_or_default(),
                starts_ms: s.starts_at as u64,
                ends_ms: s.ends_at as u64,
                id: s.id,
            })
            .collect();
        let mut alerts = Vec::new();
        let rules = self.expanded();
        for rule in rules.iter().map(|(_, a)| a) {
            let name = rule.name.get_ref();
            let Some(row) = rows.get(name) else { continue };
            let (firing, keep) = {
                let mut all = self
                    .live
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let live = all.entry(name.clone()).or_default();
                let firing = live.life.phase == Phase::Firing;
                let keep = live
                    .resolved_at
                    .is_some_and(|at| now.saturating_sub(at) <= self.resolve_window_ms());
                (firing, keep)
            };
            if !firing && !keep {
                continue;
            }
            let mut acked_until = row.acked_until.map(|u| u as u64);
            if firing && acked_until.is_some_and(|u| u <= now) {
                // The acknowledgement ran out while the alert still fires: page again.
                let mut r = row.clone();
                r.acked_by = None;
                r.acked_until = None;
                r.updated_at = now as i64;
                self.store.put_alert(&r).await?;
                self.event(name, "ack_expired", json!({}), now).await?;
                acked_until = None;
                if let Ok(mut all) = self.live.lock() {
                    let live = all.entry(name.clone()).or_default();
                    live.escalated = None;
                    live.escalate_from = now;
                    live.sent.clear();
                }
                self.dispatcher
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .forget(name);
            }
            alerts.push((
                rule,
                dispatch::Alert {
                    name: name.clone(),
                    labels: labels_of(rule),
                    firing,
                    acked_until,
                },
            ));
        }
        let all: Vec<dispatch::Alert> = alerts.iter().map(|(_, a)| a.clone()).collect();
        let mut routed: BTreeMap<String, (dispatch::Grouping, Vec<dispatch::Alert>)> =
            BTreeMap::new();
        let mut notices: HashMap<String, Notice> = HashMap::new();
        let conf = self.conf();
        for (rule, a) in &alerts {
            if dispatch::silenced(&a.labels, &silences, now) || dispatch::inhibited(a, &all) {
                continue;
            }
            let n = self.notice(rule, a, now);
            for (receiver, grouping) in route(&conf.routing, &a.labels, None, &Default::default()) {
                let Some(r) = conf.receivers.get(&receiver) else {
                    continue;
                };
                if r.kind == ReceiverKind::Alertmanager {
                    self.to_alertmanager(r, a, &n, now);
                    continue;
                }
                routed
                    .entry(receiver)
                    .or_insert_with(|| (grouping, Vec::new()))
                    .1
                    .push(a.clone());
            }
            self.escalate(rule, a, &n, now);
            notices.insert(a.name.clone(), n);
        }
        let routed: Vec<(String, dispatch::Grouping, Vec<dispatch::Alert>)> =
            routed.into_iter().map(|(r, (g, a))| (r, g, a)).collect();
        let messages = self
            .dispatcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .step(now, &routed);
        for m in messages {
            let Some(r) = conf.receivers.get(&m.receiver) else {
                continue;
            };
            let group: Vec<Notice> = m
                .firing
                .iter()
                .chain(&m.resolved)
                .filter_map(|n| notices.get(n).cloned())
                .map(|mut n| {
                    n.firing = m.firing.contains(&n.name);
                    if !n.firing {
                        n.ends_ms = now;
                    }
                    n
                })
                .collect();
            self.send(r, &m.group, &group);
        }
        Ok(())
    }

    /// How long a resolved alert is still offered to its groups: enough for the slowest
    /// route's wait and interval to pass, so the resolve is told.
    pub(super) fn resolve_window_ms(&self) -> u64 {
        fn longest(node: &AlertRoute, inherited: &dispatch::Grouping) -> u64 {
            let g = grouping(node, inherited);
            node.routes
                .iter()
                .map(|c| longest(c, &g))
                .max()
                .unwrap_or(0)
                .max(g.wait_ms + g.interval_ms)
        }
        longest(&self.conf().routing, &dispatch::Grouping::default())
            + 3 * self.conf().every.as_millis() as u64
    }

    pub(super) fn notice(&self, rule: &Alert, a: &dispatch::Alert, now: u64) -> Notice {
        let since = self
            .live
            .lock()
            .ok()
            .and_then(|l| l.get(&a.name).map(|l| l.life.firing_since))
            .unwrap_or(now);
        let every_ms = self.conf().every.as_millis() as u64;
        Notice {
            name: a.name.clone(),
            firing: a.firing,
            labels: a.labels.clone(),
            annotations: rule.annotations.clone(),
            starts_ms: since,
            ends_ms: if a.firing {
                now + 4 * every_ms.max(ALERTMANAGER_RESEND.as_millis() as u64)
            } else {
                now
            },
        }
    }

    /// An Alertmanager gets each alert itself (it groups and repeats on its own): at once when
    /// it changes, and again every minute while it fires, or it would forget it.
    pub(super) fn to_alertmanager(
        &self,
        r: &AlertReceiver,
        a: &dispatch::Alert,
        n: &Notice,
        now: u64,
    ) {
        let due = {
            let mut all = self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let sent = &mut all.entry(a.name.clone()).or_default().sent;
            let name = r.name.get_ref();
            let due = match sent.get(name) {
                // Resolved: told once.
                _ if !a.firing => sent.remove(name).is_some(),
                Some(last) => now.saturating_sub(*last) >= ALERTMANAGER_RESEND.as_millis() as u64,
                None => true,
            };
            if due && a.firing {
                sent.insert(name.clone(), now);
            }
            due
        };
        if due {
            self.send(r, &a.labels, std::slice::from_ref(n));
        }
    }

    /// Runs an alert's escalation policy: every step reached since the last round notifies
    /// its receivers, until the alert is acknowledged or resolved.
    pub(super) fn escalate(&self, rule: &Alert, a: &dispatch::Alert, n: &Notice, now: u64) {
        let conf = self.conf();
        let Some((steps, repeat)) = rule
            .escalation
            .as_ref()
            .and_then(|e| conf.escalations.get(e.get_ref()))
        else {
            return;
        };
        if !a.firing || a.acked_until.is_some_and(|u| now < u) {
            return;
        }
        let (from, done) = {
            let all = self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.get(&a.name)
                .map_or((now, None), |l| (l.escalate_from, l.escalated))
        };
        let Some(reached) = dispatch::escalation(steps, *repeat, from, now) else {
            return;
        };
        if done == Some(reached) {
            return;
        }
        let next = |(round, step): (u32, usize)| {
            if step + 1 < steps.len() {
                (round, step + 1)
            } else {
                (round + 1, 0)
            }
        };
        let mut receivers: Vec<&String> = Vec::new();
        let mut at = done.map_or((0, 0), next);
        while at <= reached {
            for r in &steps[at.1].receivers {
                if !receivers.contains(&r) {
                    receivers.push(r);
                }
            }
            at = next(at);
        }
        if let Ok(mut all) = self.live.lock() {
            all.entry(a.name.clone()).or_default().escalated = Some(reached);
        }
        for name in receivers {
            if let Some(r) = self.conf().receivers.get(name) {
                self.send(r, &a.labels, std::slice::from_ref(n));
            }
        }
    }

    /// Delivers one message in the background, retried with backoff; the outcome is counted
    /// and stored for each alert in it.
    pub(super) fn send(
        &self,
        r: &AlertReceiver,
        group: &BTreeMap<String, String>,
        notices: &[Notice],
    ) {
        let receiver = r.name.get_ref().clone();
        let requests = notify::requests(
            r.kind,
            &receiver,
            r.url.get_ref(),
            r.routing_key.as_ref().map(|k| k.expose()),
            group,
            notices,
        );
        let names: Vec<(String, bool)> =
            notices.iter().map(|n| (n.name.clone(), n.firing)).collect();
        for (url, body) in requests {
            let (http, store, metrics, history) = (
                self.http.clone(),
                self.store.clone(),
                self.gateway.metrics().clone(),
                self.conf().history,
            );
            let (receiver, names) = (receiver.clone(), names.clone());
            self.gateway.spawn(async move {
                let outcome = deliver(&http, &url, &body).await;
                let ok = outcome.is_ok();
                metrics
                    .alert_deliveries
                    .with_label_values(&[receiver.as_str(), if ok { "ok" } else { "failed" }])
                    .inc();
                if let Err(e) = &outcome {
                    tracing::warn!(target: "pylon::alert", receiver = %receiver, error = %e, "alert receiver is down: notification not delivered");
                }
                for (alert, firing) in names {
                    let status = if firing { "firing" } else { "resolved" };
                    let detail = match &outcome {
                        Ok(attempts) => {
                            json!({"receiver": receiver, "status": status, "attempts": attempts})
                        }
                        Err(e) => json!({"receiver": receiver, "status": status, "error": e}),
                    };
                    let _ = store
                        .add_alert_event(
                            &AlertEvent {
                                at: now_ms() as i64,
                                alert,
                                kind: if ok { "notified" } else { "delivery_failed" }.into(),
                                detail: detail.to_string(),
                            },
                            history,
                        )
                        .await;
                }
            });
        }
    }
}

/// Posts one notification, retrying with backoff; the attempts it took, or why it failed.
async fn deliver(http: &reqwest::Client, url: &str, body: &Value) -> Result<u32, String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        match http.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => return Ok(attempt + 1),
            Ok(r) => last = format!("{url} answered {}", r.status()),
            Err(e) => last = format!("{url} unreachable: {e}"),
        }
        if attempt + 1 < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(text: &str) -> AlertRoute {
        #[derive(serde::Deserialize)]
        struct W {
            alert_routing: AlertRoute,
        }
        toml::from_str::<W>(text).unwrap().alert_routing
    }

    #[test]
    fn routes_match_deepest_first_and_inherit_receivers() {
        let r = routing(
            r#"
[alert_routing]
receiver = "default"
group_by = ["model"]
routes = [
  { matchers = { severity = "critical" }, receiver = "pager", continue = true, group_wait = "5s",
    routes = [ { matchers = { model = "chat" }, receiver = "chat-team" } ] },
  { matchers = { severity = "critical" }, receiver = "slack" },
  { matchers = { model = "embed" } },
]
"#,
        );
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        let names = |labels: &[(&str, &str)]| -> Vec<String> {
            route(&r, &l(labels), None, &Default::default())
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        };
        assert_eq!(names(&[("severity", "warning")]), ["default"]);
        assert_eq!(
            names(&[("severity", "critical"), ("model", "chat")]),
            ["chat-team", "slack"]
        );
        assert_eq!(names(&[("severity", "critical")]), ["pager", "slack"]);
        assert_eq!(
            names(&[("severity", "info"), ("model", "embed")]),
            ["default"],
            "a route without a receiver inherits its parent's"
        );
        // Grouping is inherited too, each route overriding what it sets.
        let routed = route(
            &r,
            &l(&[("severity", "critical"), ("model", "chat")]),
            None,
            &Default::default(),
        );
        assert_eq!(routed[0].1.wait_ms, 5_000);
        assert_eq!(routed[0].1.by, ["model"]);
        assert_eq!(routed[1].1.wait_ms, 30_000);
    }
}
