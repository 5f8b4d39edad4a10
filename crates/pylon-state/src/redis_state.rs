//! Admission state in Redis: one Lua script checks and takes every bucket, slot and cap of a
//! request atomically, on Redis's own clock, so any number of instances agree exactly.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::{Admission, Remaining, Settlement, StateError, Verdict};

const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local nb, nc, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 4
local tats, out = {}, {}
for i = 1, nb do
  local limit, period, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local interval = period / limit
  if cost > limit then cost = limit end
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local ahead = new_tat - now
  if ahead > period + 0.000001 then
    return {1, i - 1, math.ceil(ahead - period), math.ceil(tat - now)}
  end
  tats[i] = new_tat
  out[#out + 1] = math.floor((period - ahead) / interval)
  out[#out + 1] = math.ceil(ahead)
end
for j = 1, nc do
  local max = tonumber(ARGV[a])
  a = a + 1
  if tonumber(redis.call('GET', KEYS[nb + j]) or 0) >= max then return {2, j - 1, 0, 0} end
end
for k = 1, ns do
  local limit = tonumber(ARGV[a])
  a = a + 1
  local spent = tonumber(redis.call('GET', KEYS[nb + nc + k]) or 0)
  if spent >= limit then return {3, k - 1, spent, 0} end
end
for i = 1, nb do
  redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1000)
end
for j = 1, nc do
  redis.call('INCR', KEYS[nb + j])
  redis.call('PEXPIRE', KEYS[nb + j], 600000)
end
local res = {0, 0, 0, 0}
for _, v in ipairs(out) do res[#res + 1] = v end
return res
"#;

const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local nb, nc, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 4
for i = 1, nb do
  local interval, delta = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + delta * interval
  if new_tat < now then new_tat = now end
  redis.call('SET', KEYS[i], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
end
for j = 1, nc do
  if redis.call('DECR', KEYS[nb + j]) < 0 then redis.call('SET', KEYS[nb + j], 0) end
end
for k = 1, ns do
  local micros, ttl = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  redis.call('INCRBY', KEYS[nb + nc + k], micros)
  if ttl > 0 then redis.call('EXPIRE', KEYS[nb + nc + k], ttl) end
end
return 1
"#;

const SEED: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or 0)
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"#;

/// Takes a whole list: its items, and the list is gone (one atomic step).
const TAKE_LIST: &str = r#"
local v = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return v
"#;

/// Redis-backed admission state. Connects lazily, so Pylon starts even while Redis is down.
pub struct RedisState {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    admit: redis::Script,
    settle: redis::Script,
    seed: redis::Script,
    take_list: redis::Script,
}

impl RedisState {
    /// State at `url` (`redis://…`), keys under `prefix`.
    pub fn new(url: &str, prefix: &str) -> Result<Self, StateError> {
        Ok(RedisState {
            client: redis::Client::open(url)?,
            conn: OnceCell::new(),
            prefix: prefix.to_owned(),
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            seed: redis::Script::new(SEED),
            take_list: redis::Script::new(TAKE_LIST),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, StateError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                // Short timeouts: a request must not wait long on a Redis that is gone.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(250)))
                    .set_response_timeout(Some(Duration::from_millis(250)))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await?;
        Ok(c.clone())
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// Checks and takes everything in one script call.
    pub async fn admit(&self, a: &Admission) -> Result<Verdict, StateError> {
        let mut inv = self.admit.prepare_invoke();
        inv.arg(a.buckets.len())
            .arg(a.slots.len())
            .arg(a.caps.len());
        for b in &a.buckets {
            inv.key(self.key(&b.key))
                .arg(b.rate.limit)
                .arg(b.rate.period_ms)
                .arg(b.cost);
        }
        for s in &a.slots {
            inv.key(self.key(&s.key)).arg(s.max);
        }
        for c in &a.caps {
            inv.key(self.key(&c.key)).arg(c.limit_micros);
        }
        let mut conn = self.conn().await?;
        let r: Vec<i64> = inv.invoke_async(&mut conn).await?;
        let at = |i: usize| r.get(i).copied().unwrap_or(0);
        Ok(match at(0) {
            1 => Verdict::Limited {
                index: at(1) as usize,
                retry_after_ms: at(2) as f64,
                reset_ms: at(3) as f64,
            },
            2 => Verdict::Busy {
                index: at(1) as usize,
            },
            3 => Verdict::OverBudget {
                index: at(1) as usize,
                spent_micros: at(2),
            },
            _ => Verdict::Allowed(
                r[4.min(r.len())..]
                    .chunks(2)
                    .map(|p| Remaining {
                        remaining: p[0].max(0) as u64,
                        reset_ms: p.get(1).copied().unwrap_or(0) as f64,
                    })
                    .collect(),
            ),
        })
    }

    /// Applies a settlement in one script call.
    /// A stored value (response cache, L2), or `None`.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let mut conn = self.conn().await?;
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut conn)
            .await?;
        Ok(v)
    }

    /// Stores a value that expires after `ttl`.
    pub async fn set_bytes(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StateError> {
        let mut conn = self.conn().await?;
        let _: () = redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Deletes one key; whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let mut conn = self.conn().await?;
        let n: u64 = redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    /// Deletes every key matching a glob `pattern` (under the prefix); returns how many.
    pub async fn delete_matching(&self, pattern: &str) -> Result<u64, StateError> {
        let mut conn = self.conn().await?;
        let pattern = format!("{}{pattern}", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Appends `value` to the list `key`, keeping at most `max` items (the oldest go) and the
    /// list for `ttl` after the last push.
    pub async fn push_list(
        &self,
        key: &str,
        value: &str,
        max: usize,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let mut conn = self.conn().await?;
        let key = self.key(key);
        let _: () = redis::pipe()
            .atomic()
            .cmd("RPUSH")
            .arg(&key)
            .arg(value)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(-(max.max(1) as i64))
            .arg(-1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl.as_millis().max(1) as u64)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes every item of the list `key` (the list is removed in the same step).
    pub async fn take_list(&self, key: &str) -> Result<Vec<String>, StateError> {
        let mut conn = self.conn().await?;
        let v: Vec<String> = self
            .take_list
            .key(self.key(key))
            .invoke_async(&mut conn)
            .await?;
        Ok(v)
    }

    /// One `PING` round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StateError> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    pub async fn settle(&self, s: &Settlement) -> Result<(), StateError> {
        let mut inv = self.settle.prepare_invoke();
        inv.arg(s.corrections.len())
            .arg(s.release.len())
            .arg(s.spend.len());
        for (key, rate, delta) in &s.corrections {
            inv.key(self.key(key)).arg(rate.interval()).arg(*delta);
        }
        for key in &s.release {
            inv.key(self.key(key));
        }
        for (key, micros, ttl) in &s.spend {
            inv.key(self.key(key)).arg(*micros).arg(ttl.as_secs());
        }
        let mut conn = self.conn().await?;
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Raises a spend counter to at least `micros`.
    pub async fn seed_spend(
        &self,
        key: &str,
        micros: i64,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let mut inv = self.seed.prepare_invoke();
        inv.key(self.key(key)).arg(micros).arg(ttl.as_secs());
        let mut conn = self.conn().await?;
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }
}
