//! The semantic cache's correctness through the HTTP surface: guards refuse look-alike questions
//! a bare threshold would serve (one test per class), the judge accepts, refuses and fails
//! safe, and a hit reported wrong is evicted and never served again.

use std::time::Duration;

use pylon_providers::mock::Behaviour;
use serde_json::{json, Value};

use crate::harness::*;

const ADMIN: &str = "semantic-admin";

/// A gateway whose `b-only` model is semantically cached (embeddings from mock `a`), with a
/// low threshold so that questions differing in one word are "similar", `extra` under
/// `[cache.semantic]`, and a `judge` model on `judge` when given.
async fn start(extra: &str, judge: Option<&MockServer>) -> (MockServer, MockServer, Gateway) {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let mut text = format!(
        "{TWO_MOCKS}\n[cache]\nenabled = true\n[cache.semantic]\nembedding_model = \"embed\"\nthreshold = 0.7\n{extra}\n"
    )
    .replace(
        "name = \"b-only\"\ntargets",
        "name = \"b-only\"\ncache = { semantic = true }\ntargets",
    )
    .replace("{a}", &a.addr.to_string())
    .replace("{b}", &b.addr.to_string())
        + "\n[[models]]\nname = \"embed\"\ntargets = [ { provider = \"a\", model = \"mock-embed\" } ]\n"
        + "\n[request_log]\nflush = \"20ms\"\n";
    if let Some(j) = judge {
        text += &format!(
            "\n[[providers]]\nname = \"j\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\napi_key = \"sk-judge\"\n\n[[models]]\nname = \"judge\"\ntargets = [ {{ provider = \"j\", model = \"mock-judge\" }} ]\n",
            j.addr
        );
    }
    let (gw, _control) = Gateway::with_admin(&text, Some(ADMIN)).await;
    (a, b, gw)
}

/// What one question got: the cache result, the request id, the similarity header.
struct Asked {
    cache: String,
    request_id: String,
    similarity: Option<f64>,
}

async fn ask(gw: &Gateway, context: &str, question: &str) -> Asked {
    let body = json!({"model": "b-only", "temperature": 0, "messages": [
        {"role": "system", "content": context}, {"role": "user", "content": question}]});
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    Asked {
        cache: h("x-pylon-cache").unwrap(),
        request_id: h("x-request-id").unwrap(),
        similarity: h("x-pylon-cache-similarity").map(|s| s.parse().unwrap()),
    }
}

fn fresh_context() -> String {
    format!("be brief {}", uuid::Uuid::new_v4().simple())
}

/// Pairs that share almost every word (so the mock's bag-of-words embedding rates them alike)
/// but not their answer, with the guard class that must refuse each.
const LOOK_ALIKES: [(&str, &str, &str); 6] = [
    (
        "What is the recommended amoxicillin dose for a child who weighs 40 kg",
        "What is the recommended amoxicillin dose for a child who weighs 10 kg",
        "number",
    ),
    (
        "What was the total revenue of the company in the third quarter of 2024",
        "What was the total revenue of the company in the third quarter of 2023",
        "date",
    ),
    (
        "Which countries do not require a visa for citizens of the United States",
        "Which countries require a visa for citizens of the United States",
        "negation",
    ),
    (
        "How do I convert an integer to a string in Java",
        "How do I convert a string to an integer in Java",
        "direction",
    ),
    (
        "What is the population of the capital city of France today roughly",
        "What is the population of the capital city of Germany today roughly",
        "name",
    ),
    (
        "Which foods should I avoid while I am taking warfarin every day",
        "Which foods should I eat while I am taking warfarin every day",
        "opposite",
    ),
];

#[tokio::test]
async fn each_guard_refuses_a_look_alike_that_the_bare_threshold_serves() {
    let (_a, b, bare) = start("guards = false", None).await;
    for (first, second, class) in LOOK_ALIKES {
        let ctx = fresh_context();
        assert_eq!(ask(&bare, &ctx, first).await.cache, "miss");
        let wrong = ask(&bare, &ctx, second).await;
        assert_eq!(
            wrong.cache, "hit",
            "without guards the {class} look-alike is served (similarity {:?})",
            wrong.similarity
        );
    }
    assert_eq!(b.stats().requests, 6);

    let (_a, b, guarded) = start("", None).await;
    for (first, second, class) in LOOK_ALIKES {
        let ctx = fresh_context();
        assert_eq!(ask(&guarded, &ctx, first).await.cache, "miss");
        let series = format!("pylon_cache_semantic_rejected_total{{reason=\"{class}\"}}");
        let before = metric(&guarded, &series).await;
        let asked = ask(&guarded, &ctx, second).await;
        assert_eq!(asked.cache, "miss", "the {class} guard refuses it");
        assert_eq!(metric(&guarded, &series).await, before + 1.0, "{series}");
    }
    assert_eq!(
        b.stats().requests,
        12,
        "every question reached the provider"
    );
    // A paraphrase that differs in none of those ways still hits.
    let ctx = fresh_context();
    ask(&guarded, &ctx, "What is the capital city of France").await;
    let p = ask(&guarded, &ctx, "Tell me what is the capital city of France").await;
    assert_eq!(p.cache, "hit");
    assert_eq!(
        metric(&guarded, "pylon_cache_semantic_hits_total").await,
        1.0
    );
}

#[tokio::test]
async fn a_question_longer_than_the_limit_is_never_compared() {
    let (_a, _b, gw) = start("max_question_chars = 60", None).await;
    let ctx = fresh_context();
    let long = "Please explain in detail how the capital city of France grew over time";
    assert_eq!(ask(&gw, &ctx, long).await.cache, "miss");
    let similar = format!("{long} and why");
    assert_eq!(ask(&gw, &ctx, &similar).await.cache, "miss");
    assert_eq!(
        metric(
            &gw,
            "pylon_cache_semantic_skipped_total{reason=\"too_long\"}"
        )
        .await,
        2.0
    );
}

