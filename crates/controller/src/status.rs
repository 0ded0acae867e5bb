//! Status: turns compile reports (and proxy counts) into `status` patches, written by the leader
//! with server-side apply under one field manager, only when something changed.
//!
//! `lastTransitionTime` moves only when a condition's status flips; a message or reason change
//! keeps it. A status equal to what the object already has (or what this writer last wrote) is
//! not written again. Only `status` is ever patched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};
use serde::{Deserialize, Serialize};
use tollgate_crds::{Authorizer, GatewayAPI, ProxyCounts, Route, ServiceExport, UsagePlan};
use tollgate_ir::ObjectKey;

use crate::diagnostics::{ObjectReport, condition, reason};
use crate::distribute::sessions::ApiProxies;
use crate::inputs::{Inputs, Kind, Object};
use crate::metrics::ControllerMetrics;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "tollgate-controller";

/// The part of `status` the controller owns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, sorted by type.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// GatewayAPI only: proxies of its fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<ProxyCounts>,
}

impl OwnedStatus {
    fn normalized(mut self) -> OwnedStatus {
        self.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        self
    }
}

/// Proxy counts of a GatewayAPI's fleet, for its `Programmed` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetProgress {
    /// The fleet's name.
    pub fleet: String,
    /// The counts.
    pub proxies: ApiProxies,
}

/// The status an object should have, given its compile report, its current status, and (for a
/// served GatewayAPI) how far its fleet got. Pure: `now` is the only clock.
pub fn desired_status(
    report: &ObjectReport,
    current: &OwnedStatus,
    progress: Option<&FleetProgress>,
    now: &Time,
) -> OwnedStatus {
    let mut conditions: Vec<Condition> = report
        .conditions
        .iter()
        .map(|c| Condition {
            type_: c.type_.to_string(),
            status: c.status.to_string(),
            reason: c.reason.to_string(),
            message: truncate(&c.message, 32 * 1024),
            observed_generation: Some(c.observed_generation),
            last_transition_time: now.clone(),
        })
        .collect();
    let mut proxies = None;
    if report.kind == Kind::GatewayAPI
        && let Some(progress) = progress
    {
        let p = progress.proxies;
        proxies = Some(ProxyCounts {
            connected: Some(i32::try_from(p.connected).unwrap_or(i32::MAX)),
            up_to_date: Some(i32::try_from(p.up_to_date).unwrap_or(i32::MAX)),
        });
        if let Some(programmed) = conditions.iter_mut().find(|c| c.type_ == condition::PROGRAMMED)
            && programmed.status == "True"
        {
            let fleet = &progress.fleet;
            let (status, why, message) = if p.connected == 0 {
                ("False", reason::NO_PROXIES, format!("no proxy of fleet {fleet} is connected"))
            } else if p.up_to_date < p.connected {
                (
                    "False",
                    reason::PENDING,
                    format!(
                        "{} of {} proxies of fleet {fleet} serve generation {}",
                        p.up_to_date, p.connected, report.generation
                    ),
                )
            } else {
                (
                    "True",
                    reason::PROGRAMMED,
                    format!(
                        "all {} proxies of fleet {fleet} serve generation {}",
                        p.connected, report.generation
                    ),
                )
            };
            programmed.status = status.to_string();
            programmed.reason = why.to_string();
            programmed.message = message;
        }
    }
    for c in &mut conditions {
        if let Some(old) = current.conditions.iter().find(|o| o.type_ == c.type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    OwnedStatus { observed_generation: Some(report.generation), conditions, proxies }.normalized()
}

fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// The server-side apply body for a status: apiVersion, kind, name, namespace and `status` only.
pub fn apply_body(kind: Kind, key: &ObjectKey, status: &OwnedStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": format!("{}/{}", tollgate_crds::GROUP, tollgate_crds::VERSION),
        "kind": kind.to_string(),
        "metadata": {"name": key.name, "namespace": key.namespace},
        "status": status,
    })
}

/// What the writer knows about an object in the cluster.
struct Existing {
    status: OwnedStatus,
    reference: ObjectReference,
}

fn existing(inputs: &Inputs) -> HashMap<(Kind, ObjectKey), Existing> {
    fn add<K>(out: &mut HashMap<(Kind, ObjectKey), Existing>, kind: Kind, objects: &[Object<K>])
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        for o in objects {
            let status = serde_json::to_value(&o.object)
                .ok()
                .and_then(|v| v.get("status").cloned())
                .and_then(|s| serde_json::from_value::<OwnedStatus>(s).ok())
                .unwrap_or_default()
                .normalized();
            out.insert((kind, o.key()), Existing { status, reference: o.object.object_ref(&()) });
        }
    }
    let mut out = HashMap::new();
    add(&mut out, Kind::GatewayAPI, &inputs.gateway_apis);
    add(&mut out, Kind::Route, &inputs.routes);
    add(&mut out, Kind::Authorizer, &inputs.authorizers);
    add(&mut out, Kind::UsagePlan, &inputs.usage_plans);
    add(&mut out, Kind::ServiceExport, &inputs.service_exports);
    out
}

