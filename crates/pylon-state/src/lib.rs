//! Hot shared state for admission control: request/token rate limits (GCRA), concurrency slots
//! and spend caps, kept in-process or in Redis so that several instances share them.
//!
//! With Redis, one atomic script per request checks and takes every bucket (no read-then-write
//! race between instances). If Redis fails, admission falls back to in-process state (or rejects,
//! by config), says so once in the logs, and returns to Redis by itself when it answers again.

pub mod gcra;
mod local;
mod redis_state;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

pub use gcra::Rate;
pub use local::Local;
pub use redis_state::RedisState;

/// A rate-limited bucket to take `cost` units from.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub key: String,
    pub rate: Rate,
    pub cost: u64,
}

/// A concurrency slot: at most `max` holders at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub key: String,
    pub max: u64,
}

/// A spend cap: admission fails once `spent ≥ limit` (micro-dollars).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub key: String,
    pub limit_micros: i64,
}

/// Everything one request must pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admission {
    pub buckets: Vec<Bucket>,
    pub slots: Vec<Slot>,
    pub caps: Vec<Cap>,
}

/// What a bucket looks like after an allowed request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Remaining {
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: f64,
}

/// The admission decision. Nothing was taken unless it is `Allowed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every bucket, slot and cap had room; per-bucket state in `Admission::buckets` order.
    Allowed(Vec<Remaining>),
    /// Bucket `index` is empty; retry after this long.
    Limited {
        index: usize,
        retry_after_ms: f64,
        reset_ms: f64,
    },
    /// Slot `index` is full.
    Busy { index: usize },
    /// Cap `index` is spent.
    OverBudget { index: usize, spent_micros: i64 },
}

/// What to settle after a request: token corrections, slots to release, spend to add.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settlement {
    /// Bucket, and the units to add (negative: refund) now that the real cost is known.
    pub corrections: Vec<(String, Rate, i64)>,
    pub release: Vec<String>,
    /// Cap key, micro-dollars spent, and how long the counter should live.
    pub spend: Vec<(String, i64, Duration)>,
}

/// A failure of the shared state backend.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis is down and the config says to reject rather than fall back.
    #[error("shared rate-limit state is unavailable")]
    Unavailable,
}

/// What to do when Redis is unreachable.
/// Where an admission was taken, so its settlement (slot release, token correction, spend) goes
/// to the same place: a Redis slot released into local state would stay taken in Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Origin {
    /// In-process state.
    #[default]
    Local,
    /// The shared Redis.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisFailure {
    /// Enforce limits per instance until Redis returns.
    Local,
    /// Refuse requests until Redis returns.
    Reject,
}

/// Admission state: in-process, or Redis with an in-process fallback.
pub struct Limiter {
    local: Local,
    redis: Option<RedisState>,
    on_failure: OnRedisFailure,
    degraded: AtomicBool,
    /// While degraded, Redis is tried again only after this time (ms since start), so a dead
    /// Redis costs one timeout per second, not one per request.
    retry_at_ms: AtomicI64,
    started: std::time::Instant,
    observe: Option<Observer>,
}

/// Told the operation, duration and success of every Redis round trip (for metrics).
/// Attempts at a Redis settlement before giving up (backoff 0.1 s doubling to 10 s: ~1 min).
const SETTLE_TRIES: u32 = 10;

