//! Usage-plan quotas: requests per API key per UTC day, week (from Monday) or month, counted in
//! Redis (fleet-wide) or, without Redis, in this process and persisted to an embedded on-disk
//! store (`--state-dir`) so a restart loses no count.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use time::{Date, Month, OffsetDateTime, Time};
use tollgate_ir::traffic::{Quota, QuotaPeriod};

use super::redis::{RedisError, RedisStore};

/// Quota counts by counter key: (used, end of the period as Unix seconds).
const COUNTS: TableDefinition<&str, (u64, i64)> = TableDefinition::new("quota_counts");

/// How often local counts are written to disk; a graceful shutdown writes them too.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Wall-clock time, injectable so period rollover can be tested.
pub trait WallClock: Send + Sync {
    /// The current UTC time.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// One quota period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    /// Label in counter keys (`2026-11-22`, `2026-11-16w`, `2026-11`).
    pub label: String,
    /// First instant of the period.
    pub start: OffsetDateTime,
    /// First instant of the next period.
    pub end: OffsetDateTime,
}

/// The period containing `now`, with UTC boundaries.
pub fn period_of(period: QuotaPeriod, now: OffsetDateTime) -> Period {
    let now = now.to_offset(time::UtcOffset::UTC);
    let today = now.date();
    let at_midnight = |d: Date| d.with_time(Time::MIDNIGHT).assume_utc();
    match period {
        QuotaPeriod::Day => {
            let next = today.next_day().unwrap_or(today);
            Period { label: today.to_string(), start: at_midnight(today), end: at_midnight(next) }
        }
        QuotaPeriod::Week => {
            let monday = today - time::Duration::days(i64::from(today.weekday().number_days_from_monday()));
            let next = monday + time::Duration::days(7);
            Period { label: format!("{monday}w"), start: at_midnight(monday), end: at_midnight(next) }
        }
        QuotaPeriod::Month => {
            let first = Date::from_calendar_date(today.year(), today.month(), 1).unwrap_or(today);
            let (year, month) = match today.month() {
                Month::December => (today.year() + 1, Month::January),
                m => (today.year(), m.next()),
            };
            let next = Date::from_calendar_date(year, month, 1).unwrap_or(today);
            Period {
                label: format!("{}-{:02}", today.year(), u8::from(today.month())),
                start: at_midnight(first),
                end: at_midnight(next),
            }
        }
    }
}

/// The result of counting one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaOutcome {
    /// Whether the request fits in the quota (a refused request is not counted).
    pub allowed: bool,
    /// Requests counted in this period.
    pub used: u64,
    /// The quota.
    pub limit: u64,
    /// Time until the period ends.
    pub reset: Duration,
}

impl QuotaOutcome {
    /// Requests left in this period.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

/// Why a quota store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum QuotaStoreError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The embedded database could not be opened or read.
    #[error("cannot open the quota store {path}: {message}")]
    Open {
        /// The database file.
        path: String,
        /// The cause.
        message: String,
    },
}

/// Where quota counts live.
pub struct QuotaStore {
    backend: Backend,
    clock: Arc<dyn WallClock>,
}

enum Backend {
    Redis(RedisStore),
    Local(Arc<LocalCounts>),
}

impl QuotaStore {
    /// Counts in Redis.
    pub fn redis(redis: RedisStore, clock: Arc<dyn WallClock>) -> QuotaStore {
        QuotaStore { backend: Backend::Redis(redis), clock }
    }

    /// Counts in this process's memory only (lost on restart).
    pub fn memory(clock: Arc<dyn WallClock>) -> QuotaStore {
        let counts =
            LocalCounts { counts: Mutex::default(), dirty: Mutex::default(), db: None, path: String::new() };
        QuotaStore { backend: Backend::Local(Arc::new(counts)), clock }
    }

