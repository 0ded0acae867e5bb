//! Wraps a response body so that metrics and the access-log line are recorded when the last byte
//! has been sent (or the client went away), with the true byte count and duration.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::access_log::{AccessLog, Record};
use crate::body::{BoxError, ProxyBody};
use crate::metrics::RouteMetrics;

/// What to record once the response is complete.
pub struct Completion {
    /// Where to count the request.
    pub metrics: Arc<RouteMetrics>,
    /// Request method, for the counter.
    pub method: Method,
    /// When the request arrived (tokio's clock, which the connection's idle watchdog keeps too).
    pub start: Instant,
    /// The access-log line to finish and write, when this stage logs.
    pub record: Option<Box<Record>>,
    /// The access log.
    pub log: AccessLog,
    /// Keeps the client connection counted busy until the response is done.
    pub busy: Option<crate::server::Busy>,
}

impl Completion {
    fn finish(self, status: u16, bytes_sent: u64) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        self.metrics.observe_request(&self.method, status, elapsed.as_secs_f64());
        if let Some(mut record) = self.record {
            record.bytes_sent = bytes_sent;
            record.duration_ms = elapsed.as_secs_f64() * 1000.0;
            self.log.write(&record);
        }
        if let Some(busy) = self.busy {
            busy.end_at(now);
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that records its [`Completion`] when dropped.
    pub struct Observed {
        #[pin]
        inner: ProxyBody,
        status: u16,
        bytes: u64,
        done: Option<Completion>,
    }

    impl PinnedDrop for Observed {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(done) = this.done.take() {
                done.finish(*this.status, *this.bytes);
            }
        }
    }
}

impl Observed {
    /// Wraps `inner`; `done` runs when the body is dropped.
    pub fn new(inner: ProxyBody, status: u16, done: Completion) -> Observed {
        Observed { inner, status, bytes: 0, done: Some(done) }
    }

    /// Wraps `inner` with nothing to record (a response before any configuration is loaded).
    pub fn unobserved(inner: ProxyBody) -> Observed {
        Observed { inner, status: 0, bytes: 0, done: None }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            *this.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