/// Writes status (leader only) and Events for rejections.
pub struct StatusWriter {
    client: Client,
    recorder: Option<Recorder>,
    written: HashMap<(Kind, ObjectKey), OwnedStatus>,
    metrics: Arc<ControllerMetrics>,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Patches sent and accepted.
    pub written: usize,
    /// Objects whose status was already right.
    pub skipped: usize,
    /// Patches that failed (retried on the next pass).
    pub failed: usize,
}

impl StatusWriter {
    /// A writer; `recorder` publishes Events (None: no Events).
    pub fn new(client: Client, recorder: Option<Recorder>, metrics: Arc<ControllerMetrics>) -> StatusWriter {
        StatusWriter { client, recorder, written: HashMap::new(), metrics }
    }

    /// Forgets what was written (call when leadership is lost: another writer may have moved on).
    pub fn forget(&mut self) {
        self.written.clear();
    }

    /// Brings every reported object's status up to date.
    pub async fn write(
        &mut self,
        reports: &[ObjectReport],
        inputs: &Inputs,
        progress: &BTreeMap<ObjectKey, FleetProgress>,
        now: &Time,
    ) -> WriteSummary {
        let existing = existing(inputs);
        let mut summary = WriteSummary::default();
        self.written.retain(|k, _| existing.contains_key(k));
        for report in reports {
            let id = (report.kind, report.key.clone());
            let Some(object) = existing.get(&id) else { continue };
            // What this writer last wrote is newer than a store that has not caught up yet.
            let current = self.written.get(&id).unwrap_or(&object.status);
            let progress = (report.kind == Kind::GatewayAPI).then(|| progress.get(&report.key)).flatten();
            let desired = desired_status(report, current, progress, now);
            if desired == *current {
                summary.skipped += 1;
                self.metrics.status_writes.with_label_values(&[&report.kind.to_string(), "skipped"]).inc();
                self.written.insert(id, desired);
                continue;
            }
            let was_rejected = rejected(current);
            match self.patch(report.kind, &report.key, &desired).await {
                Ok(()) => {
                    summary.written += 1;
                    self.metrics
                        .status_writes
                        .with_label_values(&[&report.kind.to_string(), "written"])
                        .inc();
                    if rejected(&desired) && !was_rejected {
                        self.event(&desired, &object.reference).await;
                    }
                    self.written.insert(id, desired);
                }
                Err(error) => {
                    summary.failed += 1;
                    self.metrics.status_writes.with_label_values(&[&report.kind.to_string(), "failed"]).inc();
                    tracing::warn!(kind = %report.kind, object = %report.key, %error, "status write failed");
                }
            }
        }
        summary
    }

    async fn patch(&self, kind: Kind, key: &ObjectKey, status: &OwnedStatus) -> Result<(), kube::Error> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let body = Patch::Apply(apply_body(kind, key, status));
        let client = self.client.clone();
        let ns = key.namespace.as_str();
        match kind {
            Kind::GatewayAPI => Api::<GatewayAPI>::namespaced(client, ns)
                .patch_status(&key.name, &params, &body)
                .await
                .map(drop),
            Kind::Route => {
                Api::<Route>::namespaced(client, ns).patch_status(&key.name, &params, &body).await.map(drop)
            }
            Kind::Authorizer => Api::<Authorizer>::namespaced(client, ns)
                .patch_status(&key.name, &params, &body)
                .await
                .map(drop),
            Kind::UsagePlan => Api::<UsagePlan>::namespaced(client, ns)
                .patch_status(&key.name, &params, &body)
                .await
                .map(drop),
            Kind::ServiceExport => Api::<ServiceExport>::namespaced(client, ns)
                .patch_status(&key.name, &params, &body)
                .await
                .map(drop),
            _ => Ok(()),
        }
    }

    async fn event(&self, status: &OwnedStatus, reference: &ObjectReference) {
        let Some(recorder) = &self.recorder else { return };
        let Some(accepted) = status.conditions.iter().find(|c| c.type_ == condition::ACCEPTED) else {
            return;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: accepted.reason.clone(),
            note: Some(truncate(&accepted.message, 1000)),
            action: "Compile".to_string(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, reference).await {
            tracing::warn!(%error, "could not publish an Event");
        }
    }
}

fn rejected(status: &OwnedStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == condition::ACCEPTED && c.status == "False")
}
