//! The control loop: wait for changes, debounce, then either compile and publish (anything but
//! endpoints changed) or take the cheap endpoint path; and, on the leader, keep status current.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tollgate_ir::ObjectKey;

use crate::compile::{Compiled, compile_loaded};
use crate::debounce::Debounce;
use crate::distribute::Sessions;
use crate::load::Loaded;
use crate::metrics::ControllerMetrics;
use crate::publish::Publisher;
use crate::replicas::{ReplicaReport, add_peers};
use crate::source::{ChangeSet, Changes, Source};
use crate::status::{FleetProgress, StatusWriter};

/// The result of the latest full compile.
pub struct Report {
    /// The objects compiled.
    pub loaded: Arc<Loaded>,
    /// Snapshot and per-object reports.
    pub compiled: Compiled,
}

/// Compiles and publishes on change.
pub struct Reconciler {
    /// Where objects come from.
    pub source: Arc<dyn Source>,
    /// Change marks from the source.
    pub changes: Changes,
    /// Where snapshots go.
    pub publisher: Arc<Publisher>,
    /// Debounce settings.
    pub debounce: Debounce,
    /// Metrics.
    pub metrics: Arc<ControllerMetrics>,
    /// The latest full compile's reports (for status and `/config`).
    pub reports: watch::Sender<Option<Arc<Report>>>,
    /// After endpoint-only updates, a full compile follows this much later so status (e.g.
    /// `NoReadyEndpoints`) catches up.
    pub status_refresh: Duration,
}

impl Reconciler {
    /// Runs until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut carry = ChangeSet::default();
        let mut refresh_due: Option<tokio::time::Instant> = None;
        loop {
            let mut force_full = false;
            tokio::select! {
                _ = self.changes.changed() => self.debounce.settle(&self.changes).await,
                _ = sleep_until(refresh_due) => force_full = true,
                _ = crate::stopped(&mut shutdown) => return,
            }
            let taken = self.changes.take();
            carry.kinds.extend(taken.kinds);
            carry.first_seen = match (carry.first_seen, taken.first_seen) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if carry.kinds.is_empty() && !force_full {
                continue;
            }
            // Never publish before every store has synced: a partial view would drop routes. The
            // Kubernetes source copies every object out of its stores (10,000 Routes take a
            // while): off the async workers.
            let source = Arc::clone(&self.source);
            let Ok(current) = tokio::task::spawn_blocking(move || source.current()).await else {
                tracing::error!("reading the source panicked; still serving the last snapshot");
                // The changes stay carried; try again later even if nothing else changes.
                refresh_due.get_or_insert_with(|| tokio::time::Instant::now() + self.status_refresh);
                continue;
            };
            let Some(loaded) = current else {
                tracing::debug!("waiting for every store to sync before the first publish");
                continue;
            };
            let set = std::mem::take(&mut carry);
            if self.publisher.current().ready && set.endpoints_only() && !force_full {
                let publisher = Arc::clone(&self.publisher);
                let first_seen = set.first_seen;
                // Scanning and patching 10,000 Routes' backends is CPU work: off the async workers.
                let updated = tokio::task::spawn_blocking(move || {
                    publisher.update_endpoints(&loaded.inputs, first_seen)
                })
                .await;
                match updated {
                    Ok(Ok(outcome)) => {
                        let result =
                            if outcome.changed_fleets.is_empty() { "unchanged" } else { "published" };
                        self.metrics.reconciles.with_label_values(&["endpoints", result]).inc();
                        if !outcome.changed_fleets.is_empty() {
                            self.metrics
                                .snapshot_version
                                .set(i64::try_from(outcome.version).unwrap_or(i64::MAX));
                            tracing::info!(version = outcome.version, fleets = ?outcome.changed_fleets, "endpoints published");
                        }
                    }
                    Ok(Err(error)) => tracing::error!(%error, "publishing endpoints failed"),
                    Err(error) => {
                        tracing::error!(%error, "publishing endpoints panicked; still serving the last snapshot")
                    }
                }
                refresh_due.get_or_insert_with(|| tokio::time::Instant::now() + self.status_refresh);
                continue;
            }
            refresh_due = None;
            self.full(loaded, set.first_seen.or(Some(Instant::now()))).await;
        }
    }

    async fn full(&self, loaded: Arc<Loaded>, changed_at: Option<Instant>) {
        let started = Instant::now();
        let input = Arc::clone(&loaded);
        // Compiling 10,000 Routes takes a while: keep it off the async workers.
        let compiled = match tokio::task::spawn_blocking(move || compile_loaded(&input)).await {
            Ok(compiled) => compiled,
            Err(error) => {
                tracing::error!(%error, "compile panicked; still serving the last snapshot");
                return;
            }
        };
        self.metrics.compile_duration.observe(started.elapsed().as_secs_f64());
        let publisher = Arc::clone(&self.publisher);
        // Encoding and compressing frames is CPU work too. The compile result moves to the blocking
        // thread and back: copying 10,000 routes costs more than the move.
        let published = tokio::task::spawn_blocking(move || {
            let outcome = publisher.publish(&compiled.snapshot, changed_at);
            (compiled, outcome)
        })
        .await;
        let (compiled, outcome) = match published {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "publishing panicked; still serving the last snapshot");
                return;
            }
        };
        match outcome {
            Ok(outcome) => {
                let result = if outcome.changed_fleets.is_empty() { "unchanged" } else { "published" };
                self.metrics.reconciles.with_label_values(&["full", result]).inc();
                if !outcome.changed_fleets.is_empty() {
                    self.metrics.snapshot_version.set(i64::try_from(outcome.version).unwrap_or(i64::MAX));
                    tracing::info!(
                        version = outcome.version,
                        fleets = ?outcome.changed_fleets,
                        apis = compiled.snapshot.apis.len(),
                        compile_ms = started.elapsed().as_millis(),
                        "snapshot published"
                    );
                }
            }
            Err(error) => tracing::error!(%error, "publishing failed; still serving the last snapshot"),
        }
        self.reports.send_replace(Some(Arc::new(Report { loaded, compiled })));
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Proxy progress of every served GatewayAPI: this replica's proxies plus what the other
/// replicas report (`peers`, see [`crate::replicas`]).
pub fn fleet_progress(
    publisher: &Publisher,
    sessions: &Sessions,
    peers: &[ReplicaReport],
) -> BTreeMap<ObjectKey, FleetProgress> {
    let published = publisher.current();
    let generations = published.apis.iter().map(|(key, api)| (key.clone(), api.generation)).collect();
    let counts = add_peers(&sessions.api_counts(&published), &generations, peers);
    published
        .apis
        .iter()
        .map(|(key, api)| {
            let proxies = counts.get(key).copied().unwrap_or_default();
            (key.clone(), FleetProgress { fleet: api.fleet.clone(), proxies })
        })
        .collect()
}

