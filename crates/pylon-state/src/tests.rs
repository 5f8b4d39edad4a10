//! The same admission suite in-process and against real Redis servers.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

fn admission(prefix: &str, rpm: u64) -> Admission {
    Admission {
        buckets: vec![Bucket {
            key: format!("{prefix}:rpm"),
            rate: Rate::per_minute(rpm),
            cost: 1,
        }],
        slots: vec![Slot {
            key: format!("{prefix}:conc"),
            max: 2,
        }],
        caps: vec![Cap {
            key: format!("{prefix}:spend"),
            limit_micros: 1_000,
        }],
    }
}

async fn suite(limiter: &Limiter, prefix: &str) {
    // Rate: exactly the limit in a burst (slots released as we go).
    let a = Admission {
        slots: vec![],
        caps: vec![],
        ..admission(prefix, 5)
    };
    let mut allowed = 0;
    for _ in 0..8 {
        if let Verdict::Allowed(r) = limiter.admit(&a, 0.0).await.unwrap() {
            allowed += 1;
            assert_eq!(r[0].remaining, 5 - allowed);
        }
    }
    assert_eq!(allowed, 5);
    match limiter.admit(&a, 0.0).await.unwrap() {
        Verdict::Limited {
            index: 0,
            retry_after_ms,
            ..
        } => assert!(retry_after_ms > 0.0 && retry_after_ms <= 12_000.0),
        other => panic!("{other:?}"),
    }
    // Concurrency: two holders, the third waits; releasing frees a slot.
    let c = Admission {
        buckets: vec![],
        caps: vec![],
        ..admission(&format!("{prefix}c"), 100)
    };
    assert!(matches!(
        limiter.admit(&c, 0.0).await.unwrap(),
        Verdict::Allowed(_)
    ));
    assert!(matches!(
        limiter.admit(&c, 0.0).await.unwrap(),
        Verdict::Allowed(_)
    ));
    assert_eq!(
        limiter.admit(&c, 0.0).await.unwrap(),
        Verdict::Busy { index: 0 }
    );
    limiter
        .settle(
            &Settlement {
                release: vec![c.slots[0].key.clone()],
                ..Settlement::default()
            },
            0.0,
            limiter.preferred(),
        )
        .await;
    assert!(matches!(
        limiter.admit(&c, 0.0).await.unwrap(),
        Verdict::Allowed(_)
    ));
    // Spend: allowed until the cap is reached, then refused; seeding raises, never lowers.
    let s = Admission {
        buckets: vec![],
        slots: vec![],
        ..admission(&format!("{prefix}s"), 100)
    };
    let spend = |m: i64| Settlement {
        spend: vec![(s.caps[0].key.clone(), m, Duration::from_secs(60))],
        ..Settlement::default()
    };
    assert!(matches!(
        limiter.admit(&s, 0.0).await.unwrap(),
        Verdict::Allowed(_)
    ));
    limiter.settle(&spend(600), 0.0, limiter.preferred()).await;
    assert!(matches!(
        limiter.admit(&s, 0.0).await.unwrap(),
        Verdict::Allowed(_)
    ));
    limiter.settle(&spend(600), 0.0, limiter.preferred()).await;
    assert_eq!(
        limiter.admit(&s, 0.0).await.unwrap(),
        Verdict::OverBudget {
            index: 0,
            spent_micros: 1_200
        }
    );
    limiter
        .seed_spend(&s.caps[0].key, 10, Duration::from_secs(60))
        .await;
    assert!(matches!(
        limiter.admit(&s, 0.0).await.unwrap(),
        Verdict::OverBudget { .. }
    ));
    // Tokens: a correction refunds an over-estimate.
    let t = Admission {
        buckets: vec![Bucket {
            key: format!("{prefix}:tpm"),
            rate: Rate::per_minute(1_000),
            cost: 900,
        }],
        ..Admission::default()
    };
    assert!(matches!(
        limiter.admit(&t, 0.0).await.unwrap(),
        Verdict::Allowed(_)
    ));
    assert!(matches!(
        limiter.admit(&t, 0.0).await.unwrap(),
        Verdict::Limited { .. }
    ));
    let refund = Settlement {
        corrections: vec![(t.buckets[0].key.clone(), t.buckets[0].rate, -800)],
        ..Settlement::default()
    };
    limiter.settle(&refund, 0.0, limiter.preferred()).await;
    let small = Admission {
        buckets: vec![Bucket {
            cost: 500,
            ..t.buckets[0].clone()
        }],
        ..Admission::default()
    };
    assert!(matches!(
        limiter.admit(&small, 0.0).await.unwrap(),
        Verdict::Allowed(_)
    ));
}

