//! The header-read timeout of HTTP/1.1 connections: a connection with no request in flight —
//! idle between requests, or slowly sending a head — is closed once that has lasted the
//! timeout.
//!
//! Why not hyper's `header_read_timeout`: hyper arms a fresh boxed timer for every request head
//! and cancels it when the head is complete — a clock read, an allocation, a timer-wheel insert
//! and removal per request (~700 instructions, callgrind). Here each connection has one watchdog
//! task that sleeps for the timeout and looks at the connection's [`Activity`]: a request only
//! bumps a counter when it starts and stamps the time when its response is done. The watchdog
//! re-arms itself from those stamps, so it wakes about once per timeout period, not per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

/// What a connection's requests tell its watchdog.
#[derive(Debug)]
pub struct Activity {
    /// When the connection was accepted; the stamps below count milliseconds from here.
    epoch: Instant,
    in_flight: AtomicU32,
    /// A request came as HTTP/2: streams may outlive their requests (WebSocket over HTTP/2).
    multiplexed: AtomicBool,
    /// When the last response was done (or the connection accepted), in ms since `epoch`.
    idle_since_ms: AtomicU64,
    expired: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            multiplexed: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            expired: AtomicBool::new(false),
        }
    }

    /// A request head has arrived; the connection counts as busy until the returned guard is
    /// dropped (when the response is done).
    pub fn begin(self: &Arc<Self>, version: http::Version) -> Busy {
        if version == http::Version::HTTP_2 {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Some(Arc::clone(self)))
    }

    /// A request's response is done at `now`.
    fn request_done(&self, now: Instant) {
        let since = u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(since, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether requests came as HTTP/2.
    pub fn multiplexed(&self) -> bool {
        self.multiplexed.load(Ordering::Relaxed)
    }

    /// Whether the watchdog found the connection idle for the whole timeout.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    /// Whether a request is in flight now. A request may begin between the watchdog's look and
    /// the connection's reaction to it: such a connection is not idle after all.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Takes back an expiry a request overtook; the watchdog looks again a timeout later.
    pub fn overtaken(&self) {
        self.expired.store(false, Ordering::Release);
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
}

/// A request in flight on a connection (see [`Activity::begin`]); the request ends when this
/// is dropped, or at a given time by [`Busy::end_at`].
#[derive(Debug)]
pub struct Busy(Option<Arc<Activity>>);

impl Busy {
    /// Ends the request at `now`: a clock reading the caller has already made.
    #[inline]
    pub fn end_at(mut self, now: Instant) {
        if let Some(activity) = self.0.take() {
            activity.request_done(now);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(activity) = self.0.take() {
            activity.request_done(Instant::now());
        }
    }
}

/// Starts the watchdog of a connection accepted now: it marks the connection expired and wakes
/// `connection` once the connection has had no request in flight for `timeout`. Abort the
/// returned task when the connection ends.
pub fn watch(timeout: Duration, connection: Arc<AtomicWaker>) -> (Arc<Activity>, tokio::task::AbortHandle) {
    let activity = Arc::new(Activity::new());
    let watched = Arc::clone(&activity);
    let task = tokio::spawn(async move {
        let mut deadline = watched.epoch + timeout;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = Instant::now();
            if watched.in_flight.load(Ordering::Acquire) > 0 {
                deadline = now + timeout;
                continue;
            }
            let expires = watched.idle_since() + timeout;
            if now >= expires {
                watched.expired.store(true, Ordering::Release);
                connection.wake();
                // The connection normally ends now (and aborts this task); if a request overtook
                // the expiry, look again a timeout later.
                deadline = now + timeout;
                continue;
            }
            deadline = expires;
        }
    });
    (activity, task.abort_handle())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(timeout: Duration) -> (Arc<Activity>, tokio::task::AbortHandle) {
        watch(timeout, Arc::new(AtomicWaker::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_the_timeout() {
        let (activity, _task) = watched(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!activity.expired());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(activity.expired());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiry_a_request_overtook_is_taken_back_and_looked_at_again() {
        let (activity, _task) = watched(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(activity.expired());
        // A request began just as the watchdog fired: the connection takes the expiry back.
        let busy = activity.begin(http::Version::HTTP_11);
        assert!(activity.busy());
        activity.overtaken();
        drop(busy);
        tokio::time::sleep(Duration::from_secs(28)).await;
        assert!(!activity.expired(), "idle for 28 s since that request");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(activity.expired(), "the watchdog kept watching");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_holds_it_open_and_the_idle_time_counts_from_its_end() {
        let (activity, _task) = watched(Duration::from_secs(30));
        let busy = activity.begin(http::Version::HTTP_11);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!activity.expired(), "a slow response is not a slow head");
        drop(busy);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!activity.expired(), "idle for 29 s only");
        tokio::time::sleep(Duration::from_secs(32)).await;
        assert!(activity.expired());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_keep_pushing_the_deadline_out() {
        let (activity, _task) = watched(Duration::from_secs(30));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            drop(activity.begin(http::Version::HTTP_11));
        }
        assert!(!activity.expired(), "a request every 20 s keeps a 30 s timeout from firing");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(activity.expired());
    }
}
