//! Who is told what, and when: groups of alerts per receiver (wait before the first message,
//! batch changes, repeat what still fires), silences, inhibition (a firing critical hides the
//! warnings about the same thing), acknowledgement, and escalation steps. Pure: the caller
//! passes the clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// Labels of an alert.
pub type Labels = BTreeMap<String, String>;

/// An alert as the dispatcher sees it each round.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub name: String,
    pub labels: Labels,
    pub firing: bool,
    /// Acknowledged until then (ms): not repeated, not escalated.
    pub acked_until: Option<u64>,
}

/// A silence: alerts whose labels match every matcher are not notified between start and end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Labels,
    pub starts_ms: u64,
    pub ends_ms: u64,
}

/// Whether every matcher is among `labels`.
pub fn matches(matchers: &Labels, labels: &Labels) -> bool {
    matchers.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a silence in force at `now` covers `labels`.
pub fn silenced(labels: &Labels, silences: &[Silence], now: u64) -> bool {
    silences
        .iter()
        .any(|s| s.starts_ms <= now && now < s.ends_ms && matches(&s.matchers, labels))
}

/// Labels that name an alert rather than what it is about.
const META: [&str; 2] = ["alertname", "severity"];

/// Whether a firing critical alert about the same thing (the same values of every label it
/// carries besides its name and severity) hides this warning or info.
pub fn inhibited(alert: &Alert, all: &[Alert]) -> bool {
    if alert.labels.get("severity").map(String::as_str) == Some("critical") {
        return false;
    }
    all.iter().any(|c| {
        c.firing
            && c.name != alert.name
            && c.labels.get("severity").map(String::as_str) == Some("critical")
            && c.labels
                .iter()
                .filter(|(k, _)| !META.contains(&k.as_str()))
                .all(|(k, v)| alert.labels.get(k) == Some(v))
    })
}

/// A receiver's grouping and timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    /// Labels whose values make a group (`alertname` by default).
    pub by: Vec<String>,
    /// Before a new group's first message, so alerts firing together go out together.
    pub wait_ms: u64,
    /// Between messages about a group that changed.
    pub interval_ms: u64,
    /// Before a group that did not change is sent again while it fires.
    pub repeat_ms: u64,
}

impl Default for Grouping {
    fn default() -> Self {
        Grouping {
            by: vec!["alertname".to_owned()],
            wait_ms: 30_000,
            interval_ms: 300_000,
            repeat_ms: 4 * 3_600_000,
        }
    }
}

/// One message due to a receiver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub receiver: String,
    /// The group's identity (`by` labels and values).
    pub group: Labels,
    pub firing: Vec<String>,
    pub resolved: Vec<String>,
}

/// A group's identity: its receiver and its `by` labels' values.
type GroupId = (String, Vec<(String, String)>);

#[derive(Debug, Default)]
struct Group {
    /// Alerts in the group: firing now, and whether the last message said so.
    members: BTreeMap<String, (bool, Option<bool>)>,
    first_ms: u64,
    sent_ms: Option<u64>,
}

/// The groups of every receiver.
#[derive(Debug, Default)]
pub struct Dispatcher {
    groups: HashMap<GroupId, Group>,
}

