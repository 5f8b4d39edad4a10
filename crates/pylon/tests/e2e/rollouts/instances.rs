//! Rollouts across instances sharing PostgreSQL and Redis.

use std::time::Duration;

use serde_json::json;

use super::{config, TOKEN};
use crate::harness::*;

/// Two instances sharing PostgreSQL and Redis: one judges at a time and the other hands it its
/// counts (through Redis); when the judge stops, the other takes over; both apply a new weight
/// within a second.
#[tokio::test]
async fn two_instances_share_one_judge_and_apply_weights_together() {
    let (admin, base, schema) = pg_schema().await;
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let rollout = "candidate = { targets = [ { provider = \"b\", model = \"mock-b\" } ] }\nsteps = [ { weight = 10, hold = \"1h\" }, { weight = 60, hold = \"1h\" } ]\nstart = false\n[rollouts.analysis]\ninterval = \"1s\"\nmin_requests = 5\n";
    let name = format!("chat-v2-{}", uuid::Uuid::new_v4().simple());
    let redis =
        std::env::var("PYLON_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let text = format!(
        "[data]\nstore_url = \"{base}?options=-c%20search_path%3D{schema}\"\nredis_url = \"{redis}\"\n{}",
        config(rollout, 1)
    )
    .replace("{a}", &a.addr.to_string())
    .replace("{b}", &b.addr.to_string())
    // Its own name: the counts handed over in the shared Redis are this run's alone.
    .replace("name = \"chat-v2\"", &format!("name = \"{name}\""));
    let (one, c1) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let (two, c2) = Gateway::with_admin(&text, Some(TOKEN)).await;
    let holder = || async {
        sqlx::query_scalar::<_, String>(&format!("SELECT holder FROM {schema}.leases"))
            .fetch_optional(&admin)
            .await
            .unwrap()
    };
    let mut judge = None;
    for _ in 0..50 {
        judge = holder().await;
        if judge.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let judge = judge.expect("one instance takes the lease");
    let ids = [
        c1.rollouts.instance().to_owned(),
        c2.rollouts.instance().to_owned(),
    ];
    assert!(ids.contains(&judge), "{judge} is one of {ids:?}");
    let (judging, other, other_control) = if judge == ids[0] {
        (&one, &two, &c2)
    } else {
        (&two, &one, &c1)
    };
    // A command on the judge is applied by both within a second.
    let (code, _) = admin_post(
        judging,
        TOKEN,
        &format!("/admin/v1/rollouts/{name}/start"),
        &json!({}),
    )
    .await;
    assert_eq!(code, 200);
    let series = format!("pylon_rollout_weight_percent{{rollout=\"{name}\"}}");
    let started = std::time::Instant::now();
    while metric(other, &series).await != 10.0 && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert_eq!(metric(other, &series).await, 10.0);
    println!("the other instance applied the new weight after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Traffic only on the other instance reaches the judge.
    for i in 0..60 {
        let resp = client()
            .post(other.url("/v1/chat/completions"))
            .header("x-session-id", format!("pg-{i}"))
            .json(&hello("chat"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let mut judged = 0;
    for _ in 0..60 {
        let s = admin_get(judging, TOKEN, &format!("/admin/v1/rollouts/{name}")).await;
        judged = s["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                v["detail"]["stable_requests"].as_u64().unwrap_or(0)
                    + v["detail"]["candidate_requests"].as_u64().unwrap_or(0)
            })
            .sum::<u64>();
        if judged >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(judged, 60, "the judge saw the other instance's requests");
    // The judge stops: the other takes the lease over once it expires.
    let stopped = if judge == ids[0] { &c1 } else { &c2 };
    stopped.shutdown(Duration::from_secs(1)).await;
    let mut next = None;
    for _ in 0..100 {
        next = holder().await;
        if next.as_deref() == Some(other_control.rollouts.instance()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        next.as_deref(),
        Some(other_control.rollouts.instance()),
        "taken over"
    );
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
