//! The request log's part of the suite: rows, rollups, error groups, batches of every statement
//! size, semantic-hit audit rows and nullable floats.

use super::*;

/// A semantic hit's row is found by id with what it matched; other rows are not.
pub(super) async fn semantic_audit(store: &Store) {
    let mut hit = row(42, "sem-hit", "k", 200);
    hit.cache = Some("hit".into());
    hit.cache_similarity = Some(0.97);
    hit.cache_matched = Some("what is 2 + 2?".into());
    hit.cache_entry = Some("k:k1:m:abc".into());
    hit.cache_question = Some("q1".into());
    let plain = row(43, "plain", "k", 200);
    store
        .record_requests(&[hit.clone(), plain], true)
        .await
        .unwrap();
    assert_eq!(store.semantic_hit("sem-hit").await.unwrap(), Some(hit));
    assert_eq!(store.semantic_hit("plain").await.unwrap(), None);
    assert_eq!(store.semantic_hit("nothing").await.unwrap(), None);
}

/// Batches larger than one INSERT statement, and remainders of every statement size, land whole.
pub(super) async fn large_batches(store: &Store) {
    let day = 86_400_000;
    let since = 40 * day;
    let rows: Vec<_> = (0..677)
        .map(|i| row(since + i, &format!("big{i}"), "big", 200))
        .collect();
    // 600 = 512 + 64 + 3 × 8; 77 = 64 + 8 + 5 × 1.
    let (first, second) = rows.split_at(600);
    store.record_requests(first, true).await.unwrap();
    store.record_requests(second, true).await.unwrap();
    let back = store
        .requests(&crate::RequestFilter {
            since_ms: Some(since),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(back.len(), rows.len());
    let mut ids: Vec<_> = back.iter().map(|r| r.request_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "no row twice");
    assert_eq!(
        back[0], rows[676],
        "the last row of a remainder round-trips"
    );
    assert_eq!(back[676], rows[0]);
    let total = store
        .usage_report(&[], crate::Bucket::All, since / 1000, (since + day) / 1000)
        .await
        .unwrap();
    assert_eq!(total[0].requests, 677);
}

fn row(at_ms: i64, id: &str, key: &str, status: i64) -> crate::RequestRow {
    crate::RequestRow {
        at_ms,
        request_id: id.into(),
        key_id: key.into(),
        user_id: None,
        team_id: Some("t".into()),
        route: "/v1/chat/completions".into(),
        model: "m".into(),
        served_model: Some("up".into()),
        provider: Some("p".into()),
        status,
        outcome: if status < 400 { "ok" } else { "error" }.into(),
        error_class: (status >= 400).then(|| "upstream_error".into()),
        error: (status >= 400).then(|| "boom".into()),
        latency_ms: 10.0,
        ttft_ms: Some(5.0),
        input_tokens: 3,
        output_tokens: 4,
        cost_usd: 0.5,
        cache: Some("miss".into()),
        attempts: 1,
        fallback: None,
        stream: true,
        trace_id: None,
        cache_similarity: None,
        cache_matched: None,
        cache_entry: None,
        cache_question: None,
    }
}

/// The newest `limit` logged requests of a key.
async fn of_key(store: &Store, key: &str, limit: i64) -> Vec<crate::RequestRow> {
    store
        .requests(&crate::RequestFilter {
            key_id: Some(key.into()),
            limit,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// The request log: rows, rollups, error groups, keyset pages, retention by age and count.
pub(super) async fn request_log(store: &Store) {
    let hour = 3_600_000;
    let batch: Vec<_> = (0..10)
        .map(|i| {
            row(
                i * hour,
                &format!("r{i}"),
                if i % 2 == 0 { "a" } else { "b" },
                if i == 9 { 502 } else { 200 },
            )
        })
        .collect();
    store.record_requests(&batch, true).await.unwrap();
    let all = crate::RequestFilter {
        limit: 100,
        ..Default::default()
    };
    let rows = store.requests(&all).await.unwrap();
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[0].request_id, "r9", "newest first");
    assert_eq!(rows[0], batch[9], "every field round-trips");
    let page = of_key(store, "a", 2).await;
    assert_eq!(
        page.iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        ["r8", "r6"]
    );
    let next = store
        .requests(&crate::RequestFilter {
            key_id: Some("a".into()),
            limit: 10,
            before: Some((page[1].at_ms, page[1].request_id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        ["r4", "r2", "r0"]
    );
    let errors = store
        .requests(&crate::RequestFilter {
            status_class: Some(500),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(errors.len(), 1);

    let by_key = store
        .usage_report(&[crate::Dim::Key], crate::Bucket::All, 0, 86_400)
        .await
        .unwrap();
    assert_eq!(by_key.len(), 2);
    assert_eq!((by_key[0].keys[0].as_str(), by_key[0].requests), ("a", 5));
    assert_eq!((by_key[1].requests, by_key[1].errors), (5, 1));
    let hourly = store
        .usage_report(&[], crate::Bucket::Hour, 0, 86_400)
        .await
        .unwrap();
    assert_eq!(hourly.len(), 10);
    let groups = store.error_groups(0).await.unwrap();
    assert_eq!(
        (groups[0].count, groups[0].example_request_id.as_str()),
        (1, "r9")
    );

    // Older than 3 hours goes, then all but the newest 4.
    let pruned = store.prune_requests(3 * hour, 4).await.unwrap();
    assert_eq!(pruned, 6);
    let left = store.requests(&all).await.unwrap();
    assert_eq!(
        left.iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        ["r9", "r8", "r7", "r6"]
    );
    let rolled = store
        .usage_report(&[], crate::Bucket::All, 0, 86_400)
        .await
        .unwrap();
    assert_eq!(rolled[0].requests, 10, "rollups outlive pruned rows");
}

/// Every nullable float column takes a NULL and then a value through the same prepared
/// statement. Calls run one after another, so each cycles through the pool's idle connections and
/// every one of them prepares its statements with the NULL first (the order that broke on
/// PostgreSQL when sqlx bound a NULL f64 as `float4`).
async fn nullable_floats(store: Store) {
    let alert = |name: String, value| AlertRow {
        name,
        state: "firing".into(),
        severity: "warning".into(),
        labels: "{}".into(),
        annotations: "{}".into(),
        value,
        active_since: None,
        firing_since: None,
        resolved_at: None,
        acked_by: None,
        acked_until: None,
        updated_at: 1,
    };
    let budget = Budget {
        amount_usd: 2.5,
        period: Period::Daily,
    };
    for round in 0..2 {
        let with = round == 1;
        for i in 0..6 {
            let name = format!("nf-{round}-{i}");
            let mut t = team(&name);
            t.budget = with.then_some(budget);
            store.create_team(&t).await.unwrap();
            assert_eq!(store.team(&t.id).await.unwrap().budget, t.budget);
            let mut k = key(&name, None, &name);
            k.budget = with.then_some(budget);
            store.insert_key(&k).await.unwrap();
            assert_eq!(store.key(&k.id).await.unwrap().budget, k.budget);
            let a = alert(name.clone(), with.then_some(0.5));
            store.put_alert(&a).await.unwrap();
            assert_eq!(store.alert(&name).await.unwrap(), Some(a));
            let mut r = row(i, &name, "nf", 200);
            r.ttft_ms = with.then_some(7.5);
            r.cache_similarity = with.then_some(0.93);
            store.record_requests(&[r.clone()], true).await.unwrap();
            let back = of_key(&store, "nf", 100).await;
            assert_eq!(back.iter().find(|b| b.request_id == name), Some(&r));
        }
    }
    // A restore inserts a large table in same-shaped statements: NULLs in the first, values in
    // the next (1,111 request rows per statement).
    let bulk: Vec<_> = (0..2_400)
        .map(|i| {
            let mut r = row(1_000 + i, &format!("nf-bulk{i}"), "nf-bulk", 200);
            r.ttft_ms = (i >= 1_200).then_some(1.5);
            r
        })
        .collect();
    store.record_requests(&bulk, true).await.unwrap();
    let file = std::env::temp_dir().join(format!("pylon-nf-{}.tar.gz", uuid::Uuid::new_v4()));
    store.backup(&file).await.unwrap();
    store.restore(&file, true).await.unwrap();
    let _ = std::fs::remove_file(&file);
    let back = of_key(&store, "nf-bulk", 5_000).await;
    assert_eq!(back.len(), 2_400);
    assert_eq!(
        back.iter().filter(|r| r.ttft_ms == Some(1.5)).count(),
        1_200
    );
}

#[tokio::test]
async fn sqlite_nullable_floats() {
    let dir = std::env::temp_dir().join(format!("pylon-store-{}", uuid::Uuid::new_v4()));
    nullable_floats(Store::open_sqlite(&dir).await.unwrap()).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_nullable_floats() {
    with_postgres(nullable_floats).await;
}
