//! Token buckets (GCRA): local ones in this process (governor, with an injectable clock) and
//! global ones counted in Redis by an atomic script, so a fleet honours one limit together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tollgate_ir::traffic as ir;

use super::redis::RedisStore;

/// What a limiter says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted.
    Allowed(LimitInfo),
    /// Over the limit; try again after `retry_after`.
    Denied {
        /// The limiter's state.
        info: LimitInfo,
        /// When the next request would be admitted.
        retry_after: Duration,
    },
    /// Shared state unreachable and the policy says fail closed.
    Unavailable,
}

/// The numbers behind the `RateLimit-*` response headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitInfo {
    /// The bucket size.
    pub limit: u32,
    /// Requests that could be made right now.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// A bucket shared by every request of its scope; `key` separates callers for per-key limits
/// (usage plans) and is empty otherwise.
pub enum Limiter {
    /// Counted in this process.
    Local(LocalLimiter),
    /// Counted in Redis.
    Global(GlobalLimiter),
}

impl Limiter {
    /// Counts one request.
    pub async fn check(&self, key: &str) -> Decision {
        match self {
            Limiter::Local(l) => l.check(key),
            Limiter::Global(g) => g.check(key).await,
        }
    }

    /// Builds the limiter a throttle asks for. A global throttle without Redis is counted
    /// locally (the caller logs that once).
    pub fn build(throttle: &ir::Throttle, redis: Option<&RedisStore>) -> Limiter {
        match (throttle.scope, redis) {
            (ir::Scope::Global, Some(redis)) => Limiter::Global(GlobalLimiter {
                redis: redis.clone(),
                prefix: format!("tollgate:tb:{}:{}:{}", throttle.id, throttle.rate, throttle.burst),
                period_us: period(throttle.rate).as_micros().max(1) as u64,
                burst: throttle.burst,
                policy: throttle.failure_policy,
            }),
            _ => Limiter::Local(LocalLimiter::new(throttle.rate, throttle.burst, DefaultClock::default())),
        }
    }
}

/// Time between two tokens.
fn period(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1))
}

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// Prune idle keys every this many checks (a pruned key's bucket was full anyway).
const PRUNE_EVERY: u64 = 4096;

/// A bucket counted in this process, keyed by caller.
pub struct LocalLimiter<C: Clock + Clone = DefaultClock> {
    limiter: Keyed<C>,
    clock: C,
    burst: u32,
    period: Duration,
    checks: AtomicU64,
}

impl<C: Clock + Clone> LocalLimiter<C>
where
    C::Instant: Reference,
{
    /// A bucket of `burst` tokens refilled at `rate` per second, reading time from `clock`.
    pub fn new(rate: f64, burst: u32, clock: C) -> LocalLimiter<C> {
        let burst = burst.max(1);
        let period = period(rate);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(nonzero(1)))
            .allow_burst(nonzero(burst));
        let limiter = RateLimiter::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        LocalLimiter { limiter, clock, burst, period, checks: AtomicU64::new(0) }
    }

    /// Counts one request for `key`.
    pub fn check(&self, key: &str) -> Decision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let key = key.to_string();
        match self.limiter.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                Decision::Allowed(self.info(remaining))
            }
            Err(not_until) => Decision::Denied {
                info: self.info(0),
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    fn info(&self, remaining: u32) -> LimitInfo {
        LimitInfo {
            limit: self.burst,
            remaining,
            reset: self.period * (self.burst - remaining.min(self.burst)),
        }
    }

    /// Keys currently tracked (for tests of the pruning).
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN)
}

/// A bucket counted in Redis: one GCRA step per request in a Lua script, on Redis's clock, so
/// concurrent proxies never race on a read-modify-write.
pub struct GlobalLimiter {
    redis: RedisStore,
    prefix: String,
    period_us: u64,
    burst: u32,
    policy: ir::FailurePolicy,
}

impl GlobalLimiter {
    async fn check(&self, key: &str) -> Decision {
        let redis_key = if key.is_empty() { self.prefix.clone() } else { format!("{}:{key}", self.prefix) };
        match self.redis.gcra(&redis_key, self.period_us, self.burst).await {
            Ok((allowed, wait_us, remaining)) => {
                let remaining = u32::try_from(remaining.max(0)).unwrap_or(u32::MAX).min(self.burst);
                let period = Duration::from_micros(self.period_us);
                let info =
                    LimitInfo { limit: self.burst, remaining, reset: period * (self.burst - remaining) };
                if allowed {
                    Decision::Allowed(info)
                } else {
                    Decision::Denied { info, retry_after: Duration::from_micros(wait_us.max(0) as u64) }
                }
            }
            Err(error) => {
                self.redis.failed("throttle", self.policy, &error);
                match self.policy {
                    ir::FailurePolicy::Open => Decision::Allowed(LimitInfo {
                        limit: self.burst,
                        remaining: self.burst,
                        reset: Duration::ZERO,
                    }),
                    ir::FailurePolicy::Closed => Decision::Unavailable,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn allowed(d: Decision) -> bool {
        matches!(d, Decision::Allowed(_))
    }

    #[test]
    fn burst_then_rate_on_a_fake_clock() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::new(2.0, 3, clock.clone());
        assert!((0..3).all(|_| allowed(limiter.check(""))));
        match limiter.check("") {
            Decision::Denied { retry_after, info } => {
                assert_eq!(retry_after, Duration::from_millis(500));
                assert_eq!(info.remaining, 0);
            }
            other => panic!("expected a denial, got {other:?}"),
        }
        clock.advance(Duration::from_millis(500));
        assert!(allowed(limiter.check("")));
        assert!(!allowed(limiter.check("")));
        // 10 s at 2/s: 20 more.
        let mut admitted = 0;
        for _ in 0..1000 {
            clock.advance(Duration::from_millis(10));
            if allowed(limiter.check("")) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 20);
    }

    #[test]
    fn fractional_rates_and_keys_are_separate() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::new(0.5, 1, clock.clone());
        assert!(allowed(limiter.check("a")));
        assert!(allowed(limiter.check("b")));
        assert!(!allowed(limiter.check("a")));
        clock.advance(Duration::from_millis(1999));
        assert!(!allowed(limiter.check("a")));
        clock.advance(Duration::from_millis(1));
        assert!(allowed(limiter.check("a")));
    }

    #[test]
    fn remaining_counts_down() {
        let limiter = LocalLimiter::new(1.0, 5, FakeRelativeClock::default());
        let remaining: Vec<u32> = (0..5)
            .map(|_| match limiter.check("") {
                Decision::Allowed(info) => info.remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    }

    #[test]
    fn idle_keys_are_pruned() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::new(100.0, 1, clock.clone());
        for i in 0..100 {
            limiter.check(&format!("k{i}"));
        }
        assert_eq!(limiter.tracked_keys(), 100);
        clock.advance(Duration::from_secs(1));
        for _ in 0..PRUNE_EVERY {
            limiter.check("hot");
        }
        assert!(limiter.tracked_keys() <= 2, "{}", limiter.tracked_keys());
    }
}
