//! One suite, two backends: embedded SQLite and the real PostgreSQL server.

use super::*;

mod requests;
use requests::{large_batches, request_log, semantic_audit};

fn team(name: &str) -> Team {
    Team {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.into(),
        limits: Limits {
            rpm: Some(60),
            tpm: None,
            max_concurrent: None,
        },
        budget: Some(Budget {
            amount_usd: 12.5,
            period: Period::Monthly,
        }),
        metadata: serde_json::json!({"cost_center": "ai"}),
        created_at: 1,
    }
}

fn key(name: &str, team_id: Option<String>, hash: &str) -> ApiKey {
    ApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        hash: hash.into(),
        prefix: "pk-abcd".into(),
        name: name.into(),
        team_id,
        user_id: None,
        allowed_models: Some(vec!["chat".into()]),
        scopes: Some(vec!["flags".into()]),
        limits: Limits {
            rpm: Some(10),
            tpm: Some(1000),
            max_concurrent: Some(2),
        },
        budget: None,
        metadata: serde_json::json!({}),
        expires_at: None,
        revoked_at: None,
        replaced_by: None,
        created_at: 5,
    }
}

async fn suite(store: Store) {
    store.ping().await.unwrap();
    let t = team("search");
    store.create_team(&t).await.unwrap();
    assert!(matches!(
        store.create_team(&team("search")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.team(&t.id).await.unwrap(), t);
    assert!(matches!(
        store.team("nope").await,
        Err(StoreError::NotFound(_))
    ));

    let u = User {
        id: "u1".into(),
        email: "a@example.com".into(),
        team_id: Some(t.id.clone()),
        created_at: 2,
    };
    store.create_user(&u).await.unwrap();
    assert_eq!(store.list_users().await.unwrap(), vec![u]);

    let k = key("ci", Some(t.id.clone()), "hash-1");
    store.insert_key(&k).await.unwrap();
    assert_eq!(store.key(&k.id).await.unwrap(), k);
    assert!(matches!(
        store.insert_key(&key("dup", None, "hash-1")).await,
        Err(StoreError::Conflict(_))
    ));
    let orphan = key("orphan", Some("no-such-team".into()), "hash-9");
    assert!(
        store.insert_key(&orphan).await.is_err(),
        "foreign keys are enforced"
    );

    let new = key("ci", Some(t.id.clone()), "hash-2");
    store.rotate_key(&k.id, &new, 100).await.unwrap();
    let old = store.key(&k.id).await.unwrap();
    assert_eq!(
        (old.replaced_by.as_deref(), old.expires_at),
        (Some(new.id.as_str()), Some(100))
    );
    assert!(
        store
            .rotate_key(&k.id, &key("x", None, "hash-3"), 100)
            .await
            .is_err(),
        "rotates once"
    );
    let active: Vec<_> = store
        .active_keys(50)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.hash)
        .collect();
    assert_eq!(active.len(), 2);
    assert_eq!(
        store.active_keys(100).await.unwrap().len(),
        1,
        "old key expires after the grace period"
    );
    store.revoke_key(&new.id, 60).await.unwrap();
    store.revoke_key(&new.id, 70).await.unwrap();
    assert_eq!(store.key(&new.id).await.unwrap().revoked_at, Some(60));
    assert!(store
        .active_keys(61)
        .await
        .unwrap()
        .iter()
        .all(|k| k.id != new.id));
    assert!(matches!(
        store.revoke_key("nope", 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_keys().await.unwrap().len(), 2);

    let c = Credential {
        provider: "openai".into(),
        ciphertext: "AAA".into(),
        nonce: "BBB".into(),
        master_key_id: "m1".into(),
        updated_at: 3,
    };
    store.put_credential(&c).await.unwrap();
    let c2 = Credential {
        ciphertext: "CCC".into(),
        master_key_id: "m2".into(),
        ..c.clone()
    };
    store.put_credential(&c2).await.unwrap();
    assert_eq!(store.credentials().await.unwrap(), vec![c2]);

    let delta = |day: &str, key: &str, model: &str, cost: f64| UsageDelta {
        day: day.into(),
        key_id: key.into(),
        team_id: t.id.clone(),
        model: model.into(),
        requests: 1,
        input_tokens: 10,
        output_tokens: 5,
        cost_usd: cost,
    };
    store
        .add_usage(&[
            delta("2026-11-01", "k1", "chat", 0.5),
            delta("2026-11-01", "k1", "chat", 0.25),
        ])
        .await
        .unwrap();
    store
        .add_usage(&[delta("2026-11-02", "k2", "embed", 1.0)])
        .await
        .unwrap();
    let by_key = store
        .usage(GroupBy::Key, "2026-11-01", "2026-11-30")
        .await
        .unwrap();
    assert_eq!(by_key.len(), 2);
    assert_eq!(
        (
            by_key[0].group.as_str(),
            by_key[0].requests,
            by_key[0].input_tokens
        ),
        ("k1", 2, 20)
    );
    assert!((by_key[0].cost_usd - 0.75).abs() < 1e-9);
    let by_team = store
        .usage(GroupBy::Team, "2026-11-01", "2026-11-30")
        .await
        .unwrap();
    assert_eq!(by_team[0].requests, 3);
    assert_eq!(
        store
            .usage(GroupBy::Day, "2026-11-02", "2026-11-02")
            .await
            .unwrap()
            .len(),
        1
    );
    let keys = store.spend_since_all(false, "2026-11-01").await.unwrap();
    assert!((keys["k1"] - 0.75).abs() < 1e-9, "{keys:?}");
    assert!(!keys.contains_key("nobody"));
    let teams = store.spend_since_all(true, "2026-11-02").await.unwrap();
    assert!((teams[&t.id] - 1.0).abs() < 1e-9, "{teams:?}");
    request_log(&store).await;
    semantic_audit(&store).await;
    large_batches(&store).await;
    rollouts(&store).await;
    flags(&store).await;
    acme(&store).await;
    alerts(&store).await;
}

/// An alert's row upserts; its history comes back newest first and is trimmed.
async fn alerts(store: &Store) {
    let mut a = AlertRow {
        name: "chat-errors".into(),
        state: "firing".into(),
        severity: "critical".into(),
        labels: "{}".into(),
        annotations: "{}".into(),
        value: Some(0.2),
        active_since: Some(1),
        firing_since: Some(2),
        resolved_at: None,
        acked_by: None,
        acked_until: None,
        updated_at: 2,
    };
    store.put_alert(&a).await.unwrap();
    a.acked_by = Some("ops".into());
    a.acked_until = Some(99);
    store.put_alert(&a).await.unwrap();
    assert_eq!(store.alert("chat-errors").await.unwrap(), Some(a.clone()));
    assert_eq!(store.alerts().await.unwrap(), [a]);
    // Detector histories: saved, replaced, read back by name.
    store
        .put_detector("lat:model=chat", "[[0,1.5]]", 1)
        .await
        .unwrap();
    store
        .put_detector("lat:model=chat", "[[0,1.5],[900000,2.0]]", 2)
        .await
        .unwrap();
    assert_eq!(
        store.detectors().await.unwrap(),
        [(
            "lat:model=chat".to_owned(),
            "[[0,1.5],[900000,2.0]]".to_owned()
        )]
    );
    for at in 0..250 {
        let e = AlertEvent {
            at,
            alert: if at % 2 == 0 { "a" } else { "b" }.into(),
            kind: "firing".into(),
            detail: "{}".into(),
        };
        store.add_alert_event(&e, 120).await.unwrap();
    }
    let all = store.alert_events(None, 1000).await.unwrap();
    assert_eq!(all[0].at, 249);
    assert!(all.len() <= 170, "trimmed: {}", all.len());
    let b = store.alert_events(Some("b"), 3).await.unwrap();
    assert_eq!(b.iter().map(|e| e.at).collect::<Vec<_>>(), [249, 247, 245]);
    let s = SilenceRow {
        id: "s1".into(),
        matchers: "{}".into(),
        starts_at: 10,
        ends_at: 100,
        author: "ops".into(),
        comment: "deploy".into(),
        created_at: 10,
    };
    store.add_silence(&s).await.unwrap();
    assert_eq!(store.silences(50).await.unwrap(), [s]);
    assert!(store.expire_silence("s1", 60).await.unwrap());
    assert!(
        !store.expire_silence("s1", 70).await.unwrap(),
        "already over"
    );
    assert!(store.silences(60).await.unwrap().is_empty());
}

/// Flag changes store the definition and the audit row together; a delete leaves the history.
async fn flags(store: &Store) {
    assert_eq!(store.flags_version().await.unwrap(), (0, 0));
    for (at, action, def) in [
        (10, "create", Some("{\"a\":1}")),
        (20, "update", Some("{\"a\":2}")),
    ] {
        let c = FlagChange {
            key: "f".into(),
            at,
            actor: "ops".into(),
            action: action.into(),
            definition: def.map(str::to_owned),
        };
        store.change_flag(&c).await.unwrap();
    }
    let rows = store.flags().await.unwrap();
    assert_eq!((rows.len(), rows[0].definition.as_str()), (1, "{\"a\":2}"));
    store
        .change_flag(&FlagChange {
            key: "f".into(),
            at: 30,
            actor: "ops".into(),
            action: "delete".into(),
            definition: None,
        })
        .await
        .unwrap();
    assert!(store.flags().await.unwrap().is_empty());
    let h = store.flag_history("f", 10).await.unwrap();
    assert_eq!(
        h.iter().map(|c| c.action.as_str()).collect::<Vec<_>>(),
        ["delete", "update", "create"]
    );
    assert_eq!(store.flags_version().await.unwrap(), (3, 30));
}

/// Certificates and accounts upsert by name; a challenge answers until it expires or is
/// withdrawn, and publishing one sweeps the expired.
async fn acme(store: &Store) {
    assert_eq!(store.certificate("a.test").await.unwrap(), None);
    let sealed = |label: String, at| Credential {
        provider: label,
        ciphertext: "c".into(),
        nonce: "n".into(),
        master_key_id: "k".into(),
        updated_at: at,
    };
    let mut c = CertificateRow {
        name: "a.test".into(),
        chain_pem: "PEM1".into(),
        key: sealed(certificate_label("a.test"), 5),
        not_after: 100,
        updated_at: 5,
    };
    store.put_certificate(&c).await.unwrap();
    c.chain_pem = "PEM2".into();
    c.key = sealed(certificate_label("a.test"), 6);
    c.updated_at = 6;
    store.put_certificate(&c).await.unwrap();
    assert_eq!(store.certificate("a.test").await.unwrap(), Some(c.clone()));
    assert_eq!(store.certificates().await.unwrap(), vec![c]);
    let dir = "https://ca.test/dir";
    store
        .put_acme_account(dir, &sealed(account_label(dir), 7))
        .await
        .unwrap();
    assert_eq!(
        store.acme_account(dir).await.unwrap(),
        Some(sealed(account_label(dir), 7))
    );
    assert_eq!(store.acme_accounts().await.unwrap().len(), 1);
    store
        .put_acme_challenge("http:t1", "t1.x", 1000, 0)
        .await
        .unwrap();
    assert_eq!(
        store
            .acme_challenge("http:t1", 999)
            .await
            .unwrap()
            .as_deref(),
        Some("t1.x")
    );
    assert_eq!(store.acme_challenge("http:t1", 1001).await.unwrap(), None);
    store
        .put_acme_challenge("http:t2", "t2.x", 3000, 2000)
        .await
        .unwrap();
    store.delete_acme_challenge("http:t2").await.unwrap();
    assert_eq!(store.acme_challenge("http:t2", 2000).await.unwrap(), None);
}

/// Rollout progress upserts, verdicts come back newest first, and a lease has one holder
/// until it expires or is released.
async fn rollouts(store: &Store) {
    assert_eq!(store.rollout("r").await.unwrap(), None);
    let mut r = RolloutRow {
        name: "r".into(),
        progress: "{}".into(),
        state: "progressing".into(),
        updated_at: 1,
    };
    store.put_rollout(&r).await.unwrap();
    r.state = "promoted".into();
    store.put_rollout(&r).await.unwrap();
    assert_eq!(store.rollout("r").await.unwrap(), Some(r));
    for at in [10, 20] {
        let v = VerdictRow {
            rollout: "r".into(),
            at,
            outcome: "pass".into(),
            detail: "{}".into(),
            state: "progressing".into(),
            weight: 5.0,
        };
        store.add_verdict(&v).await.unwrap();
    }
    let v = store.verdicts("r", 10).await.unwrap();
    assert_eq!(v.iter().map(|v| v.at).collect::<Vec<_>>(), [20, 10]);
    store.push_window("r", "i1", 1, "a").await.unwrap();
    store.push_window("r", "i2", 2, "b").await.unwrap();
    store.push_window("other", "i1", 2, "c").await.unwrap();
    let mut w = store.take_windows("r").await.unwrap();
    w.sort();
    assert_eq!(w, ["a", "b"]);
    assert!(
        store.take_windows("r").await.unwrap().is_empty(),
        "taken once"
    );
    assert!(store.take_lease("judge", "a", 1000, 100).await.unwrap());
    assert!(
        !store.take_lease("judge", "b", 1050, 100).await.unwrap(),
        "a holds it"
    );
    assert!(
        store.take_lease("judge", "a", 1050, 100).await.unwrap(),
        "renewed"
    );
    assert!(
        store.take_lease("judge", "b", 1200, 100).await.unwrap(),
        "expired: taken over"
    );
    store.release_lease("judge", "b").await.unwrap();
    assert!(
        store.take_lease("judge", "a", 1201, 100).await.unwrap(),
        "released"
    );
    // A rollout made through the API: one per name; deleting it forgets its whole history.
    let d = RolloutDefinition {
        name: "r".into(),
        definition: "{\"name\":\"r\"}".into(),
        created_at: 5,
        created_by: "ops".into(),
    };
    assert!(store.add_rollout_definition(&d).await.unwrap());
    assert!(!store.add_rollout_definition(&d).await.unwrap(), "exists");
    assert_eq!(store.rollout_definitions().await.unwrap(), [d]);
    assert!(store.delete_rollout("r").await.unwrap());
    assert!(!store.delete_rollout("r").await.unwrap());
    assert!(store.rollout_definitions().await.unwrap().is_empty());
    assert_eq!(store.rollout("r").await.unwrap(), None);
    assert!(store.verdicts("r", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_suite() {
    let dir = std::env::temp_dir().join(format!("pylon-store-{}", uuid::Uuid::new_v4()));
    let store = Store::open_sqlite(&dir).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    suite(store).await;
    // Reopening runs no migration twice and keeps the data.
    let again = Store::open_sqlite(&dir).await.unwrap();
    assert_eq!(again.list_keys().await.unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(dir);
}

/// The real PostgreSQL server (`PYLON_TEST_POSTGRES`, default the CI one); fails, never skips,
/// when it is unreachable.
#[tokio::test]
async fn postgres_suite() {
    with_postgres(|store| async move {
        assert_eq!(store.backend(), Backend::Postgres);
        suite(store).await;
    })
    .await;
}

/// Runs `test` on a store in a schema of its own, dropped afterwards.
async fn with_postgres<F: std::future::Future<Output = ()>>(test: impl FnOnce(Store) -> F) {
    let base = std::env::var("PYLON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&base).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {base} is required for this test and unreachable: {e}")
    });
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("{base}?options=-c%20search_path%3D{schema}");
    test(Store::connect(&url).await.unwrap()).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