/// What the leader's status loop reads and writes.
pub struct StatusLoop {
    /// Writes status (and Events).
    pub writer: StatusWriter,
    /// The latest compile.
    pub reports: watch::Receiver<Option<Arc<Report>>>,
    /// What is published (the generation each API's proxies must serve).
    pub publisher: Arc<Publisher>,
    /// This replica's proxies.
    pub sessions: Arc<Sessions>,
    /// The other replicas' proxy reports ([`crate::replicas`]).
    pub peers: watch::Receiver<Vec<ReplicaReport>>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// At most one pass per this interval.
    pub min_interval: Duration,
}

/// The leader's status loop: after every compile and whenever proxies connect or apply (here or,
/// through `peers`, on another replica), bring status up to date; at most one pass per
/// `min_interval`. Runs until `shutdown` flips.
pub async fn run_status(setup: StatusLoop, mut shutdown: watch::Receiver<bool>) {
    let StatusLoop { mut writer, mut reports, publisher, sessions, mut peers, mut leader, min_interval } =
        setup;
    let mut proxies = sessions.watch();
    loop {
        tokio::select! {
            _ = reports.changed() => {}
            _ = proxies.changed() => {}
            Ok(()) = peers.changed() => {}
            _ = leader.changed() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        if !*leader.borrow_and_update() {
            writer.forget();
            continue;
        }
        let Some(report) = reports.borrow_and_update().clone() else { continue };
        proxies.borrow_and_update();
        let progress = fleet_progress(&publisher, &sessions, &peers.borrow_and_update());
        let now = Time(Timestamp::now());
        let summary = writer.write(&report.compiled.reports, &report.loaded.inputs, &progress, &now).await;
        if summary.written > 0 || summary.failed > 0 {
            tracing::info!(written = summary.written, failed = summary.failed, "status updated");
        }
        // A failed write is retried on the next pass; make sure there is one.
        if summary.failed > 0 {
            reports.mark_changed();
        }
        tokio::time::sleep(min_interval).await;
    }
}
