//! The app routes' edge cache: `GET` answers the application marks cacheable, kept in memory
//! per route (bounded in bytes, least recently used first out), one entry per URL with up to
//! [`MAX_VARIANTS`] variants for the request headers its `Vary` names. What may be kept and for
//! how long is `policy`'s decision; this module only stores and finds.

pub(crate) mod policy;

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

/// Variants kept per URL (one per combination of the `Vary` headers' values).
const MAX_VARIANTS: usize = 4;

/// A stored answer.
pub(crate) struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request's values of the headers the answer varies on, when it was stored.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Unix ms (on the cache's clock) when stored, and until when fresh.
    stored_ms: i64,
    fresh_until_ms: i64,
}

impl Stored {
    /// Seconds since it was stored, for the `Age` header.
    pub fn age_secs(&self, now_ms: i64) -> u64 {
        u64::try_from((now_ms - self.stored_ms) / 1000).unwrap_or(0)
    }

    fn matches(&self, request: &HeaderMap) -> bool {
        self.vary.iter().all(|(n, v)| request.get(n) == v.as_ref())
    }

    fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + headers + 128
    }
}

/// The variants of one URL.
struct Variants(Vec<Arc<Stored>>);

/// One route's cache.
pub(crate) struct EdgeCache {
    entries: moka::sync::Cache<u64, Arc<Variants>>,
    hasher: std::collections::hash_map::RandomState,
    /// Largest answer kept, in bytes.
    pub max_entry_bytes: u64,
    max_bytes: u64,
    /// Added to the wall clock; tests move it forward to expire entries.
    clock_offset_ms: AtomicI64,
    /// URLs pushed out by the byte bound since [`EdgeCache::take_evictions`] last asked.
    evictions: Arc<AtomicU64>,
}

