//! Access log: one JSON line per request, written by a dedicated thread so the request path only
//! formats a line and hands it over.

use std::io::Write;
use std::sync::Arc;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::metrics::Metrics;

mod line;

/// One access-log line. Never holds a secret: the path without its query string, the request id
/// the gateway vetted, no credentials. Written by `line` (the `Serialize` form is the reference
/// its tests compare with).
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// RFC 3339 time the request arrived.
    pub time: String,
    /// The request id.
    pub request_id: String,
    /// `namespace/name` of the GatewayAPI, empty when none matched (shared with the route
    /// table: no copy per request).
    pub api: Arc<str>,
    /// Stage name.
    pub stage: Arc<str>,
    /// `namespace/name` of the Route.
    pub route: Arc<str>,
    /// The stage's track that served the request: `stable` or `canary`.
    pub track: tollgate_ir::canary::Track,
    /// Request method.
    pub method: String,
    /// Host the client asked for.
    pub host: String,
    /// Normalized path, without query string.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Response status.
    pub status: u16,
    /// Total time until the last response byte, in milliseconds (written to the microsecond).
    #[serde(serialize_with = "line::serialize_millis")]
    pub duration_ms: f64,
    /// Time the upstream took to answer, in milliseconds, written to the microsecond (absent
    /// when no upstream was called).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "line::serialize_some_millis")]
    pub upstream_ms: Option<f64>,
    /// The upstream endpoint that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Request body size announced by the client.
    pub bytes_received: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// The client's address.
    pub client_ip: String,
    /// The authenticated caller, when there is one (never a token or key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The id of the API key used, when there is one (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    /// Why the gateway answered itself, when it did (`no_route`, `upstream_timeout`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// WebSocket lines: the connection id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// WebSocket `$disconnect` lines: why the connection ended (`client`, `idle`, `drain`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect_reason: Option<&'static str>,
}

/// Where access-log lines go.
#[derive(Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    metrics: Arc<Metrics>,
}

/// Lines waiting for the writer thread. Requests append under a short lock; the writer swaps the
/// buffer out every `FLUSH_EVERY` (or as soon as it holds `WAKE_AT` bytes) and writes it with one
/// syscall — one wake-up per batch, not per line.
struct Shared {
    buffer: Mutex<Vec<u8>>,
    ready: Condvar,
}

/// How often the writer flushes at the latest.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this large wakes the writer early.
const WAKE_AT: usize = 256 * 1024;
/// Beyond this, lines are dropped (and counted) until the writer catches up.
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

impl AccessLog {
    /// Lines go to standard output, one JSON object per line.
    pub fn stdout(metrics: Arc<Metrics>) -> AccessLog {
        let shared =
            Arc::new(Shared { buffer: Mutex::new(Vec::with_capacity(WAKE_AT)), ready: Condvar::new() });
        let writer = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&writer, std::io::stdout()));
        if let Err(error) = spawned {
            tracing::error!(%error, "could not start the access-log writer; access logging is off");
            return AccessLog { shared: None, metrics };
        }
        AccessLog { shared: Some(shared), metrics }
    }

    /// Access logging off.
    pub fn disabled(metrics: Arc<Metrics>) -> AccessLog {
        AccessLog { shared: None, metrics }
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Appends a record; drops it (and counts the drop) when the writer is far behind.
    pub fn write(&self, record: &Record) {
        let Some(shared) = &self.shared else { return };
        let mut buffer = shared.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buffer.len() > MAX_BUFFERED {
            drop(buffer);
            self.metrics.access_log_dropped.inc();
            return;
        }
        line::write(record, &mut buffer);
        buffer.push(b'\n');
        if buffer.len() >= WAKE_AT {
            shared.ready.notify_one();
        }
    }

    /// Writes out whatever is buffered (at shutdown).
    pub fn flush(&self) {
        if let Some(shared) = &self.shared {
            let pending =
                std::mem::take(&mut *shared.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&pending).and_then(|()| out.flush());
        }
    }
}

fn write_lines(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::with_capacity(WAKE_AT);
    loop {
        {
            let buffer = shared.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (mut buffer, _) = shared
                .ready
                .wait_timeout_while(buffer, FLUSH_EVERY, |b| b.len() < WAKE_AT)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::swap(&mut *buffer, &mut spare);
        }
        if !spare.is_empty() {
            if out.write_all(&spare).and_then(|()| out.flush()).is_err() {
                return;
            }
            spare.clear();
        }
    }
}
