//! Redis for fleet-wide counters: global throttles and quotas, each one atomic Lua script (no
//! read-modify-write races between proxies). The connection is made lazily and re-made by the
//! connection manager after a failure, so Redis coming back needs no restart; every call has a
//! short timeout so a hung Redis never stalls requests beyond it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounterVec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tollgate_ir::traffic::FailurePolicy;

/// One GCRA step on Redis's clock. KEYS[1]: the bucket; ARGV: emission interval (µs), burst.
/// Returns {allowed (0/1), wait µs, remaining}.
const GCRA: &str = r"
local period = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = period * burst
local new_tat = tat + period
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(tolerance / 1000) + 1000)
return {1, 0, math.floor((now + tolerance - new_tat) / period)}
";

/// Counts one request against a quota. KEYS[1]: the counter; ARGV: limit, ttl seconds.
/// Returns {allowed (0/1), used}. A refused request is not counted.
const QUOTA: &str = r"
local limit = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= limit then
  return {0, used}
end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return {1, used}
";

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL given with `--redis` is not valid.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// Redis answered with an error or the connection failed.
    #[error("Redis call failed: {0}")]
    Call(#[source] redis::RedisError),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// A handle to Redis, cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    manager: ConnectionManager,
    gcra: redis::Script,
    quota: redis::Script,
    timeout: Duration,
    failures: IntCounterVec,
    last_log_secs: AtomicU64,
}

impl RedisStore {
    /// Prepares a client for `url` (`redis://host:port/db`). Does not connect yet.
    pub fn new(url: &str, failures: IntCounterVec) -> Result<RedisStore, RedisError> {
        let client = redis::Client::open(url).map_err(RedisError::Url)?;
        let timeout = Duration::from_millis(250);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(RedisError::Url)?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                manager,
                gcra: redis::Script::new(GCRA),
                quota: redis::Script::new(QUOTA),
                timeout,
                failures,
                last_log_secs: AtomicU64::new(0),
            }),
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let mut connection = self.inner.manager.clone();
        match tokio::time::timeout(self.inner.timeout, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(RedisError::Call(error)),
            Err(_) => Err(RedisError::Timeout(self.inner.timeout)),
        }
    }

    /// One GCRA step: (allowed, wait µs, remaining).
    pub async fn gcra(&self, key: &str, period_us: u64, burst: u32) -> Result<(bool, i64, i64), RedisError> {
        let mut invocation = self.inner.gcra.key(key);
        invocation.arg(period_us).arg(burst);
        let (allowed, wait, remaining): (i64, i64, i64) = self.run(invocation).await?;
        Ok((allowed == 1, wait, remaining))
    }

    /// Counts one request against `limit` on counter `key` (expiring after `ttl`): (allowed,
    /// used).
    pub async fn quota(&self, key: &str, limit: u64, ttl: Duration) -> Result<(bool, u64), RedisError> {
        let mut invocation = self.inner.quota.key(key);
        invocation.arg(limit).arg(ttl.as_secs().max(1));
        let (allowed, used): (i64, i64) = self.run(invocation).await?;
        Ok((allowed == 1, u64::try_from(used).unwrap_or(0)))
    }

    /// Reads a counter (0 when absent).
    pub async fn get(&self, key: &str) -> Result<u64, RedisError> {
        let mut connection = self.inner.manager.clone();
        let mut command = redis::cmd("GET");
        command.arg(key);
        let call = command.query_async::<Option<u64>>(&mut connection);
        match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(value)) => Ok(value.unwrap_or(0)),
            Ok(Err(error)) => Err(RedisError::Call(error)),
            Err(_) => Err(RedisError::Timeout(self.inner.timeout)),
        }
    }

    /// Records a failed call: counted always, logged at most once a second.
    pub fn failed(&self, operation: &'static str, policy: FailurePolicy, error: &RedisError) {
        let policy_label = match policy {
            FailurePolicy::Open => "open",
            FailurePolicy::Closed => "closed",
        };
        self.inner.failures.with_label_values(&[operation, policy_label]).inc();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if self.inner.last_log_secs.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(%error, operation, failure_policy = policy_label, "Redis unreachable: applying the failure policy");
        }
    }
}
