//! Graceful draining of served connections: when a listener stops, every connection it accepted
//! is told to finish (HTTP/1.1: close after the response in flight, or at once when idle;
//! HTTP/2: GOAWAY), and the listener waits until they have.
//!
//! Why not `hyper_util`'s `GracefulShutdown`: its connection wrapper polls a `watch` channel's
//! `changed()` future on every poll of the connection — three or more times per request, ~500
//! instructions per request on the proxy's hot path (callgrind). Here a connection registers
//! its task's waker once per poll in its own slot (an atomic compare when the waker is the same)
//! and reads one flag; the drain wakes every registered connection.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;

use super::idle::Activity;

/// A served connection that can be asked to finish: hyper's connections (through
/// `hyper_util`'s sealed `GracefulConnection`), and test doubles.
pub trait Finish: Future<Output = Result<(), Self::Error>> {
    /// How serving can fail.
    type Error;

    /// Finish the work in progress, take no more, close.
    fn finish(self: Pin<&mut Self>);
}

impl<C: GracefulConnection> Finish for C {
    type Error = <C as GracefulConnection>::Error;

    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The connections of one listener, and whether they are being drained.
#[derive(Clone, Default)]
pub struct Drain {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    draining: AtomicBool,
    next_id: AtomicU64,
    /// The waker slot of every live connection, by id.
    live: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    /// Notified when the last live connection ends.
    emptied: Notify,
}

impl Shared {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicWaker>>> {
        // The map stays consistent whatever panicked while holding it (inserts and removes only).
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drain {
    /// A drain with no connections.
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Counts a connection in from now on (call before its TLS handshake, so the drain waits
    /// for a handshake in progress too). It counts until the returned membership is dropped.
    pub fn enter(&self) -> Member {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.shared.live().insert(id, Arc::clone(&waker));
        Member { id, waker, shared: Arc::clone(&self.shared), idle: None }
    }

    /// Connections still being served.
    pub fn count(&self) -> usize {
        self.shared.live().len()
    }

    /// Tells every connection to finish, then waits until all have (connections that enter
    /// afterwards are told at their first poll).
    pub async fn shutdown(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Arc<AtomicWaker>> = self.shared.live().values().cloned().collect();
        for waker in wakers {
            waker.wake();
        }
        loop {
            let emptied = self.shared.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the check: an end between the two is not missed.
            emptied.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// One connection's place in a [`Drain`]; it leaves when this is dropped.
pub struct Member {
    id: u64,
    waker: Arc<AtomicWaker>,
    shared: Arc<Shared>,
    idle: Option<(Arc<Activity>, tokio::task::AbortHandle)>,
}

impl Member {
    /// Closes the connection once it has had no request in flight for `timeout` (the
    /// header-read timeout, see `idle`); its requests report to the returned [`Activity`].
    pub fn close_when_idle(&mut self, timeout: Duration) -> Arc<Activity> {
        let (activity, watchdog) = super::idle::watch(timeout, Arc::clone(&self.waker));
        self.idle = Some((Arc::clone(&activity), watchdog));
        activity
    }

    /// The idle watchdog fired: `Some(true)` when the connection is multiplexed (HTTP/2). An
    /// HTTP/1 expiry that a request overtook is taken back.
    fn idle_expired(&self) -> Option<bool> {
        let (activity, _) = self.idle.as_ref()?;
        if !activity.expired() {
            return None;
        }
        if activity.multiplexed() {
            return Some(true);
        }
        if activity.busy() {
            activity.overtaken();
            return None;
        }
        Some(false)
    }

    /// Serves `connection` under the drain: it is asked to shut down gracefully once the drain
    /// starts.
    pub fn watch<C: Finish>(self, connection: C) -> Watched<C> {
        Watched { connection, member: self, told: false }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some((_, watchdog)) = &self.idle {
            watchdog.abort();
        }
        let mut live = self.shared.live();
        live.remove(&self.id);
        if live.is_empty() {
            self.shared.emptied.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection served under a [`Drain`].
    pub struct Watched<C> {
        #[pin]
        connection: C,
        member: Member,
        told: bool,
    }
}

impl<C: Finish> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let expired = this.member.idle_expired();
        if expired == Some(false) {
            // HTTP/1 with no request in flight: at most part of a head has arrived, which a
            // graceful shutdown would wait for. Dropping the connection closes it.
            return Poll::Ready(Ok(()));
        }
        if !*this.told {
            // Registered before the flags are read: a drain that starts in between, or the idle
            // watchdog firing, wakes us.
            this.member.waker.register(cx.waker());
            // HTTP/2 idle: GOAWAY, so streams that outlive their request (WebSocket) go on.
            if this.member.shared.draining.load(Ordering::SeqCst) || expired.is_some() {
                *this.told = true;
                this.connection.as_mut().finish();
            }
        }
        this.connection.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A connection that finishes only once told to shut down.
    struct Stub {
        told: Arc<AtomicBool>,
    }

    impl Future for Stub {
        type Output = Result<(), std::convert::Infallible>;

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.told.load(Ordering::SeqCst) { Poll::Ready(Ok(())) } else { Poll::Pending }
        }
    }

    impl Finish for Stub {
        type Error = std::convert::Infallible;

        fn finish(self: Pin<&mut Self>) {
            self.told.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn shutdown_tells_waiting_connections_and_waits_for_them() {
        let drain = Drain::new();
        let told = Arc::new(AtomicBool::new(false));
        let served = tokio::spawn(drain.enter().watch(Stub { told: Arc::clone(&told) }));
        tokio::task::yield_now().await;
        assert_eq!(drain.count(), 1);
        let shutdown = tokio::time::timeout(Duration::from_secs(5), drain.shutdown());
        shutdown.await.expect("the drain ends once the connection has");
        assert!(told.load(Ordering::SeqCst), "the connection was asked to shut down");
        served.await.expect("task").expect("connection result");
        assert_eq!(drain.count(), 0);
    }

    #[tokio::test]
    async fn a_handshake_in_progress_holds_the_drain_and_is_told_when_it_starts_serving() {
        let drain = Drain::new();
        let member = drain.enter();
        let ended = tokio::spawn({
            let drain = drain.clone();
            async move { drain.shutdown().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!ended.is_finished(), "the drain waits for the connection still handshaking");
        let told = Arc::new(AtomicBool::new(false));
        let served = member.watch(Stub { told: Arc::clone(&told) });
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("told at its first poll")
            .expect("ok");
        tokio::time::timeout(Duration::from_secs(5), ended).await.expect("drained").expect("task");
    }

    #[tokio::test]
    async fn an_empty_drain_ends_at_once() {
        tokio::time::timeout(Duration::from_secs(5), Drain::new().shutdown())
            .await
            .expect("nothing to wait for");
    }
}