pub type Observer = Box<dyn Fn(&'static str, Duration, bool) + Send + Sync>;

impl Limiter {
    /// In-process state only.
    pub fn local() -> Self {
        Limiter::new(None, OnRedisFailure::Local)
    }

    /// Redis-backed state with the given failure policy.
    pub fn new(redis: Option<RedisState>, on_failure: OnRedisFailure) -> Self {
        Limiter {
            local: Local::default(),
            redis,
            on_failure,
            degraded: AtomicBool::new(false),
            retry_at_ms: AtomicI64::new(0),
            started: std::time::Instant::now(),
            observe: None,
        }
    }

    /// Reports every Redis round trip to `observe`.
    pub fn observed(mut self, observe: Observer) -> Self {
        self.observe = Some(observe);
        self
    }

    /// Times one Redis round trip and reports it.
    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let start = std::time::Instant::now();
        let r = f.await;
        if let Some(o) = &self.observe {
            o(op, start.elapsed(), r.is_ok());
        }
        r
    }

    /// Pings Redis when it is configured: `None` without Redis, else the round trip's result.
    pub async fn ping(&self) -> Option<Result<Duration, StateError>> {
        let r = self.redis.as_ref()?;
        let start = std::time::Instant::now();
        let result = self.timed("ping", r.ping()).await;
        self.mark(result.as_ref().map(|_| ()));
        Some(result.map(|()| start.elapsed()))
    }

    /// Whether Redis is configured but currently not used.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn elapsed_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    fn redis_usable(&self) -> Option<&RedisState> {
        let r = self.redis.as_ref()?;
        if self.is_degraded() && self.elapsed_ms() < self.retry_at_ms.load(Ordering::Relaxed) {
            return None;
        }
        Some(r)
    }

    fn mark(&self, result: Result<(), &StateError>) {
        match result {
            Ok(()) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "pylon::limits", "redis answers again: shared limits resumed");
                }
            }
            Err(e) => {
                self.retry_at_ms
                    .store(self.elapsed_ms() + 1_000, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "pylon::limits", error = %e, policy = ?self.on_failure,
                        "redis unreachable: enforcing limits per instance until it returns");
                }
            }
        }
    }

    /// Checks and takes everything in `a`. `now_ms` is used for in-process state; Redis uses its
    /// own clock so instances with skewed clocks still agree.
    pub async fn admit(&self, a: &Admission, now_ms: f64) -> Result<Verdict, StateError> {
        self.admit_at(a, now_ms).await.map(|(v, _)| v)
    }

    /// Like [`Limiter::admit`], also saying where the admission was taken.
    pub async fn admit_at(
        &self,
        a: &Admission,
        now_ms: f64,
    ) -> Result<(Verdict, Origin), StateError> {
        if a.buckets.is_empty() && a.slots.is_empty() && a.caps.is_empty() {
            return Ok((Verdict::Allowed(Vec::new()), Origin::Local));
        }
        if let Some(r) = self.redis_usable() {
            // Boxed: inline, the Redis round trip's future (over a kilobyte) sat in every
            // request's future, copied at each move, also where limits are local.
            match self.timed("admit", Box::pin(r.admit(a))).await {
                Ok(v) => {
                    self.mark(Ok(()));
                    return Ok((v, Origin::Redis));
                }
                Err(e) => self.mark(Err(&e)),
            }
        }
        if self.redis.is_some() && self.on_failure == OnRedisFailure::Reject {
            return Err(StateError::Unavailable);
        }
        Ok((self.local.admit(a, now_ms), Origin::Local))
    }

    /// Applies a settlement (after the response); failures are logged, not returned.
    /// Settles where the admission was taken. A Redis settlement that fails is retried with
    /// backoff for about a minute (a blip must not leave a concurrency slot taken); it never
    /// falls back to local state, which did not take that slot.
    pub async fn settle(&self, s: &Settlement, now_ms: f64, origin: Origin) {
        if s.corrections.is_empty() && s.release.is_empty() && s.spend.is_empty() {
            return;
        }
        let (Origin::Redis, Some(r)) = (origin, self.redis.as_ref()) else {
            self.local.settle(s, now_ms);
            return;
        };
        let mut wait = Duration::from_millis(100);
        for _ in 0..SETTLE_TRIES {
            match self.timed("settle", r.settle(s)).await {
                Ok(()) => {
                    self.mark(Ok(()));
                    return;
                }
                Err(e) => self.mark(Err(&e)),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
        tracing::warn!(target: "pylon::limits", slots = s.release.len(),
            "could not settle with redis for a minute: its concurrency slots expire on their own");
    }

    /// Releases concurrency slots taken in Redis with one attempt, awaited, so a client that
    /// waits for its answer before sending the next request never finds its own slot still
    /// taken. `false` when Redis did not answer: the caller leaves them to [`Limiter::settle`].
    pub async fn release_now(&self, keys: &[String]) -> bool {
        let Some(r) = self.redis.as_ref() else {
            return false;
        };
        let s = Settlement {
            release: keys.to_vec(),
            ..Settlement::default()
        };
        let done = self.timed("release", r.settle(&s)).await;
        self.mark(done.as_ref().map(|_| ()));
        done.is_ok()
    }

    /// Where admissions go while Redis answers: Redis if configured, else in-process.
    pub fn preferred(&self) -> Origin {
        if self.redis.is_some() {
            Origin::Redis
        } else {
            Origin::Local
        }
    }

    /// Settles in-process admissions at once; `false` when it must go to Redis.
    pub fn settle_if_local(&self, s: &Settlement, now_ms: f64, origin: Origin) -> bool {
        if origin == Origin::Redis {
            return false;
        }
        self.local.settle(s, now_ms);
        true
    }

    pub async fn seed_spend(&self, key: &str, micros: i64, ttl: Duration) {
        if let Some(r) = self.redis_usable() {
            if self
                .timed("seed_spend", r.seed_spend(key, micros, ttl))
                .await
                .is_ok()
            {
                return;
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        self.local.seed_spend(key, micros, ttl, now_ms);
    }
}

#[cfg(test)]
mod tests;
