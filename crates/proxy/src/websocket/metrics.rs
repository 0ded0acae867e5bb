//! WebSocket metric families, registered in the proxy's registry when the [`super::Hub`] is made.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

use crate::metrics::Metrics;

/// Latency buckets for integration invocations, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// WebSocket metrics.
#[derive(Clone)]
pub struct WebSocketMetrics {
    /// Open connections, by kind (`managed`, `passthrough`).
    pub connections: IntGaugeVec,
    /// Connections accepted, by kind.
    pub connects: IntCounterVec,
    /// Connections ended, by kind and reason (`client`, `idle`, `lifetime`, `api`, `drain`,
    /// `error`, `too_big`, `upstream`).
    pub disconnects: IntCounterVec,
    /// Messages of managed connections, by direction (`in`: from clients, `out`: to clients).
    pub messages: IntCounterVec,
    /// Time an integration took to answer an invocation, by API, stage and route key.
    pub invocation: HistogramVec,
}

impl WebSocketMetrics {
    /// Creates the families and registers them in `metrics`' registry (once per registry; a
    /// second registration keeps the first families counting).
    #[expect(clippy::expect_used, reason = "static, valid metric names and labels; covered by a test")]
    pub fn new(metrics: &Metrics) -> WebSocketMetrics {
        let out = WebSocketMetrics {
            connections: IntGaugeVec::new(
                Opts::new("tollgate_websocket_connections", "Open WebSocket connections, by kind."),
                &["kind"],
            )
            .expect("valid gauge"),
            connects: IntCounterVec::new(
                Opts::new("tollgate_websocket_connects_total", "WebSocket connections accepted, by kind."),
                &["kind"],
            )
            .expect("valid counter"),
            disconnects: IntCounterVec::new(
                Opts::new(
                    "tollgate_websocket_disconnects_total",
                    "WebSocket connections ended, by kind and reason.",
                ),
                &["kind", "reason"],
            )
            .expect("valid counter"),
            messages: IntCounterVec::new(
                Opts::new(
                    "tollgate_websocket_messages_total",
                    "Messages of managed WebSocket connections, by direction (in: from clients).",
                ),
                &["direction"],
            )
            .expect("valid counter"),
            invocation: HistogramVec::new(
                HistogramOpts::new(
                    "tollgate_websocket_invocation_duration_seconds",
                    "Time a WebSocket route's integration took to answer, by API, stage and route key.",
                )
                .buckets(BUCKETS.to_vec()),
                &["api", "stage", "route_key"],
            )
            .expect("valid histogram"),
        };
        let registry = metrics.registry();
        for collector in [
            Box::new(out.connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(out.connects.clone()),
            Box::new(out.disconnects.clone()),
            Box::new(out.messages.clone()),
            Box::new(out.invocation.clone()),
        ] {
            if let Err(error) = registry.register(collector) {
                tracing::debug!(%error, "WebSocket metric not registered");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_register_and_render() {
        let Ok(metrics) = Metrics::new() else { panic!("metrics") };
        let ws = WebSocketMetrics::new(&metrics);
        ws.connections.with_label_values(&["managed"]).inc();
        ws.disconnects.with_label_values(&["managed", "idle"]).inc();
        let text = metrics.render();
        assert!(text.contains("tollgate_websocket_connections{kind=\"managed\"} 1"));
        assert!(text.contains("tollgate_websocket_disconnects_total{kind=\"managed\",reason=\"idle\"} 1"));
    }
}
