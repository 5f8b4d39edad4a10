//! What a shared cache may keep and for how long (RFC 9111), decided from headers alone: no
//! I/O and no clock of its own, so every rule is tested with plain values.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

/// Longest freshness honoured, whatever the application says (a year, as `immutable` assets get).
const MAX_FRESH: Duration = Duration::from_secs(366 * 24 * 3600);

/// Whether a request may be answered from the cache, and whether its answer may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestPolicy {
    /// Look up, and keep the answer when it is cacheable.
    Use,
    /// Skip the lookup (the client asked for a fresh answer) but keep a cacheable answer.
    Refresh,
    /// Neither: not a `GET` or `HEAD`, credentials, or `no-store`.
    Bypass,
}

/// How the cache treats this request.
pub(crate) fn request_policy(method: &Method, headers: &HeaderMap) -> RequestPolicy {
    // Answers to requests with credentials are the caller's own. `HEAD` is answered from a
    // stored `GET` (never stored itself: it has no body).
    let readable = method == Method::GET || method == Method::HEAD;
    if !readable || headers.contains_key(header::AUTHORIZATION) {
        return RequestPolicy::Bypass;
    }
    let directives = directives(headers, header::CACHE_CONTROL);
    if directives.iter().any(|(d, _)| d == "no-store") {
        return RequestPolicy::Bypass;
    }
    let pragma_no_cache = headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-cache"));
    if pragma_no_cache
        || directives
            .iter()
            .any(|(d, v)| d == "no-cache" || (d == "max-age" && v.as_deref() == Some("0")))
    {
        return RequestPolicy::Refresh;
    }
    RequestPolicy::Use
}

/// How long an answer stays fresh from now, if a shared cache may keep it at all: an explicit
/// lifetime (`s-maxage`, `max-age`, or `Expires` against `Date`) less the `Age` it already
/// has; never with `no-store`, `private`, `no-cache`, `Set-Cookie` or `Vary: *`.
pub(crate) fn freshness(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if !matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 410
    ) {
        return None;
    }
    if headers.contains_key(header::SET_COOKIE) || vary(headers).is_none() {
        return None;
    }
    let cc = directives(headers, header::CACHE_CONTROL);
    if cc
        .iter()
        .any(|(d, _)| matches!(d.as_str(), "no-store" | "private" | "no-cache"))
    {
        return None;
    }
    let seconds = |name: &str| {
        cc.iter()
            .find(|(d, _)| d == name)
            .and_then(|(_, v)| v.as_deref()?.parse::<u64>().ok())
            .map(Duration::from_secs)
    };
    let lifetime = seconds("s-maxage")
        .or_else(|| seconds("max-age"))
        .or_else(|| {
            let date = |h| {
                let v = headers.get(h)?.to_str().ok()?;
                httpdate::parse_http_date(v).ok()
            };
            let expires = date(header::EXPIRES)?;
            let origin_now = date(header::DATE).unwrap_or_else(std::time::SystemTime::now);
            Some(expires.duration_since(origin_now).unwrap_or_default())
        })?
        .min(MAX_FRESH);
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let left = lifetime.saturating_sub(age);
    (!left.is_zero()).then_some(left)
}