/// POSTs feedback until the hit's row is in the request log; the final answer.
async fn report(gw: &Gateway, body: Value) -> (u16, Value) {
    for _ in 0..300 {
        let (status, v) = admin_post(gw, ADMIN, "/admin/v1/cache/feedback", &body).await;
        if status != 404 {
            return (status, v);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (404, Value::Null)
}

#[tokio::test]
async fn a_hit_reported_wrong_is_evicted_audited_and_never_served_again() {
    let (_a, b, gw) = start("", None).await;
    let ctx = fresh_context();
    let original = "What is the capital city of France";
    let paraphrase = "Tell me what is the capital city of France";
    assert_eq!(ask(&gw, &ctx, original).await.cache, "miss");
    let hit = ask(&gw, &ctx, paraphrase).await;
    assert_eq!(hit.cache, "hit");

    // The request log says what the hit matched, and how closely.
    let mut row = Value::Null;
    for _ in 0..300 {
        let page = admin_get(&gw, ADMIN, "/admin/v1/requests?limit=10").await;
        if let Some(r) = page["data"].as_array().and_then(|rows| {
            rows.iter()
                .find(|r| r["request_id"] == hit.request_id.as_str())
        }) {
            row = r.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(row["cache"], "hit", "{row}");
    assert_eq!(row["cache_matched"], original);
    let logged = row["cache_similarity"].as_f64().unwrap();
    assert!((logged - hit.similarity.unwrap()).abs() < 1e-3, "{row}");

    let (status, done) = report(
        &gw,
        json!({"request_id": hit.request_id, "note": "wrong city"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["evicted"], true);
    assert_eq!(done["blocked"], true);
    assert_eq!(done["matched"], original);
    assert_eq!(metric(&gw, "pylon_cache_semantic_wrong_total").await, 1.0);

    // The entry is gone: the original question goes to the provider and is stored again …
    let calls = b.stats().requests;
    assert_eq!(ask(&gw, &ctx, original).await.cache, "miss");
    assert_eq!(b.stats().requests, calls + 1);
    // … but it is never again the answer to the question that reported it.
    let again = ask(&gw, &ctx, paraphrase).await;
    assert_eq!(again.cache, "miss");
    assert!(
        metric(
            &gw,
            "pylon_cache_semantic_rejected_total{reason=\"blocked\"}"
        )
        .await
            >= 1.0
    );

    // Unknown ids and bad bodies get clear 4xx answers, through the API and the CLI.
    let (status, v) = report(&gw, json!({"request_id": "no-such-request"})).await;
    assert_eq!(status, 404, "{v}");
    let url = gw.url("");
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pylon"))
            .args([
                "cache",
                "--url",
                &url,
                "--token",
                ADMIN,
                "wrong",
                "no-such-request",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!cli.status.success());
    let said = String::from_utf8_lossy(&cli.stderr);
    assert!(
        said.contains("404") && said.contains("no semantic cache hit"),
        "{said}"
    );
    let (status, _) = report(&gw, json!({"request_id": "has space"})).await;
    assert_eq!(status, 400);
    let (status, _) = report(&gw, json!(["x"])).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_judge_accepts_refuses_remembers_and_fails_safe() {
    let judge = MockServer::start().await;
    let yes = Behaviour {
        reply: Some("YES".into()),
        ..Behaviour::default()
    };
    judge.set(yes.clone());
    let (_a, b, gw) = start(
        "[cache.semantic.verify]\nmodel = \"judge\"\ntimeout = \"300ms\"",
        Some(&judge),
    )
    .await;
    let original = "What is the capital city of France";
    let paraphrase = "Tell me what is the capital city of France";

    // YES: served, and the decision is remembered for the pair.
    let ctx = fresh_context();
    ask(&gw, &ctx, original).await;
    assert_eq!(ask(&gw, &ctx, paraphrase).await.cache, "hit");
    assert_eq!(ask(&gw, &ctx, paraphrase).await.cache, "hit");
    assert_eq!(judge.stats().requests, 1, "the second hit used the memo");
    assert_eq!(
        metric(&gw, "pylon_cache_semantic_judge_total{decision=\"accept\"}").await,
        1.0
    );

    // NO: a miss, counted.
    judge.set(Behaviour {
        reply: Some("NO".into()),
        ..Behaviour::default()
    });
    let ctx = fresh_context();
    ask(&gw, &ctx, original).await;
    assert_eq!(ask(&gw, &ctx, paraphrase).await.cache, "miss");
    assert_eq!(
        metric(&gw, "pylon_cache_semantic_rejected_total{reason=\"judge\"}").await,
        1.0
    );

    // Down or slow: a miss, never a hit.
    for broken in [
        Behaviour {
            error_status: Some(500),
            ..Behaviour::default()
        },
        Behaviour {
            latency: Duration::from_secs(2),
            ..yes.clone()
        },
    ] {
        judge.set(broken);
        let ctx = fresh_context();
        ask(&gw, &ctx, original).await;
        let calls = b.stats().requests;
        assert_eq!(ask(&gw, &ctx, paraphrase).await.cache, "miss");
        assert_eq!(b.stats().requests, calls + 1, "answered by the provider");
    }
    assert_eq!(
        metric(
            &gw,
            "pylon_cache_semantic_rejected_total{reason=\"judge_error\"}"
        )
        .await,
        2.0
    );
    assert!(metric(&gw, "pylon_cache_semantic_judge_seconds_count").await >= 4.0);
}
