//! An own connection's transport, and request heads written together at the end of a
//! scheduling round.
//!
//! Why batch: a request head written from its request's task as soon as it is ready goes out
//! between the client reads of the other requests ready in the same round, and the upstream (on
//! another CPU) is woken for nearly every one; the kernel charges those wake-ups to the sender.
//! Written back to back at the end of the round, the heads wake it about once per round.
//!
//! Why not by yielding first (`yield_now`, as before): that polls the whole request future a
//! second time — hyper's dispatcher and every await layer down to here — which cost ~1,400
//! instructions per request. Here a request's task queues its head and goes straight on to wait
//! for the response; one small task per round (a [`Batch`]) writes the queued heads. The request's
//! task is woken by the batch only when its head could not be written whole (the socket's send
//! buffer full, or an error); otherwise the response wakes it, as it would anyway.
//!
//! Plain TCP only: the socket is split so that the batch can write while the request's task
//! waits on the read side. TLS streams keep the yield (their writes need the stream itself).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::Io;

/// An own connection's transport.
pub(super) enum Transport {
    /// Plain TCP, split: the write side is shared with the round's [`Batch`].
    Plain {
        /// The read side.
        read: OwnedReadHalf,
        /// The write side.
        write: Arc<Writer>,
    },
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    pub(super) fn new(io: Io) -> Transport {
        match io {
            Io::Plain(stream) => {
                let (read, write) = stream.into_split();
                Transport::Plain { read, write: Arc::new(Writer::new(write)) }
            }
            Io::Tls(stream) => Transport::Tls(stream),
        }
    }