/// The request headers an answer varies on (lower-cased names), or `None` for `Vary: *`.
pub(crate) fn vary(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in headers.get_all(header::VARY) {
        for name in v.to_str().unwrap_or("*").split(',') {
            let name = name.trim();
            if name == "*" {
                return None;
            }
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    Some(names)
}

/// Whether a conditional request is satisfied by a stored answer with these headers, so a
/// `304 Not Modified` is the reply: `If-None-Match` by weak comparison, else
/// `If-Modified-Since` against `Last-Modified`.
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let etag = weak(etag);
        return inm
            .to_str()
            .unwrap_or_default()
            .split(',')
            .any(|t| t.trim() == "*" || weak(t) == etag);
    }
    let date = |h: &HeaderMap, name| httpdate::parse_http_date(h.get(name)?.to_str().ok()?).ok();
    match (
        date(request, header::IF_MODIFIED_SINCE),
        date(stored, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// `Cache-Control`-style directives, lower-cased, with their values unquoted.
fn directives(headers: &HeaderMap, name: HeaderName) -> Vec<(String, Option<String>)> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            Some(match d.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"').to_owned()),
                ),
                None => (d.to_ascii_lowercase(), None),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn lifetimes_from_directives_expires_and_age() {
        let ok = StatusCode::OK;
        let f = |p: &[(&str, &str)]| freshness(ok, &headers(p));
        assert_eq!(
            f(&[("cache-control", "public, max-age=60")]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            f(&[("cache-control", "max-age=60, s-maxage=600")]),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            f(&[("cache-control", "max-age=60"), ("age", "50")]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(f(&[("cache-control", "max-age=60"), ("age", "60")]), None);
        assert_eq!(
            f(&[
                ("date", "Sun, 06 Dec 2026 10:00:00 GMT"),
                ("expires", "Sun, 06 Dec 2026 10:05:00 GMT")
            ]),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            f(&[("cache-control", "max-age=99999999999")]),
            Some(MAX_FRESH)
        );
        // No explicit lifetime: nothing is guessed.
        assert_eq!(f(&[("etag", "\"a\"")]), None);
        assert_eq!(f(&[("cache-control", "max-age=abc")]), None);
    }

    #[test]
    fn what_is_never_kept() {
        let f =
            |s: u16, p: &[(&str, &str)]| freshness(StatusCode::from_u16(s).unwrap(), &headers(p));
        for cc in [
            "private, max-age=60",
            "no-store, max-age=60",
            "no-cache, max-age=60",
        ] {
            assert_eq!(f(200, &[("cache-control", cc)]), None, "{cc}");
        }
        assert_eq!(
            f(
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "s=1")]
            ),
            None
        );
        assert_eq!(
            f(200, &[("cache-control", "max-age=60"), ("vary", "*")]),
            None
        );
        for status in [206, 302, 500, 503] {
            assert_eq!(f(status, &[("cache-control", "max-age=60")]), None);
        }
        assert!(f(404, &[("cache-control", "max-age=60")]).is_some());
    }

    #[test]
    fn request_policies() {
        let get = Method::GET;
        assert_eq!(request_policy(&get, &headers(&[])), RequestPolicy::Use);
        assert_eq!(
            request_policy(&Method::POST, &headers(&[])),
            RequestPolicy::Bypass
        );
        assert_eq!(
            request_policy(&Method::HEAD, &headers(&[])),
            RequestPolicy::Use
        );
        assert_eq!(
            request_policy(&get, &headers(&[("authorization", "Bearer x")])),
            RequestPolicy::Bypass
        );
        assert_eq!(
            request_policy(&get, &headers(&[("cache-control", "no-store")])),
            RequestPolicy::Bypass
        );
        for h in [
            ("cache-control", "no-cache"),
            ("cache-control", "max-age=0"),
            ("pragma", "no-cache"),
        ] {
            assert_eq!(request_policy(&get, &headers(&[h])), RequestPolicy::Refresh);
        }
    }

    #[test]
    fn vary_names_and_conditionals() {
        assert_eq!(
            vary(&headers(&[
                ("vary", "Accept-Encoding, accept-language"),
                ("vary", "accept-encoding")
            ])),
            Some(vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept-language")
            ])
        );
        let stored = headers(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Sun, 06 Dec 2026 10:00:00 GMT"),
        ]);
        assert!(not_modified(
            &headers(&[("if-none-match", "\"v0\", \"v1\"")]),
            &stored
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &stored));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &headers(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Sun, 06 Dec 2026 11:00:00 GMT")
            ]),
            &stored
        ));
        assert!(not_modified(
            &headers(&[("if-modified-since", "Sun, 06 Dec 2026 11:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", "Sun, 06 Dec 2026 09:00:00 GMT")]),
            &stored
        ));
    }
}
