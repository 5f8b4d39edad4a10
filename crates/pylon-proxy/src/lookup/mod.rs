//! The cache phase of a request: decide whether it may be cached, serve a hit (exact, or
//! semantic after the guards and the judge), wait for an identical call in flight, or prepare to
//! store the answer. The cache itself (`crate::cache`) knows nothing of requests.

mod call;

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::cache::key::{directive, identity, Directive};
use crate::cache::reply::hit_response;
use crate::cache::{Entry, Join, Policy, ResponseCache, Write};
use pylon_policy::guard::{self, Facets};

use crate::cache::judge::Decision;
use crate::cache::semantic::{shortened, Pending};
use crate::context::{Api, Call};
use crate::gateway::Gateway;
use crate::log::Record;
use crate::snapshot::Model;

/// How long a coalesced request waits for the call it joined before making its own.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The outcome of consulting the cache.
pub(crate) enum Lookup {
    /// Not cacheable, or the client said not to.
    Bypass,
    /// Served from the cache (or from an identical call that just finished).
    Hit(Response),
    /// Go to the provider; store the answer through the `Write`.
    Miss(Write),
}

/// The cache phase: for a cached model (chat or embeddings; not Messages), consults the cache;
/// a miss adds `x-pylon-cache` to `headers`.
pub(crate) async fn phase(
    gw: &Gateway,
    model: &Model,
    call: &Call,
    request_headers: &HeaderMap,
    record: &mut Record,
    headers: &mut Vec<(HeaderName, HeaderValue)>,
) -> Lookup {
    let (Some(cache), Some(policy), false) = (
        &gw.cache,
        &model.cache,
        matches!(call.api, Api::Messages | Api::Responses),
    ) else {
        return Lookup::Bypass;
    };
    let step_start = gw.tracer.is_some().then(std::time::SystemTime::now);
    // Boxed: the lookup's future (3 KB) inline sat in every request's future, cached or not.
    let found = Box::pin(lookup(cache, policy, call, request_headers, record)).await;
    record.step("cache", step_start, None);
    if let (Some(r), false) = (record.cache, matches!(found, Lookup::Hit(_))) {
        headers.push((
            HeaderName::from_static("x-pylon-cache"),
            HeaderValue::from_static(r),
        ));
    }
    found
}

/// Consults the cache for `call` (chat or embeddings) on `model` under `policy`.
async fn lookup(
    cache: &Arc<ResponseCache>,
    policy: &Policy,
    call: &Call,
    headers: &HeaderMap,
    rec: &mut Record,
) -> Lookup {
    let m = &rec.gw.metrics;
    let d = directive(headers);
    let id = (d != Directive::Bypass)
        .then(|| identity(rec.route, &rec.metric_model, &call.body))
        .flatten()
        .filter(|id| policy.any_temperature || id.temperature <= cache.max_temperature);
    let Some(id) = id else {
        m.cache_requests.with_label_values(&["bypass"]).inc();
        rec.cache = Some("bypass");
        return Lookup::Bypass;
    };
    let namespace = cache.namespace_of(rec.key_id.as_deref(), rec.team_id.as_deref());
    let key = format!("{namespace}:{}:{}", rec.metric_model, id.hash);
    let mut semantic = None;
    let write = |flight, semantic| Write {
        cache: cache.clone(),
        key: key.clone(),
        namespace: namespace.clone(),
        model: rec.metric_model.clone(),
        key_id: rec.key_id.clone(),
        ttl: policy.ttl,
        flight,
        semantic,
    };
    if d == Directive::Use {
        if let Some(e) = cache.get(&key).await {
            return hit(cache, &e, call, rec);
        }
        if let Some(found) = similar(cache, policy, call, rec, &namespace).await {
            match found {
                Ok(found) => {
                    let similarity = found.audit.similarity;
                    rec.semantic = Some(Box::new(found.audit));
                    let mut resp = hit(cache, &found.entry, call, rec);
                    if let Lookup::Hit(r) = &mut resp {
                        r.headers_mut().insert(
                            "x-pylon-cache-similarity",
                            http::HeaderValue::from_str(&format!("{similarity:.4}"))
                                .unwrap_or(http::HeaderValue::from_static("1")),
                        );
                    }
                    return resp;
                }
                Err(pending) => semantic = pending.map(Box::new),
            }
        }
        // A leader that failed or was cancelled hands the call to one of its followers (they
        // join again and one leads), not to all of them at once: no thundering herd.
        let rounds = if cache.coalesce { FLIGHT_ROUNDS } else { 0 };
        for _ in 0..rounds {
            match cache.join(&key) {
                Join::Leader(guard) => {
                    let w = write(Some(guard), semantic);
                    return miss(w, rec);
                }
                Join::Follower(mut rx, live) => {
                    let followed = tokio::time::timeout(MAX_WAIT, async {
                        tokio::select! {
                            done = rx.wait_for(Option::is_some) => Followed::Done(done.ok().and_then(|v| v.clone().flatten())),
                            iu = live.started() => Followed::Live(iu),
                        }
                    })
                    .await;
                    let answer = match followed {
                        // The same stream, relayed live as the leader's client gets it.
                        Ok(Followed::Live(iu)) if call.stream && iu == call.include_usage => {
                            rec.gw.metrics.cache_coalesced.inc();
                            return live_hit(live, rec);
                        }
                        Ok(Followed::Live(_)) => {
                            tokio::time::timeout(MAX_WAIT, rx.wait_for(Option::is_some))
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .and_then(|v| v.clone().flatten())
                        }
                        Ok(Followed::Done(answer)) => answer,
                        Err(_) => None,
                    };
                    if let Some(e) = answer {
                        rec.gw.metrics.cache_coalesced.inc();
                        return hit(cache, &e, call, rec);
                    }
                    // The call failed or was cancelled: join again.
                }
            }
        }
    }
    let w = write(None, semantic);
    miss(w, rec)
}

