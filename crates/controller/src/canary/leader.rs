//! The controller's analysis loop (leader only): takes the counts proxies reported, evaluates
//! each canary stage, writes `status.stages[].canary` (server-side apply under its own field
//! manager, so it never fights the condition writer) and an Event per step.
//!
//! Compile reads the effective weight back from that status, so every controller replica
//! publishes the same weight, and a restarted or new leader carries on where the last one
//! stopped. The spec is never written. Every replica publishes the totals its own proxies
//! reported (`peers.rs`), so the leader judges the counts of the whole fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tollgate_crds::{CanaryStatus, GatewayAPI, StageStatus};
use tollgate_ir::ObjectKey;

use super::analyzer::{Analyzer, StageId};
use super::clock::Clock;
use super::machine::Decision;
use super::peers::{Peers, Totals};
use crate::distribute::Sessions;
use crate::inputs::Inputs;
use crate::reconcile::Report;

/// The field manager of `status.stages`.
pub const FIELD_MANAGER: &str = "tollgate-canary";

/// Writes canary status and Events.
pub struct CanaryWriter {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events (None: no Events).
    pub recorder: Option<Recorder>,
}

impl CanaryWriter {
    async fn patch(&self, api: &ObjectKey, stages: Vec<StageStatus>) -> Result<(), kube::Error> {
        let body = serde_json::json!({
            "apiVersion": format!("{}/{}", tollgate_crds::GROUP, tollgate_crds::VERSION),
            "kind": "GatewayAPI",
            "metadata": {"name": api.name, "namespace": api.namespace},
            "status": {"stages": stages},
        });
        Api::<GatewayAPI>::namespaced(self.client.clone(), &api.namespace)
            .patch_status(&api.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body))
            .await
            .map(drop)
    }

    async fn event(&self, inputs: &Inputs, id: &StageId, decision: &Decision) {
        let Some(recorder) = &self.recorder else { return };
        let Some(object) = inputs.gateway_apis.iter().find(|o| o.key() == id.api) else { return };
        let event = Event {
            type_: if decision.verdict == super::machine::Verdict::RolledBack {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: decision.verdict.reason().to_string(),
            note: Some(truncate(&format!("stage {}: {}", id.stage, decision.message), 1000)),
            action: "CanaryAnalysis".to_string(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &object.object.object_ref(&())).await {
            tracing::warn!(%error, "could not publish a canary Event");
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// What status currently records for a stage's canary.
fn recorded(inputs: &Inputs, id: &StageId) -> Option<CanaryStatus> {
    let object = inputs.gateway_apis.iter().find(|o| o.key() == id.api)?;
    object.object.status.as_ref()?.stages.iter().find(|s| s.name == id.stage)?.canary.clone()
}

/// How often replicas publish their totals and the leader reads the others'.
pub const PEER_EVERY: Duration = Duration::from_secs(2);

/// What the analysis loop works with.
pub struct AnalysisLoop<C: Clock + Clone> {
    /// The clock intervals are measured on.
    pub clock: C,
    /// Writes status and Events.
    pub writer: CanaryWriter,
    /// Where proxies' reports arrive.
    pub sessions: Arc<Sessions>,
    /// The latest compile (snapshot and the objects, with their status).
    pub reports: watch::Receiver<Option<Arc<Report>>>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// How often reports are taken and intervals checked.
    pub tick: Duration,
    /// Sharing counts with the other replicas (`None`: a single replica).
    pub peers: Option<Peers>,
    /// Where the fleet-wide per-track evidence is recorded (while leading).
    pub metrics: Arc<crate::metrics::ControllerMetrics>,
}

/// Runs the analysis every `tick` while this replica leads; until `shutdown` flips. With
/// `peers`, publishes this replica's totals (every replica) and adds the other replicas' (leader).
pub async fn run<C: Clock + Clone>(setup: AnalysisLoop<C>, mut shutdown: watch::Receiver<bool>) {
    let AnalysisLoop { clock, writer, sessions, mut reports, leader, tick, mut peers, metrics } = setup;
    let mut analyzer = Analyzer::new(clock.clone());
    let mut synced: Option<Arc<Report>> = None;
    // APIs whose status still has to be written (a failed write is retried on the next tick).
    let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut totals = Totals::default();
    let mut published = Totals::default();
    let mut peer_io = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = crate::stopped(&mut shutdown) => {
                if let Some(peers) = &peers
                    && let Err(error) = peers.withdraw().await
                {
                    tracing::warn!(%error, "could not delete this replica's canary count Lease");
                }
                return;
            }
        }
        // What this replica's proxies reported: judged here when leading, and published for the
        // leader otherwise.
        let mut stats = sessions.take_stats();
        totals.add(&stats);
        let leading = *leader.borrow();
        let current = reports.borrow_and_update().clone();
        if let Some(peers) = peers.as_mut()
            && peer_io.elapsed() >= PEER_EVERY
        {
            peer_io = tokio::time::Instant::now();
            if let Some(report) = &current {
                let snapshot = &report.compiled.snapshot;
                totals.retain(|api, stage, revision| {
                    snapshot.apis.iter().any(|a| {
                        a.key == *api
                            && a.stages.iter().any(|s| {
                                s.name == stage && s.canary.as_ref().is_some_and(|c| c.revision == revision)
                            })
                    })
                });
            }
            if totals != published {
                match peers.publish(&totals, k8s_openapi::jiff::Timestamp::now()).await {
                    Ok(()) => published = totals.clone(),
                    Err(error) => tracing::warn!(%error, "could not publish this replica's canary counts"),
                }
            }
            if leading {
                match peers.growth().await {
                    Ok(growth) => stats.extend(growth),
                    Err(error) => tracing::warn!(%error, "could not read the other replicas' canary counts"),
                }
            } else {
                peers.forget();
            }
        }
        if leading {
            // The whole fleet's counts: this replica's proxies and what the others reported.
            metrics.canary_evidence.record(&stats);
        } else {
            // Another replica decides; start from status when this one leads again.
            analyzer = Analyzer::new(clock.clone());
            synced = None;
            dirty.clear();
            continue;
        }
        let Some(report) = current else { continue };
        if synced.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &report)) {
            let inputs = &report.loaded.inputs;
            if analyzer.sync(&report.compiled.snapshot, |id| recorded(inputs, id)) {
                dirty.extend(analyzer.statuses().keys().map(|id| id.api.clone()));
            }
            synced = Some(Arc::clone(&report));
        }
        analyzer.record(&stats);
        for (id, decision) in analyzer.tick() {
            tracing::info!(api = %id.api, stage = %id.stage, verdict = decision.verdict.reason(), weight = decision.weight.percent(), "{}", decision.message);
            if decision.verdict.is_step() {
                writer.event(&report.loaded.inputs, &id, &decision).await;
            }
            dirty.insert(id.api.clone());
        }
        if dirty.is_empty() {
            continue;
        }
        let mut by_api: BTreeMap<ObjectKey, Vec<StageStatus>> = BTreeMap::new();
        for (id, status) in analyzer.statuses() {
            by_api
                .entry(id.api.clone())
                .or_default()
                .push(StageStatus { name: id.stage, canary: Some(status) });
        }
        for api in std::mem::take(&mut dirty) {
            let stages = by_api.remove(&api).unwrap_or_default();
            if let Err(error) = writer.patch(&api, stages).await {
                tracing::warn!(%api, %error, "canary status write failed; retrying");
                dirty.insert(api);
            }
        }
    }
}
