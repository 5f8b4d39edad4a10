//! The edge-cache phase of an app route: answer from the route's cache (a `304` when the
//! client already holds it), or keep what the application answers when it may be kept. The
//! answer is judged with the route's header rules applied, as the client will see it.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use http_body_util::BodyExt;
use pylon_telemetry::prometheus::IntCounterVec;

use crate::edge_cache::policy::{self, RequestPolicy};
use crate::edge_cache::EdgeCache;
use crate::snapshot::AppRoute;

/// Headers a `304 Not Modified` repeats from the stored answer (RFC 9110 §15.4.5).
const NOT_MODIFIED_KEEPS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// One request's use of its route's cache.
pub(crate) struct Lookup<'a> {
    cache: &'a EdgeCache,
    prefix: &'a str,
    key: u64,
    policy: RequestPolicy,
    /// A `HEAD`: answered from a stored `GET` without its body, and never stored.
    head: bool,
    /// The request's headers: `Vary` is only known from the answer.
    request: HeaderMap,
    metrics: &'a IntCounterVec,
}

impl<'a> Lookup<'a> {
    /// The lookup for a request on a route with a cache; `None` when there is no cache or the
    /// request must not use it (not a `GET`, credentials, `no-store`).
    pub fn new(
        route: &'a AppRoute,
        req: &Request,
        arm: &str,
        metrics: &'a IntCounterVec,
    ) -> Option<Lookup<'a>> {
        let cache = route.cache.as_deref()?;
        let policy = policy::request_policy(req.method(), req.headers());
        if policy == RequestPolicy::Bypass {
            metrics.with_label_values(&[&route.prefix, "bypass"]).inc();
            return None;
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        // A rollout's arms answer differently: each keeps its own entries.
        let key = cache.key(&format!("{arm}|{host}"), target);
        Some(Lookup {
            cache,
            prefix: &route.prefix,
            key,
            policy,
            head: req.method() == http::Method::HEAD,
            request: req.headers().clone(),
            metrics,
        })
    }

    /// A fresh stored answer for this request, or `304` when the client's copy is current.
    pub fn hit(&self, request: &HeaderMap) -> Option<Response> {
        if self.policy != RequestPolicy::Use {
            return None;
        }
        let stored = self.cache.get(self.key, request)?;
        let age = HeaderValue::from(stored.age_secs(self.cache.now_ms()));
        let mut resp = if policy::not_modified(request, &stored.headers) {
            self.count("revalidated");
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            let h = resp.headers_mut();
            for name in NOT_MODIFIED_KEEPS.iter().chain([&header::LAST_MODIFIED]) {
                for v in stored.headers.get_all(name) {
                    h.append(name.clone(), v.clone());
                }
            }
            resp
        } else {
            self.count("hit");
            let body = if self.head {
                Body::empty()
            } else {
                Body::from(stored.body.clone())
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = stored.status;
            *resp.headers_mut() = stored.headers.clone();
            resp
        };
        let h = resp.headers_mut();
        h.insert(header::AGE, age);
        h.insert("x-pylon-cache", HeaderValue::from_static("hit"));
        Some(resp)
    }

    /// Keeps the application's answer when it may be kept and is small enough, and returns it.
    pub async fn keep(self, resp: Response) -> Response {
        if self.head {
            self.count("miss");
            return marked(resp, "miss");
        }
        let Some(fresh) = policy::freshness(resp.status(), resp.headers()) else {
            self.count("miss");
            return marked(resp, "miss");
        };
        let Some(mut vary) = policy::vary(resp.headers()) else {
            self.count("miss");
            return marked(resp, "miss");
        };
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_none_or(|n| n > self.cache.max_entry_bytes) {
            // Unknown or too long: streamed through, never buffered.
            self.count("too_large");
            return marked(resp, "miss");
        }
        // A compressed answer depends on what the client accepts, said or not.
        if resp.headers().contains_key(header::CONTENT_ENCODING)
            && !vary.contains(&header::ACCEPT_ENCODING)
        {
            vary.push(header::ACCEPT_ENCODING);
        }
        let (mut parts, body) = resp.into_parts();
        let limit = usize::try_from(self.cache.max_entry_bytes).unwrap_or(usize::MAX);
        let bytes = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                self.count("miss");
                let mut resp = Response::new(Body::from(
                    "the application's answer broke off before its end",
                ));
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                return resp;
            }
        };
        // `Age` is counted from now on: the stored lifetime already has it taken off.
        let age = parts
            .headers
            .remove(header::AGE)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        self.cache.put(
            self.key,
            &self.request,
            &vary,
            fresh,
            age,
            (parts.status, parts.headers.clone(), bytes.clone()),
        );
        self.count("stored");
        let evicted = self.cache.take_evictions();
        if evicted > 0 {
            self.metrics
                .with_label_values(&[self.prefix, "evicted"])
                .inc_by(evicted);
        }
        if age > 0 {
            parts.headers.insert(header::AGE, HeaderValue::from(age));
        }
        marked(Response::from_parts(parts, Body::from(bytes)), "miss")
    }

    fn count(&self, result: &str) {
        self.metrics.with_label_values(&[self.prefix, result]).inc();
    }
}

fn marked(mut resp: Response, how: &'static str) -> Response {
    resp.headers_mut()
        .insert("x-pylon-cache", HeaderValue::from_static(how));
    resp
}

/// Moves every route cache's clock forward (tests of expiry).
pub(crate) fn advance(routes: &[AppRoute], by: std::time::Duration) {
    for c in routes.iter().filter_map(|r| r.cache.as_ref()) {
        c.advance(by);
    }
}