#[tokio::test]
async fn local_suite() {
    suite(&Limiter::local(), "local").await;
}

fn redis_url() -> String {
    std::env::var("PYLON_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn redis_suite() {
    let prefix = format!("pylon-test:{}:", uuid::Uuid::new_v4());
    let limiter = Limiter::new(
        Some(RedisState::new(&redis_url(), &prefix).unwrap()),
        OnRedisFailure::Reject,
    );
    suite(&limiter, "r").await;
    assert!(
        !limiter.is_degraded(),
        "the real Redis at {} answered every call",
        redis_url()
    );
}

#[tokio::test]
async fn two_limiters_sharing_redis_enforce_one_limit_exactly() {
    let prefix = format!("pylon-test:{}:", uuid::Uuid::new_v4());
    let one = std::sync::Arc::new(Limiter::new(
        Some(RedisState::new(&redis_url(), &prefix).unwrap()),
        OnRedisFailure::Reject,
    ));
    let two = std::sync::Arc::new(Limiter::new(
        Some(RedisState::new(&redis_url(), &prefix).unwrap()),
        OnRedisFailure::Reject,
    ));
    let a = Admission {
        buckets: vec![Bucket {
            key: "shared".into(),
            rate: Rate::per_minute(30),
            cost: 1,
        }],
        ..Admission::default()
    };
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let l = if i % 2 == 0 { one.clone() } else { two.clone() };
            let a = a.clone();
            tokio::spawn(
                async move { matches!(l.admit(&a, 0.0).await.unwrap(), Verdict::Allowed(_)) },
            )
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(allowed, 30, "exactly the limit across both");
}

/// A private redis-server on a free port, so the test can stop and restart it.
fn start_redis(port: u16) -> Child {
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for this test");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server on {port} did not start");
}

#[tokio::test]
async fn falls_back_to_local_when_redis_dies_and_resumes_when_it_returns() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = start_redis(port);
    let limiter = Limiter::new(
        Some(RedisState::new(&format!("redis://127.0.0.1:{port}"), "p:").unwrap()),
        OnRedisFailure::Local,
    );
    let a = Admission {
        buckets: vec![Bucket {
            key: "k".into(),
            rate: Rate::per_minute(1_000),
            cost: 1,
        }],
        ..Admission::default()
    };
    assert!(matches!(
        limiter.admit(&a, 0.0).await.unwrap(),
        Verdict::Allowed(_)
    ));
    assert!(!limiter.is_degraded());

    server.kill().unwrap();
    server.wait().unwrap();
    // Requests keep flowing on local state.
    for _ in 0..5 {
        assert!(matches!(
            limiter.admit(&a, 0.0).await.unwrap(),
            Verdict::Allowed(_)
        ));
    }
    assert!(limiter.is_degraded());

    let mut server = start_redis(port);
    let mut resumed = false;
    for _ in 0..100 {
        let _ = limiter.admit(&a, 0.0).await.unwrap();
        if !limiter.is_degraded() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "shared limits resumed once Redis answered again");
    let rejecting = Limiter::new(
        Some(RedisState::new("redis://127.0.0.1:1", "p:").unwrap()),
        OnRedisFailure::Reject,
    );
    assert!(matches!(
        rejecting.admit(&a, 0.0).await,
        Err(StateError::Unavailable)
    ));
    server.kill().unwrap();
    let _ = server.wait();
}

/// Lists hand items between instances: pushes from two clients, one take gets them all once,
/// and the list keeps only its newest `max` items.
#[tokio::test]
async fn lists_are_taken_whole_and_bounded() {
    let prefix = format!("pylon-test:{}:", uuid::Uuid::new_v4());
    let one = RedisState::new(&redis_url(), &prefix).unwrap();
    let two = RedisState::new(&redis_url(), &prefix).unwrap();
    let ttl = std::time::Duration::from_secs(60);
    one.push_list("w", "a", 3, ttl).await.unwrap();
    two.push_list("w", "b", 3, ttl).await.unwrap();
    assert_eq!(one.take_list("w").await.unwrap(), ["a", "b"]);
    assert!(two.take_list("w").await.unwrap().is_empty(), "taken once");
    for x in ["1", "2", "3", "4"] {
        one.push_list("w", x, 3, ttl).await.unwrap();
    }
    assert_eq!(two.take_list("w").await.unwrap(), ["2", "3", "4"]);
}
