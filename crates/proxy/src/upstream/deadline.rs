//! The route timeout, without a timer per request.
//!
//! `tokio::time::timeout` registers a timer in the runtime's timer wheel for every upstream call
//! and takes it out again when the response comes first — the usual case — which measured ~650
//! instructions per proxied request (callgrind). The requests of an HTTP/1.1 client connection
//! come one after another, so one timer per client connection ([`TimerSlot`]) serves them all:
//! a call takes the timer out of the slot and gives it back when it ends, leaving it armed. The
//! timer stays armed at the deadline of an earlier call, which is never later than the current
//! one's when the calls share a timeout; when it fires before the current deadline, it is armed
//! again for that deadline. So a connection's timer is re-armed about once per timeout period,
//! not once per request, and a call still ends exactly at its own deadline.
//!
//! A call that finds the slot empty (HTTP/2 streams of one connection run at the same time)
//! makes a timer of its own, like `tokio::time::timeout` would. A timer left in a slot may fire
//! with nobody waiting: it wakes the task that polled it last, once, which then finds nothing to
//! do.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A client connection's route-timeout timer, kept between its requests. Cheap to clone.
#[derive(Clone, Default)]
pub struct TimerSlot(Arc<Mutex<Option<Pin<Box<Sleep>>>>>);

impl std::fmt::Debug for TimerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerSlot").finish_non_exhaustive()
    }
}

impl TimerSlot {
    fn take(&self) -> Option<Pin<Box<Sleep>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }

    fn put_back(&self, timer: Pin<Box<Sleep>>) {
        let mut slot = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(timer);
        }
    }
}

/// The deadline passed before the call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// A future bounded by a deadline; see [`within`].
    pub struct Deadline<'a, F> {
        #[pin]
        future: F,
        deadline: Instant,
        timer: Option<Pin<Box<Sleep>>>,
        slot: Option<&'a TimerSlot>,
    }

    impl<'a, F> PinnedDrop for Deadline<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (Some(timer), Some(slot)) = (this.timer.take(), this.slot) {
                slot.put_back(timer);
            }
        }
    }
}

/// Runs `future` until `deadline`, with the timer kept in `slot` (none: a timer of its own).
/// No timer is touched when `future` is ready at its first poll.
pub fn within<F: Future>(deadline: Instant, slot: Option<&TimerSlot>, future: F) -> Deadline<'_, F> {
    Deadline { future, deadline, timer: None, slot }
}

impl<F: Future> Future for Deadline<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let deadline = *this.deadline;
        let timer = match this.timer {
            Some(timer) => timer,
            None => {
                let mut timer = match this.slot.and_then(TimerSlot::take) {
                    Some(timer) => timer,
                    None => Box::pin(tokio::time::sleep_until(deadline)),
                };
                // Armed for a later deadline (an earlier call with a longer timeout): too late.
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
                this.timer.insert(timer)
            }
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Fired: at this call's deadline, or at an earlier call's, which is re-armed.
            if timer.deadline() >= deadline || Instant::now() >= deadline {
                return Poll::Ready(Err(Elapsed));
            }
            timer.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Runs a call that never ends, bounded by `timeout`; returns how long it ran.
    async fn stalled(slot: &TimerSlot, timeout: Duration) -> Duration {
        let started = Instant::now();
        let result = within(started + timeout, Some(slot), std::future::pending::<()>()).await;
        assert_eq!(result, Err(Elapsed));
        started.elapsed()
    }

    /// A call answered after `after`, bounded by `timeout`.
    async fn answered(slot: &TimerSlot, timeout: Duration, after: Duration) {
        let result = within(Instant::now() + timeout, Some(slot), tokio::time::sleep(after)).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_is_ready_at_once_touches_no_timer() {
        let slot = TimerSlot::default();
        assert_eq!(within(Instant::now(), Some(&slot), std::future::ready(7)).await, Ok(7));
        assert!(slot.take().is_none(), "no timer was made");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_call_ends_at_its_deadline_and_the_timer_is_kept() {
        let slot = TimerSlot::default();
        assert_eq!(stalled(&slot, Duration::from_secs(5)).await, Duration::from_secs(5));
        assert!(slot.take().is_some(), "the timer went back to the slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_call_is_not_cut_at_an_earlier_calls_deadline() {
        let slot = TimerSlot::default();
        // Armed for now + 10 s; the answer comes after 1 s.
        answered(&slot, Duration::from_secs(10), Duration::from_secs(1)).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        // The kept timer fires 8 s into this call; the call still gets its full 10 s.
        assert_eq!(stalled(&slot, Duration::from_secs(10)).await, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_timeout_after_a_longer_one_is_honoured() {
        let slot = TimerSlot::default();
        answered(&slot, Duration::from_secs(60), Duration::from_millis(5)).await;
        assert_eq!(stalled(&slot, Duration::from_secs(2)).await, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_that_fired_unwatched_is_armed_again() {
        let slot = TimerSlot::default();
        answered(&slot, Duration::from_secs(1), Duration::from_millis(10)).await;
        // The kept timer's deadline passes between calls.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(stalled(&slot, Duration::from_secs(1)).await, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_calls_on_one_slot_each_keep_their_deadline() {
        let slot = TimerSlot::default();
        let (short, long) =
            tokio::join!(stalled(&slot, Duration::from_secs(3)), stalled(&slot, Duration::from_secs(7)));
        assert_eq!((short, long), (Duration::from_secs(3), Duration::from_secs(7)));
        answered(&slot, Duration::from_secs(1), Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_slot_the_call_has_a_timer_of_its_own() {
        let started = Instant::now();
        let result = within(started + Duration::from_secs(4), None, std::future::pending::<()>()).await;
        assert_eq!((result, started.elapsed()), (Err(Elapsed), Duration::from_secs(4)));
    }
}