    /// Counts in this process, persisted under `state_dir` when given (`quota.redb`).
    pub fn local(state_dir: Option<&Path>, clock: Arc<dyn WallClock>) -> Result<QuotaStore, QuotaStoreError> {
        let counts = Arc::new(LocalCounts::open(state_dir)?);
        if counts.db.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            let weak = Arc::downgrade(&counts);
            let span = tracing::info_span!("quota_flush");
            tokio::spawn(tracing::Instrument::instrument(flush_loop(weak), span));
        }
        Ok(QuotaStore { backend: Backend::Local(counts), clock })
    }

    /// Counts one request of `key_id` on `plan`.
    pub async fn consume(&self, plan: &str, key_id: &str, quota: &Quota) -> Result<QuotaOutcome, RedisError> {
        let now = self.clock.now();
        let period = period_of(quota.period, now);
        let counter = counter_key(plan, key_id, &period);
        let reset = (period.end - now).try_into().unwrap_or(Duration::ZERO);
        let (allowed, used) = match &self.backend {
            Backend::Redis(redis) => {
                let ttl = (period.end - period.start).try_into().unwrap_or(Duration::from_secs(86_400));
                redis.quota(&counter, quota.limit, ttl + Duration::from_secs(3600)).await?
            }
            Backend::Local(counts) => counts.consume(counter, quota.limit, period.end.unix_timestamp()),
        };
        Ok(QuotaOutcome { allowed, used, limit: quota.limit, reset })
    }

    /// Requests counted so far in the current period.
    pub async fn used(&self, plan: &str, key_id: &str, quota: &Quota) -> Result<(u64, Period), RedisError> {
        let period = period_of(quota.period, self.clock.now());
        let counter = counter_key(plan, key_id, &period);
        let used = match &self.backend {
            Backend::Redis(redis) => redis.get(&counter).await?,
            Backend::Local(counts) => counts.get(&counter),
        };
        Ok((used, period))
    }

    /// Writes local counts to disk now (no-op for Redis and for memory-only stores).
    pub fn flush(&self) {
        if let Backend::Local(counts) = &self.backend {
            counts.flush();
        }
    }

    /// Whether counts are shared by the fleet.
    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }
}

fn counter_key(plan: &str, key_id: &str, period: &Period) -> String {
    format!("tollgate:quota:{plan}:{key_id}:{}", period.label)
}

async fn flush_loop(counts: Weak<LocalCounts>) {
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(counts) = counts.upgrade() else { return };
        let flush = tokio::task::spawn_blocking(move || counts.flush());
        let _ = flush.await;
    }
}

/// (used, end of the period as Unix seconds).
type Count = (u64, i64);

/// Counts in memory, authoritative for this process; persisted in batches.
struct LocalCounts {
    counts: Mutex<HashMap<String, Count>>,
    dirty: Mutex<HashSet<String>>,
    db: Option<Database>,
    path: String,
}