impl EdgeCache {
    /// A cache holding at most `max_bytes` of answers.
    pub fn new(max_bytes: u64, max_entry_bytes: u64) -> EdgeCache {
        let evictions = Arc::new(AtomicU64::new(0));
        let evicted = evictions.clone();
        EdgeCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &u64, v: &Arc<Variants>| {
                    let w: usize = v.0.iter().map(|s| s.weight()).sum();
                    u32::try_from(w).unwrap_or(u32::MAX)
                })
                .eviction_listener(move |_k, _v, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        evicted.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build(),
            hasher: std::collections::hash_map::RandomState::new(),
            max_entry_bytes,
            max_bytes,
            clock_offset_ms: AtomicI64::new(0),
            evictions,
        }
    }

    /// Whether this cache has these bounds (a reload keeps it only then).
    pub fn sized(&self, max_bytes: u64, max_entry_bytes: u64) -> bool {
        self.max_bytes == max_bytes && self.max_entry_bytes == max_entry_bytes
    }

    /// Evictions by size since the last call (reported as a metric by the caller).
    pub fn take_evictions(&self) -> u64 {
        self.evictions.swap(0, Ordering::Relaxed)
    }

    /// Unix ms on the cache's clock.
    pub fn now_ms(&self) -> i64 {
        crate::auth::unix_now_ms() + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    /// Moves the cache's clock forward (tests of expiry).
    pub fn advance(&self, by: Duration) {
        self.clock_offset_ms.fetch_add(
            i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The key of a URL as the client named it.
    pub fn key(&self, host: &str, path_and_query: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        host.hash(&mut h);
        path_and_query.hash(&mut h);
        h.finish()
    }

    /// The fresh answer stored for this URL and these request headers.
    pub fn get(&self, key: u64, request: &HeaderMap) -> Option<Arc<Stored>> {
        let now = self.now_ms();
        self.entries
            .get(&key)?
            .0
            .iter()
            .find(|s| s.fresh_until_ms > now && s.matches(request))
            .cloned()
    }

    /// Keeps an answer, fresh for `fresh`, already `age` seconds old, replacing the variant for
    /// the same header values (or the oldest when the URL already has [`MAX_VARIANTS`]).
    pub fn put(
        &self,
        key: u64,
        request: &HeaderMap,
        vary: &[HeaderName],
        fresh: Duration,
        age: u64,
        (status, headers, body): (StatusCode, HeaderMap, Bytes),
    ) {
        let now = self.now_ms();
        let age_ms = i64::try_from(age.saturating_mul(1000)).unwrap_or(i64::MAX);
        let stored = Arc::new(Stored {
            status,
            headers,
            body,
            vary: vary
                .iter()
                .map(|n| (n.clone(), request.get(n).cloned()))
                .collect(),
            stored_ms: now.saturating_sub(age_ms),
            fresh_until_ms: now
                .saturating_add(i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX)),
        });
        let mut variants: Vec<Arc<Stored>> = self
            .entries
            .get(&key)
            .map(|v| {
                v.0.iter()
                    .filter(|s| s.fresh_until_ms > now && s.vary != stored.vary)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if variants.len() >= MAX_VARIANTS {
            variants.sort_by_key(|s| std::cmp::Reverse(s.stored_ms));
            variants.truncate(MAX_VARIANTS - 1);
        }
        variants.push(stored);
        self.entries.insert(key, Arc::new(Variants(variants)));
    }

    /// Bytes held (approximately; moka settles its counts lazily).
    #[cfg(test)]
    fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &'static str) -> (StatusCode, HeaderMap, Bytes) {
        (
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body.as_bytes()),
        )
    }

    fn req(lang: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(l) = lang {
            h.insert("accept-language", l.parse().unwrap());
        }
        h
    }

    #[test]
    fn expiry_on_the_cache_clock_and_variants() {
        let c = EdgeCache::new(1 << 20, 1 << 16);
        let k = c.key("example.com", "/a.css");
        let vary = [HeaderName::from_static("accept-language")];
        c.put(
            k,
            &req(Some("en")),
            &vary,
            Duration::from_secs(60),
            0,
            answer("en"),
        );
        c.put(
            k,
            &req(Some("de")),
            &vary,
            Duration::from_secs(120),
            0,
            answer("de"),
        );
        assert_eq!(c.get(k, &req(Some("en"))).unwrap().body, "en");
        assert_eq!(c.get(k, &req(Some("de"))).unwrap().body, "de");
        assert!(c.get(k, &req(None)).is_none());
        assert!(c
            .get(c.key("other.example", "/a.css"), &req(Some("en")))
            .is_none());
        c.advance(Duration::from_secs(61));
        assert!(c.get(k, &req(Some("en"))).is_none());
        let de = c.get(k, &req(Some("de"))).unwrap();
        assert_eq!(de.age_secs(c.now_ms()), 61);
        // A URL keeps at most MAX_VARIANTS variants.
        for l in ["a", "b", "c", "d", "e", "f"] {
            c.put(
                k,
                &req(Some(l)),
                &vary,
                Duration::from_secs(600),
                0,
                answer("x"),
            );
        }
        assert_eq!(c.entries.get(&k).unwrap().0.len(), MAX_VARIANTS);
        assert!(c.get(k, &req(Some("f"))).is_some());
    }

    #[test]
    fn bounded_in_bytes() {
        let c = EdgeCache::new(64 * 1024, 16 * 1024);
        let body = Bytes::from(vec![b'x'; 10 * 1024]);
        for i in 0..100 {
            let k = c.key("h", &format!("/{i}"));
            c.put(
                k,
                &HeaderMap::new(),
                &[],
                Duration::from_secs(60),
                0,
                (StatusCode::OK, HeaderMap::new(), body.clone()),
            );
        }
        assert!(c.weighted_size() <= 64 * 1024, "{}", c.weighted_size());
        assert!(c.take_evictions() > 80);
        assert_eq!(c.take_evictions(), 0);
    }
}
