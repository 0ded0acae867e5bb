//! Prometheus metrics of the controller: reconciles, compiles, snapshot versions, connected
//! proxies and how long changes take to reach them.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Buckets for compile and propagation times, in seconds (1 ms to 30 s).
const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The controller's metric families, in one registry.
pub struct ControllerMetrics {
    registry: Registry,
    /// Rebuilds, by kind (`full`: compile and publish; `endpoints`: endpoint-only update) and
    /// result (`published`, `unchanged`).
    pub reconciles: IntCounterVec,
    /// Time to compile every object into a snapshot.
    pub compile_duration: Histogram,
    /// The latest published snapshot version.
    pub snapshot_version: IntGauge,
    /// Connected proxies by fleet and the version they applied.
    pub connected_proxies: IntGaugeVec,
    /// Time from a change being seen by the controller to a proxy reporting a version with it, by
    /// update kind.
    pub propagation: HistogramVec,
    /// Status patches sent, by kind and result (`written`, `skipped`, `failed`).
    pub status_writes: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Per-track counts of canary stages across the fleet (metrics and `/config`).
    pub canary_evidence: crate::canary::evidence::Evidence,
}

impl ControllerMetrics {
    /// Creates and registers every family.
    pub fn new() -> Result<Arc<ControllerMetrics>, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "tollgate_controller_reconciles_total",
                "Rebuilds of the configuration, by kind and result.",
            ),
            &["kind", "result"],
        )?;
        let compile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_controller_compile_duration_seconds",
                "Time to compile every object.",
            )
            .buckets(BUCKETS.to_vec()),
        )?;
        let snapshot_version =
            IntGauge::new("tollgate_controller_snapshot_version", "The latest published snapshot version.")?;
        let connected_proxies = IntGaugeVec::new(
            Opts::new(
                "tollgate_controller_connected_proxies",
                "Connected proxies by fleet and applied version.",
            ),
            &["fleet", "version"],
        )?;
        let propagation = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_controller_propagation_seconds",
                "Time from a change seen by the controller to a proxy reporting it applied, by update kind.",
            )
            .buckets(BUCKETS.to_vec()),
            &["kind"],
        )?;
        let status_writes = IntCounterVec::new(
            Opts::new("tollgate_controller_status_writes_total", "Status patches, by kind and result."),
            &["kind", "result"],
        )?;
        let leader =
            IntGauge::new("tollgate_controller_leader", "1 while this replica holds the leader Lease.")?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(compile_duration.clone()))?;
        registry.register(Box::new(snapshot_version.clone()))?;
        registry.register(Box::new(connected_proxies.clone()))?;
        registry.register(Box::new(propagation.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        let canary_evidence = crate::canary::evidence::Evidence::new(&registry)?;
        Ok(Arc::new(ControllerMetrics {
            registry,
            reconciles,
            compile_duration,
            snapshot_version,
            connected_proxies,
            propagation,
            status_writes,
            leader,
            canary_evidence,
        }))
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "could not encode controller metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