impl LocalCounts {
    fn open(state_dir: Option<&Path>) -> Result<LocalCounts, QuotaStoreError> {
        let Some(dir) = state_dir else {
            return Ok(LocalCounts {
                counts: Mutex::default(),
                dirty: Mutex::default(),
                db: None,
                path: String::new(),
            });
        };
        std::fs::create_dir_all(dir)
            .map_err(|source| QuotaStoreError::Dir { path: dir.display().to_string(), source })?;
        let file = dir.join("quota.redb");
        let path = file.display().to_string();
        let fail = |message: String| QuotaStoreError::Open { path: path.clone(), message };
        let db = Database::create(&file).map_err(|e| fail(e.to_string()))?;
        let mut counts = HashMap::new();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        {
            let read = db.begin_read().map_err(|e| fail(e.to_string()))?;
            match read.open_table(COUNTS) {
                Ok(table) => {
                    for entry in table.iter().map_err(|e| fail(e.to_string()))? {
                        let (key, value) = entry.map_err(|e| fail(e.to_string()))?;
                        let (used, end) = value.value();
                        if end > now {
                            counts.insert(key.value().to_string(), (used, end));
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        tracing::info!(path = %path, counters = counts.len(), "quota counts loaded");
        Ok(LocalCounts { counts: Mutex::new(counts), dirty: Mutex::default(), db: Some(db), path })
    }

    fn consume(&self, counter: String, limit: u64, end: i64) -> (bool, u64) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts.entry(counter.clone()).or_insert((0, end));
        if entry.0 >= limit {
            return (false, entry.0);
        }
        entry.0 += 1;
        let used = entry.0;
        drop(counts);
        if self.db.is_some() {
            self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(counter);
        }
        (true, used)
    }

    fn get(&self, counter: &str) -> u64 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(counter).map(|c| c.0).unwrap_or(0)
    }

    /// Writes changed counters and drops finished periods, in one durable transaction.
    fn flush(&self) {
        let Some(db) = &self.db else { return };
        let dirty: Vec<String> =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let (values, expired): (Vec<(String, Count)>, Vec<String>) = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let expired: Vec<String> =
                counts.iter().filter(|(_, v)| v.1 <= now).map(|(k, _)| k.clone()).collect();
            for k in &expired {
                counts.remove(k);
            }
            (dirty.iter().filter_map(|k| counts.get(k).map(|v| (k.clone(), *v))).collect(), expired)
        };
        if values.is_empty() && expired.is_empty() {
            return;
        }
        let result = (|| -> Result<(), redb::Error> {
            let write = db.begin_write()?;
            {
                let mut table = write.open_table(COUNTS)?;
                for (key, value) in &values {
                    table.insert(key.as_str(), *value)?;
                }
                for key in &expired {
                    table.remove(key.as_str())?;
                }
            }
            write.commit()?;
            Ok(())
        })();
        if let Err(error) = result {
            tracing::error!(path = %self.path, %error, "could not persist quota counts; will retry");
            let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            dirty.extend(values.into_iter().map(|(k, _)| k));
        }
    }
}

impl Drop for LocalCounts {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    struct FakeClock(AtomicI64);

    impl WallClock for FakeClock {
        fn now(&self) -> OffsetDateTime {
            OffsetDateTime::from_unix_timestamp(self.0.load(Ordering::SeqCst))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        }
    }

    fn at(text: &str) -> i64 {
        let format = time::format_description::well_known::Rfc3339;
        OffsetDateTime::parse(text, &format).map(|t| t.unix_timestamp()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn periods_have_utc_boundaries() {
        let t = OffsetDateTime::from_unix_timestamp(at("2026-11-22T23:59:59Z"))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let day = period_of(QuotaPeriod::Day, t);
        assert_eq!(day.label, "2026-11-22");
        assert_eq!(day.end.unix_timestamp(), at("2026-11-23T00:00:00Z"));
        let week = period_of(QuotaPeriod::Week, t); // a Sunday
        assert_eq!(week.start.unix_timestamp(), at("2026-11-16T00:00:00Z"));
        assert_eq!(week.end.unix_timestamp(), at("2026-11-23T00:00:00Z"));
        let dec = OffsetDateTime::from_unix_timestamp(at("2026-12-31T12:00:00Z"))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let month = period_of(QuotaPeriod::Month, dec);
        assert_eq!(month.label, "2026-12");
        assert_eq!(month.end.unix_timestamp(), at("2027-01-01T00:00:00Z"));
    }

    #[tokio::test]
    async fn quota_rolls_over_at_the_period_boundary() {
        let clock = Arc::new(FakeClock(AtomicI64::new(at("2026-11-22T23:59:58Z"))));
        let store = QuotaStore::local(None, clock.clone()).unwrap_or_else(|e| panic!("{e}"));
        let quota = Quota { limit: 2, period: QuotaPeriod::Day, failure_policy: Default::default() };
        let consume = || store.consume("ns/gold", "ns/key-a", &quota);
        let first = consume().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((first.allowed, first.used, first.remaining()), (true, 1, 1));
        assert_eq!(first.reset, Duration::from_secs(2));
        assert!(consume().await.is_ok_and(|o| o.allowed));
        let third = consume().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((third.allowed, third.used, third.remaining()), (false, 2, 0));
        // Another key has its own count.
        assert!(store.consume("ns/gold", "ns/key-b", &quota).await.is_ok_and(|o| o.allowed));
        clock.0.store(at("2026-11-23T00:00:00Z"), Ordering::SeqCst);
        let next_day = consume().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((next_day.allowed, next_day.used), (true, 1));
        assert_eq!(next_day.reset, Duration::from_secs(86_400));
    }

    #[tokio::test]
    async fn counts_survive_reopening_the_state_dir() {
        let dir = std::env::temp_dir().join(format!("tollgate-quota-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let quota = Quota { limit: 5, period: QuotaPeriod::Month, failure_policy: Default::default() };
        {
            let store =
                QuotaStore::local(Some(&dir), Arc::new(SystemClock)).unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..3 {
                assert!(store.consume("p", "k", &quota).await.is_ok_and(|o| o.allowed));
            }
            store.flush();
        }
        let store = QuotaStore::local(Some(&dir), Arc::new(SystemClock)).unwrap_or_else(|e| panic!("{e}"));
        let (used, _) = store.used("p", "k", &quota).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(used, 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