impl Dispatcher {
    /// One round: `routed` lists, for each receiver and its grouping, the alerts routed to it
    /// that are neither silenced nor inhibited (firing or just resolved); the messages due.
    pub fn step(&mut self, now: u64, routed: &[(String, Grouping, Vec<Alert>)]) -> Vec<Message> {
        let mut seen: BTreeSet<GroupId> = BTreeSet::new();
        // (group, alert) pairs offered this round.
        let mut present: BTreeSet<(GroupId, String)> = BTreeSet::new();
        for (receiver, grouping, alerts) in routed {
            for a in alerts {
                let key: Vec<(String, String)> = grouping
                    .by
                    .iter()
                    .map(|l| (l.clone(), a.labels.get(l).cloned().unwrap_or_default()))
                    .collect();
                let id = (receiver.clone(), key);
                seen.insert(id.clone());
                present.insert((id.clone(), a.name.clone()));
                let g = self.groups.entry(id).or_insert_with(|| Group {
                    first_ms: now,
                    ..Group::default()
                });
                g.members
                    .entry(a.name.clone())
                    .or_insert((a.firing, None))
                    .0 = a.firing;
            }
        }
        let mut out = Vec::new();
        let settings: HashMap<&str, &Grouping> =
            routed.iter().map(|(r, g, _)| (r.as_str(), g)).collect();
        let acked: BTreeSet<&str> = routed
            .iter()
            .flat_map(|(_, _, a)| a)
            .filter(|a| a.acked_until.is_some_and(|u| now < u))
            .map(|a| a.name.as_str())
            .collect();
        self.groups.retain(|(receiver, key), g| {
            // Members no longer routed here (gone, silenced, inhibited) are dropped quietly.
            if !seen.contains(&(receiver.clone(), key.clone())) {
                return false;
            }
            let Some(grouping) = settings.get(receiver.as_str()) else {
                return false;
            };
            // Members no longer offered (silenced, inhibited, gone) leave without a word.
            let id = (receiver.clone(), key.clone());
            g.members
                .retain(|n, _| present.contains(&(id.clone(), n.clone())));
            let changed = g.members.values().any(|(f, told)| *told != Some(*f));
            let unacked_firing = g
                .members
                .iter()
                .any(|(n, (f, _))| *f && !acked.contains(n.as_str()));
            let due = match g.sent_ms {
                None => changed && now >= g.first_ms + grouping.wait_ms,
                Some(s) if changed => now >= s + grouping.interval_ms,
                Some(s) => unacked_firing && now >= s + grouping.repeat_ms,
            };
            if due {
                let firing: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, (f, _))| *f)
                    .map(|(n, _)| n.clone())
                    .collect();
                let resolved: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, (f, told))| !*f && *told == Some(true))
                    .map(|(n, _)| n.clone())
                    .collect();
                if !firing.is_empty() || !resolved.is_empty() {
                    out.push(Message {
                        receiver: receiver.clone(),
                        group: key.iter().cloned().collect(),
                        firing,
                        resolved,
                    });
                }
                g.sent_ms = Some(now);
                for m in g.members.values_mut() {
                    m.1 = Some(m.0);
                }
                g.members.retain(|_, (f, _)| *f);
            }
            // A group whose alerts all resolved and were told is done.
            !(g.members.is_empty()
                || g.members
                    .values()
                    .all(|(f, told)| !*f && *told != Some(true)))
        });
        out.sort_by(|a, b| (&a.receiver, &a.group).cmp(&(&b.receiver, &b.group)));
        out
    }
}

impl Dispatcher {
    /// Forgets what was told about `alert`, so it is told again (an acknowledgement ran out).
    pub fn forget(&mut self, alert: &str) {
        for g in self.groups.values_mut() {
            if let Some(m) = g.members.get_mut(alert) {
                m.1 = None;
            }
        }
    }
}

/// One step of an escalation policy: after `after_ms` (from the previous step), these
/// receivers are notified.
#[derive(Debug, Clone, PartialEq)]
pub struct EscalationStep {
    pub after_ms: u64,
    pub receivers: Vec<String>,
}

/// The (round, step) an unacknowledged alert firing since `since` has reached at `now`: the
/// steps run in order, the whole policy `repeat` more times; `None` before the first step.
pub fn escalation(
    steps: &[EscalationStep],
    repeat: u32,
    since: u64,
    now: u64,
) -> Option<(u32, usize)> {
    if steps.is_empty() || now < since {
        return None;
    }
    let mut at = since;
    let mut reached = None;
    for round in 0..=repeat {
        for (i, s) in steps.iter().enumerate() {
            at += s.after_ms;
            if at > now {
                return reached;
            }
            reached = Some((round, i));
        }
    }
    reached
}

#[cfg(test)]
mod tests;
