//! The dispatcher on an injected clock: grouping, repeat, resolve, silences, inhibition,
//! acknowledgement and escalation.

use super::*;

const S: u64 = 1000;

fn alert(name: &str, severity: &str, model: &str, firing: bool) -> Alert {
    Alert {
        name: name.into(),
        labels: BTreeMap::from([
            ("alertname".into(), name.into()),
            ("severity".into(), severity.into()),
            ("model".into(), model.into()),
        ]),
        firing,
        acked_until: None,
    }
}

fn grouping(by: &[&str]) -> Grouping {
    Grouping {
        by: by.iter().map(|s| (*s).to_owned()).collect(),
        wait_ms: 30 * S,
        interval_ms: 300 * S,
        repeat_ms: 3600 * S,
    }
}

fn routed(g: &Grouping, alerts: &[Alert]) -> Vec<(String, Grouping, Vec<Alert>)> {
    vec![("oncall".into(), g.clone(), alerts.to_vec())]
}

#[test]
fn alerts_firing_together_go_out_together_then_changes_batch_and_repeats_wait() {
    let g = grouping(&["model"]);
    let mut d = Dispatcher::default();
    let a = alert("errors", "warning", "chat", true);
    let b = alert("latency", "warning", "chat", true);
    // group_wait: the first alert waits for company.
    assert!(d.step(0, &routed(&g, std::slice::from_ref(&a))).is_empty());
    assert!(d
        .step(10 * S, &routed(&g, &[a.clone(), b.clone()]))
        .is_empty());
    let m = d.step(30 * S, &routed(&g, &[a.clone(), b.clone()]));
    assert_eq!(m.len(), 1, "one message for the group");
    assert_eq!(m[0].firing, ["errors", "latency"]);
    assert_eq!(
        m[0].group,
        BTreeMap::from([("model".into(), "chat".into())])
    );
    // Nothing changed: quiet until repeat_interval.
    assert!(d
        .step(60 * S, &routed(&g, &[a.clone(), b.clone()]))
        .is_empty());
    // One resolves: told at the next group_interval, not before.
    let b_ok = Alert {
        firing: false,
        ..b.clone()
    };
    assert!(d
        .step(100 * S, &routed(&g, &[a.clone(), b_ok.clone()]))
        .is_empty());
    let m = d.step(330 * S, &routed(&g, &[a.clone(), b_ok.clone()]));
    assert_eq!(
        (m[0].firing.clone(), m[0].resolved.clone()),
        (vec!["errors".to_owned()], vec!["latency".to_owned()])
    );
    // Still firing, unchanged: repeated after repeat_interval.
    assert!(d
        .step(3000 * S, &routed(&g, std::slice::from_ref(&a)))
        .is_empty());
    let m = d.step(3930 * S, &routed(&g, std::slice::from_ref(&a)));
    assert_eq!(m[0].firing, ["errors"]);
    // Resolved: told once, and the group is gone.
    let a_ok = Alert { firing: false, ..a };
    let m = d.step(4300 * S, &routed(&g, std::slice::from_ref(&a_ok)));
    assert_eq!(m[0].resolved, ["errors"]);
    assert!(d.step(9000 * S, &routed(&g, &[a_ok])).is_empty());
    assert!(d.groups.is_empty());
}

#[test]
fn an_acknowledged_alert_is_not_repeated_until_its_ack_runs_out() {
    let g = grouping(&["alertname"]);
    let mut d = Dispatcher::default();
    let mut a = alert("errors", "critical", "chat", true);
    d.step(0, &routed(&g, std::slice::from_ref(&a)));
    assert_eq!(
        d.step(30 * S, &routed(&g, std::slice::from_ref(&a))).len(),
        1
    );
    a.acked_until = Some(7200 * S);
    assert!(
        d.step(3630 * S, &routed(&g, std::slice::from_ref(&a)))
            .is_empty(),
        "acked: no repeat"
    );
    assert_eq!(
        d.step(7200 * S, &routed(&g, std::slice::from_ref(&a)))
            .len(),
        1,
        "ran out: repeated"
    );
}

#[test]
fn a_firing_critical_inhibits_warnings_about_the_same_thing() {
    let crit = alert("down", "critical", "chat", true);
    let warn = alert("slow", "warning", "chat", true);
    let other = alert("slow-embed", "warning", "embed", true);
    let all = [crit.clone(), warn.clone(), other.clone()];
    assert!(inhibited(&warn, &all));
    assert!(!inhibited(&other, &all), "another model");
    assert!(!inhibited(&crit, &all));
    let resolved = Alert {
        firing: false,
        ..crit
    };
    assert!(!inhibited(&warn, &[resolved, warn.clone()]));
}

#[test]
fn silences_cover_their_matchers_and_their_time() {
    let s = Silence {
        id: "s1".into(),
        matchers: BTreeMap::from([("model".into(), "chat".into())]),
        starts_ms: 100,
        ends_ms: 200,
    };
    let chat = alert("e", "warning", "chat", true).labels;
    let embed = alert("e", "warning", "embed", true).labels;
    assert!(silenced(&chat, std::slice::from_ref(&s), 150));
    assert!(!silenced(&chat, std::slice::from_ref(&s), 200), "ended");
    assert!(
        !silenced(&chat, std::slice::from_ref(&s), 99),
        "not started"
    );
    assert!(!silenced(&embed, &[s], 150));
}

#[test]
fn escalation_walks_its_steps_and_repeats() {
    let steps = [
        EscalationStep {
            after_ms: 0,
            receivers: vec!["slack".into()],
        },
        EscalationStep {
            after_ms: 600 * S,
            receivers: vec!["pager".into()],
        },
    ];
    assert_eq!(escalation(&steps, 1, 1000, 999), None);
    assert_eq!(escalation(&steps, 1, 0, 0), Some((0, 0)));
    assert_eq!(escalation(&steps, 1, 0, 599 * S), Some((0, 0)));
    assert_eq!(
        escalation(&steps, 1, 0, 600 * S),
        Some((1, 0)),
        "step 1 then round 2's step 0 at once"
    );
    assert_eq!(escalation(&steps, 1, 0, 1200 * S), Some((1, 1)));
    assert_eq!(
        escalation(&steps, 1, 0, 99_999 * S),
        Some((1, 1)),
        "no more rounds"
    );
}
