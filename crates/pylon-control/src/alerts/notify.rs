//! What receivers are sent, in the formats their tools expect: Alertmanager's webhook (version
//! 4), an Alertmanager's `POST /api/v2/alerts`, a Slack incoming webhook, PagerDuty Events v2.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use pylon_config::ReceiverKind;
use serde_json::{json, Value};

/// One alert as notified.
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    pub name: String,
    pub firing: bool,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_ms: u64,
    /// When it resolved; while firing, when the receiver may consider it gone unless resent.
    pub ends_ms: u64,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Notice {
    /// A stable identity for deduplication (the labels').
    pub fn fingerprint(&self) -> String {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for (k, v) in &self.labels {
            for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    fn status(&self) -> &'static str {
        if self.firing {
            "firing"
        } else {
            "resolved"
        }
    }

    /// The alert in Alertmanager's shape (both its webhook and its API use it).
    fn alertmanager(&self, webhook: bool) -> Value {
        let mut a = json!({
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": rfc3339(self.starts_ms),
            "endsAt": rfc3339(self.ends_ms),
            "generatorURL": format!("/admin/v1/alerts/{}", self.name),
        });
        if webhook {
            a["status"] = json!(self.status());
            a["fingerprint"] = json!(self.fingerprint());
            if self.firing {
                // Alertmanager's webhook sends the zero time for an alert still firing.
                a["endsAt"] = json!("0001-01-01T00:00:00Z");
            }
        }
        a
    }
}

/// Labels every notice shares, and annotations every notice shares.
fn common(notices: &[Notice]) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let shared = |pick: fn(&Notice) -> &BTreeMap<String, String>| {
        let mut out = notices.first().map(|n| pick(n).clone()).unwrap_or_default();
        out.retain(|k, v| notices.iter().all(|n| pick(n).get(k) == Some(v)));
        out
    };
    (shared(|n| &n.labels), shared(|n| &n.annotations))
}

/// What one message to a receiver becomes: (URL, body) requests — one for most receivers, one
/// per alert for PagerDuty (its events are per alert).
pub(crate) fn requests(
    kind: ReceiverKind,
    receiver: &str,
    url: &str,
    routing_key: Option<&str>,
    group: &BTreeMap<String, String>,
    notices: &[Notice],
) -> Vec<(String, Value)> {
    let firing = notices.iter().any(|n| n.firing);
    let status = if firing { "firing" } else { "resolved" };
    match kind {
        ReceiverKind::Webhook => {
            let (labels, annotations) = common(notices);
            let key: Vec<String> = group.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            vec![(
                url.to_owned(),
                json!({
                    "version": "4",
                    "groupKey": format!("{{}}:{{{}}}", key.join(",")),
                    "truncatedAlerts": 0,
                    "status": status,
                    "receiver": receiver,
                    "groupLabels": group,
                    "commonLabels": labels,
                    "commonAnnotations": annotations,
                    "externalURL": "",
                    "alerts": notices.iter().map(|n| n.alertmanager(true)).collect::<Vec<_>>(),
                }),
            )]
        }
        ReceiverKind::Alertmanager => vec![(
            format!("{}/api/v2/alerts", url.trim_end_matches('/')),
            Value::Array(notices.iter().map(|n| n.alertmanager(false)).collect()),
        )],
        ReceiverKind::Slack => {
            let lines: Vec<String> = notices
                .iter()
                .map(|n| {
                    let summary = n.annotations.get("summary").unwrap_or(&n.name);
                    let mut line = format!(
                        "[{}] {} ({}): {summary}",
                        n.status().to_uppercase(),
                        n.name,
                        n.labels.get("severity").map_or("warning", String::as_str)
                    );
                    if let Some(r) = n.annotations.get("runbook") {
                        line.push_str(&format!("\nRunbook: {r}"));
                    }
                    line
                })
                .collect();
            vec![(url.to_owned(), json!({"text": lines.join("\n")}))]
        }
        ReceiverKind::Pagerduty => notices
            .iter()
            .map(|n| {
                let severity = match n.labels.get("severity").map(String::as_str) {
                    Some("critical") => "critical",
                    Some("info") => "info",
                    _ => "warning",
                };
                (
                    url.to_owned(),
                    json!({
                        "routing_key": routing_key.unwrap_or_default(),
                        "event_action": if n.firing { "trigger" } else { "resolve" },
                        "dedup_key": n.fingerprint(),
                        "payload": {
                            "summary": n.annotations.get("summary").cloned().unwrap_or_else(|| n.name.clone()),
                            "source": "pylon",
                            "severity": severity,
                            "timestamp": rfc3339(n.starts_ms),
                            "custom_details": {"labels": n.labels, "annotations": n.annotations},
                        },
                    }),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(firing: bool) -> Notice {
        Notice {
            name: "chat-errors".into(),
            firing,
            labels: BTreeMap::from([
                ("alertname".into(), "chat-errors".into()),
                ("severity".into(), "critical".into()),
                ("model".into(), "chat".into()),
            ]),
            annotations: BTreeMap::from([("summary".into(), "chat fails".into())]),
            starts_ms: 1_700_000_000_000,
            ends_ms: 1_700_000_060_000,
        }
    }

    fn request(
        kind: ReceiverKind,
        receiver: &str,
        url: &str,
        key: Option<&str>,
        n: &Notice,
    ) -> (String, Value) {
        let group = BTreeMap::from([("alertname".to_owned(), n.name.clone())]);
        requests(kind, receiver, url, key, &group, std::slice::from_ref(n)).remove(0)
    }

    #[test]
    fn each_receiver_gets_its_own_format() {
        let (url, v4) = request(
            ReceiverKind::Webhook,
            "oncall",
            "http://h/hook",
            None,
            &notice(true),
        );
        assert_eq!(v4["groupLabels"]["alertname"], "chat-errors");
        assert_eq!(v4["commonLabels"]["model"], "chat");
        assert_eq!(url, "http://h/hook");
        assert_eq!(v4["version"], "4");
        assert_eq!(v4["status"], "firing");
        assert_eq!(v4["alerts"][0]["labels"]["model"], "chat");
        assert_eq!(v4["alerts"][0]["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v4["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
        let (url, am) = request(
            ReceiverKind::Alertmanager,
            "am",
            "http://am:9093/",
            None,
            &notice(false),
        );
        assert_eq!(url, "http://am:9093/api/v2/alerts");
        assert_eq!(am[0]["endsAt"], "2023-11-14T22:14:20.000Z");
        let (_, pd) = request(
            ReceiverKind::Pagerduty,
            "pd",
            "http://pd",
            Some("rk"),
            &notice(false),
        );
        assert_eq!(
            (pd["event_action"].as_str(), pd["routing_key"].as_str()),
            (Some("resolve"), Some("rk"))
        );
        assert_eq!(pd["dedup_key"], json!(notice(true).fingerprint()));
        let (_, slack) = request(ReceiverKind::Slack, "s", "http://s", None, &notice(true));
        assert!(slack["text"]
            .as_str()
            .unwrap()
            .starts_with("[FIRING] chat-errors (critical): chat fails"));
    }
}