    /// The whole transport again, to hand to hyper's client. `None` in the rare case that a
    /// batch task has not yet let go of the write side (the connection is then not handed on).
    pub(super) fn into_io(self) -> Option<Io> {
        match self {
            Transport::Plain { read, write } => {
                let writer = Arc::into_inner(write)?;
                let state = writer.state.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
                read.reunite(state.half).ok().map(Io::Plain)
            }
            Transport::Tls(stream) => Some(Io::Tls(stream)),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain { read, .. } => Pin::new(read).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

/// Held by an exchange while its head is queued. Dropped with the head still waiting (the
/// request was abandoned: route timeout, client gone), it withdraws the head, so the batch does
/// not send a request nobody waits for.
pub(super) struct QueuedHead(Arc<Writer>);

impl QueuedHead {
    /// The connection's write side.
    pub(super) fn writer(&self) -> &Writer {
        &self.0
    }
}

impl Drop for QueuedHead {
    fn drop(&mut self) {
        self.0.withdraw();
    }
}

/// The write side of a plain connection and the head being written on it.
pub(super) struct Writer {
    state: Mutex<WriteState>,
}

struct WriteState {
    half: OwnedWriteHalf,
    /// The head being written (swapped with the connection's encoding buffer, so both keep their
    /// allocations).
    head: Vec<u8>,
    written: usize,
    stage: Stage,
    /// The request's task, woken when the batch hands the write back (or it failed).
    waker: Option<Waker>,
}

enum Stage {
    /// Nothing in progress: the last head was written whole.
    Done,
    /// Waiting for the round's batch.
    Queued,
    /// The request's task writes (the rest of) the head itself.
    Owner,
    /// Writing failed.
    Failed(io::Error),
    /// The head was withdrawn before the batch wrote it.
    Withdrawn,
}

impl Writer {
    fn new(half: OwnedWriteHalf) -> Writer {
        Writer {
            state: Mutex::new(WriteState {
                half,
                head: Vec::new(),
                written: 0,
                stage: Stage::Done,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `head` (leaving the previous head's buffer, cleared, in its place) to write at the
    /// end of the round. Keep the returned guard until the head is known written.
    pub(super) fn queue(self: &Arc<Self>, head: &mut Vec<u8>) -> QueuedHead {
        self.begin(head, Stage::Queued);
        Batch::add(Arc::clone(self));
        QueuedHead(Arc::clone(self))
    }

    /// Takes `head` to write now, by the request's task: [`Writer::poll_written`] writes it.
    pub(super) fn write_now(&self, head: &mut Vec<u8>) {
        self.begin(head, Stage::Owner);
    }

    fn begin(&self, head: &mut Vec<u8>, stage: Stage) {
        let mut state = self.lock();
        std::mem::swap(&mut state.head, head);
        head.clear();
        state.written = 0;
        state.stage = stage;
    }

    /// Ready once the head is written whole (by the batch or, when handed back, by writing the
    /// rest here); pending while it waits for the batch (the batch wakes `cx` only if it hands
    /// the write back) or the socket.
    pub(super) fn poll_written(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        let state = &mut *state;
        loop {
            match &mut state.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::Failed(_) => {
                    if let Stage::Failed(error) = std::mem::replace(&mut state.stage, Stage::Done) {
                        return Poll::Ready(Err(error));
                    }
                }
                Stage::Withdrawn => return Poll::Ready(Err(io::Error::other("request head withdrawn"))),
                Stage::Queued => {
                    if !state.waker.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                        state.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                Stage::Owner => {
                    let rest = &state.head[state.written..];
                    if rest.is_empty() {
                        state.stage = Stage::Done;
                        continue;
                    }
                    match Pin::new(&mut state.half).poll_write(cx, rest) {
                        Poll::Ready(Ok(0)) => {
                            state.stage = Stage::Done;
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(n)) => state.written += n,
                        Poll::Ready(Err(error)) => {
                            state.stage = Stage::Done;
                            return Poll::Ready(Err(error));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    /// Withdraws a head still waiting for the batch (it will not be sent).
    fn withdraw(&self) {
        let mut state = self.lock();
        if matches!(state.stage, Stage::Queued) {
            state.stage = Stage::Withdrawn;
        }
    }

    /// For a response that came before the head was known written: `Ok` if it was written
    /// whole; otherwise what is left of it is withdrawn, and the error says why.
    pub(super) fn settle_early(&self) -> io::Result<()> {
        let mut state = self.lock();
        match std::mem::replace(&mut state.stage, Stage::Withdrawn) {
            Stage::Done => {
                state.stage = Stage::Done;
                Ok(())
            }
            Stage::Failed(error) => Err(error),
            Stage::Queued | Stage::Owner | Stage::Withdrawn => {
                Err(io::Error::other("the upstream sent data before the request was written"))
            }
        }
    }

    /// The batch's turn: writes a queued head without waiting; hands the write back to the
    /// request's task when the socket takes only part of it (or none), or records the error.
    fn write_queued(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        if !matches!(state.stage, Stage::Queued) {
            return;
        }
        while state.written < state.head.len() {
            match state.half.try_write(&state.head[state.written..]) {
                Ok(0) => break,
                Ok(n) => state.written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    state.stage = Stage::Failed(error);
                    if let Some(waker) = state.waker.take() {
                        waker.wake();
                    }
                    return;
                }
            }
        }
        if state.written == state.head.len() {
            state.stage = Stage::Done;
            return;
        }
        state.stage = Stage::Owner;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

/// The heads queued on one thread in one scheduling round, written by a task of their own.
struct Batch {
    /// `None` once the batch task has taken them: later heads start a new batch.
    writers: Mutex<Option<Vec<Arc<Writer>>>>,
}

thread_local! {
    /// This thread's open batch.
    static OPEN: RefCell<Option<Arc<Batch>>> = const { RefCell::new(None) };
}

impl Batch {
    /// Adds `writer` to this thread's open batch, or starts one (and its task).
    fn add(writer: Arc<Writer>) {
        OPEN.with(|open| {
            let mut open = open.borrow_mut();
            if let Some(batch) = open.as_ref()
                && let Some(writers) =
                    batch.writers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut()
            {
                writers.push(writer);
                return;
            }
            let batch = Arc::new(Batch { writers: Mutex::new(Some(vec![writer])) });
            *open = Some(Arc::clone(&batch));
            tokio::spawn(batch.write());
        });
    }

    /// Waits for the rest of the round, then writes every queued head.
    async fn write(self: Arc<Self>) {
        to_the_back_of_the_queue().await;
        let writers = self.writers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        // Each writer is let go of as soon as its head is out (a connection can be handed to
        // hyper only once nobody else holds its write side).
        for writer in writers.into_iter().flatten() {
            writer.write_queued();
        }
    }
}

/// Puts the running task at the back of its worker's run queue: it runs again once the tasks
/// that are ready now have run, and not later.
///
/// Not `tokio::task::yield_now`: that defers the task until the worker has run out of tasks (or
/// ticks) and polled the I/O driver, and then queues it behind the tasks that poll woke, so a
/// head waited for the next round as well, the upstream idle all the while. A task that wakes
/// itself while it runs is queued at the back by both of tokio's schedulers (the multi-threaded
/// one puts a task spawned from a worker in its LIFO slot, to run next: without this the batch
/// task would write the first head alone).
pub(super) async fn to_the_back_of_the_queue() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::to_the_back_of_the_queue;

    #[test]
    fn a_task_sent_back_runs_after_the_tasks_ready_then_and_before_later_ones() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let order = Arc::new(Mutex::new(Vec::new()));
        let log = |what: &'static str| {
            let order = Arc::clone(&order);
            move || order.lock().expect("order").push(what)
        };
        let (x_before, x_after, y, z) = (log("x before"), log("x after"), log("y"), log("z"));
        runtime.block_on(async move {
            let (z_done, z_ran) = tokio::sync::oneshot::channel();
            let x = tokio::spawn(async move {
                // `y` is ready before `x` goes to the back; `z` becomes ready after.
                tokio::spawn(async move {
                    y();
                    tokio::spawn(async move {
                        z();
                        let _ = z_done.send(());
                    });
                });
                x_before();
                to_the_back_of_the_queue().await;
                x_after();
            });
            x.await.expect("x");
            z_ran.await.expect("z");
        });
        // `tokio::task::yield_now` would give x before, y, z, x after: the batch of request
        // heads would wait for the tasks of the next round too.
        assert_eq!(*order.lock().expect("order"), ["x before", "y", "x after", "z"]);
    }
}