/// How many leaders in a row a request follows before calling on its own.
const FLIGHT_ROUNDS: usize = 3;

/// A semantic hit: the entry and what it matched.
struct Found {
    entry: Arc<Entry>,
    audit: crate::usage::SemanticAudit,
}

/// A semantic hit, or what to index the answer under.
type Similar = Result<Found, Option<Pending>>;

/// Looks for the answer to a similar question asked in the same context; `None` when the
/// semantic cache does not apply to this request. A candidate above the threshold is served
/// only if the guards agree, the pair was never reported wrong, and the judge (when
/// configured) says YES.
async fn similar(
    cache: &ResponseCache,
    policy: &Policy,
    call: &Call,
    rec: &Record,
    namespace: &str,
) -> Option<Similar> {
    let sem = cache.semantic.as_ref().filter(|_| policy.semantic)?;
    if rec.route != "/v1/chat/completions" {
        return None;
    }
    let q = crate::cache::semantic::question(&rec.metric_model, &call.body, sem.scope)?;
    let m = &rec.gw.metrics.semantic;
    if q.text.len() > sem.max_chars && q.text.chars().count() > sem.max_chars {
        m.skipped.with_label_values(&["too_long"]).inc();
        return None;
    }
    // Tenants never share vectors: the namespace is part of the context.
    let context = format!("{namespace}:{}", q.context);
    let vector = match sem
        .embed(&q.text, |text| {
            call::embedding(&rec.gw, &sem.embedding_model, text)
        })
        .await
    {
        Ok(v) => v,
        Err(e) => {
            m.skipped.with_label_values(&["no_embedding"]).inc();
            tracing::warn!(target: "pylon::cache", request_id = %rec.request_id, error = %e, "semantic cache skipped: no embedding");
            return None;
        }
    };
    let started = std::time::Instant::now();
    let candidates = sem.similar(&context, &vector);
    m.lookup.observe(started.elapsed().as_secs_f64());
    let facets = Facets::of(&q.text);
    for (stored, similarity) in candidates {
        if sem.guards {
            if let Err(reason) = guard::check(&facets, &stored.facets) {
                m.rejected.with_label_values(&[reason.as_str()]).inc();
                continue;
            }
        }
        if cache.blocked(&q.id, &stored.entry).await {
            m.rejected.with_label_values(&["blocked"]).inc();
            continue;
        }
        let Some(entry) = cache.get(&stored.entry).await else {
            continue;
        };
        if let Some(judge) = &sem.judge {
            let said = judge
                .decide(&rec.gw.metrics, &q.id, &stored.entry, || {
                    call::judge(&rec.gw, judge, &q.text, &stored.text)
                })
                .await;
            match said {
                Decision::Same => {}
                Decision::Different => {
                    m.rejected.with_label_values(&["judge"]).inc();
                    continue;
                }
                Decision::Failed => {
                    m.rejected.with_label_values(&["judge_error"]).inc();
                    continue;
                }
            }
        }
        m.hits.inc();
        let audit = crate::usage::SemanticAudit {
            similarity,
            matched: stored.text.to_string(),
            entry: stored.entry.clone(),
            question: q.id,
        };
        return Some(Ok(Found { entry, audit }));
    }
    Some(Err(Some(Pending {
        context,
        vector,
        text: shortened(&q.text),
        facets,
    })))
}

/// What a follower saw first: the leader's stream starting, or the call's end.
enum Followed {
    Live(bool),
    Done(Option<Arc<Entry>>),
}

/// A follower's response fed from the leader's live stream.
fn live_hit(live: Arc<crate::cache::Live>, rec: &mut Record) -> Lookup {
    rec.gw
        .metrics
        .cache_requests
        .with_label_values(&["hit"])
        .inc();
    rec.cache = Some("hit");
    let mut resp = Response::new(axum::body::Body::from_stream(live.follow()));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    h.insert("x-pylon-cache", http::HeaderValue::from_static("hit"));
    crate::respond::overhead_header(&mut resp, rec);
    Lookup::Hit(resp)
}

fn miss(w: Write, rec: &mut Record) -> Lookup {
    rec.gw
        .metrics
        .cache_requests
        .with_label_values(&["miss"])
        .inc();
    rec.cache = Some("miss");
    Lookup::Miss(w)
}

fn hit(cache: &ResponseCache, e: &Entry, call: &Call, rec: &mut Record) -> Lookup {
    let m = &rec.gw.metrics;
    m.cache_requests.with_label_values(&["hit"]).inc();
    m.cache_tokens_saved.inc_by(e.meta.usage.total_tokens);
    if let Some(cost) = rec
        .gw
        .settings()
        .prices
        .cost(&e.meta.served_model, e.meta.usage)
    {
        m.cache_cost_saved.inc_by(cost);
    }
    rec.cache = Some("hit");
    rec.provider = Some(e.meta.provider.clone());
    rec.served_model = Some(e.meta.served_model.clone());
    let age = (cache.now_ms() - e.meta.created_ms) / 1000;
    let mut resp = hit_response(e, age, call.stream, call.include_usage);
    crate::respond::overhead_header(&mut resp, rec);
    Lookup::Hit(resp)
}
