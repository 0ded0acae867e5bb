//! Access log: one JSON line per request, written by a dedicated thread so the request path only
//! formats a line and hands it over.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde::Serialize;

use crate::metrics::Metrics;

/// Lines waiting to be written before new ones are dropped (and counted).
const QUEUE: usize = 16 * 1024;

/// One access-log line. Never holds a secret: the path without its query string, the request id
/// the gateway vetted, no credentials.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// RFC 3339 time the request arrived.
    pub time: String,
    /// The request id.
    pub request_id: String,
    /// `namespace/name` of the GatewayAPI, empty when none matched.
    pub api: String,
    /// Stage name.
    pub stage: String,
    /// `namespace/name` of the Route.
    pub route: String,
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
    /// Total time until the last response byte, in milliseconds.
    pub duration_ms: f64,
    /// Time the upstream took to answer, in milliseconds (absent when no upstream was called).
    #[serde(skip_serializing_if = "Option::is_none")]
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
}

/// Where access-log lines go.
#[derive(Clone)]
pub struct AccessLog {
    sender: Option<SyncSender<String>>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Lines go to standard output, one JSON object per line.
    pub fn stdout(metrics: Arc<Metrics>) -> AccessLog {
        let (sender, receiver) = sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver, std::io::stdout().lock()));
        if let Err(error) = spawned {
            tracing::error!(%error, "could not start the access-log writer; access logging is off");
            return AccessLog { sender: None, metrics };
        }
        AccessLog { sender: Some(sender), metrics }
    }

    /// Access logging off.
    pub fn disabled(metrics: Arc<Metrics>) -> AccessLog {
        AccessLog { sender: None, metrics }
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues a record; drops it (and counts the drop) when the writer is behind.
    pub fn write(&self, record: &Record) {
        let Some(sender) = &self.sender else { return };
        let Ok(mut line) = serde_json::to_string(record) else {
            return;
        };
        line.push('\n');
        match sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.inc()
            }
        }
    }
}

fn write_lines(receiver: Receiver<String>, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = receiver.recv() {
        let mut ok = out.write_all(line.as_bytes()).is_ok();
        // Batch whatever else is already queued, then flush once.
        while let Ok(line) = receiver.try_recv() {
            ok &= out.write_all(line.as_bytes()).is_ok();
        }
        if !ok || out.flush().is_err() {
            return;
        }
    }
}
