//! Proxy counts across controller replicas.
//!
//! Every replica serves snapshots, so the proxies of a fleet are spread over all of them, but only
//! the leader writes status. Each replica therefore publishes what its own proxies have applied
//! (per GatewayAPI: the generation it compiled, connected proxies, proxies serving that
//! generation) in a `coordination.k8s.io` Lease of its own, renewed every few seconds; the leader
//! lists those Leases and adds them to its own counts before it writes `status.proxies` and the
//! `Programmed` condition.
//!
//! A replica that dies stops renewing; its report is ignored once the leader has seen the same
//! `renewTime` for a whole lease duration, measured on the leader's monotonic clock (as for
//! leader election), so clock skew between nodes does not matter. A replica that stops cleanly
//! deletes its Lease.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_ir::ObjectKey;

use crate::distribute::Sessions;
use crate::distribute::sessions::ApiProxies;
use crate::publish::{Published, Publisher};
use crate::replica_lease::{LeaseError, LeaseKind, ReplicaLease, ReplicaLeaseSettings};
use crate::status::FIELD_MANAGER;

/// Label on every report Lease (value `"true"`); the leader lists by it.
pub const REPORT_LABEL: &str = "tollgate.dev/proxy-report";
/// Annotation holding the report as JSON.
pub const REPORT_ANNOTATION: &str = "tollgate.dev/proxies";

/// One replica's view of one GatewayAPI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiReport {
    /// The API generation this replica compiled and serves.
    pub generation: i64,
    /// Proxies of the API's fleet connected to this replica.
    pub connected: u32,
    /// Those of them that applied a snapshot carrying `generation`.
    pub up_to_date: u32,
}

/// What one replica reports: `namespace/name` of each served GatewayAPI → its counts.
pub type ReplicaReport = BTreeMap<String, ApiReport>;

/// This replica's report, from its sessions and what it published.
pub fn local_report(published: &Published, sessions: &Sessions) -> ReplicaReport {
    let counts = sessions.api_counts(published);
    published
        .apis
        .iter()
        .map(|(key, api)| {
            let c = counts.get(key).copied().unwrap_or_default();
            (
                key.to_string(),
                ApiReport { generation: api.generation, connected: c.connected, up_to_date: c.up_to_date },
            )
        })
        .collect()
}

/// Adds the other replicas' reports to this replica's counts. A peer's proxies count as up to date
/// for an API only when the peer serves the same generation or a newer one; a peer still on an
/// older generation contributes connected proxies that are not up to date.
pub fn add_peers(
    own: &BTreeMap<ObjectKey, ApiProxies>,
    generations: &BTreeMap<ObjectKey, i64>,
    peers: &[ReplicaReport],
) -> BTreeMap<ObjectKey, ApiProxies> {
    own.iter()
        .map(|(key, counts)| {
            let mut total = *counts;
            let name = key.to_string();
            let generation = generations.get(key).copied().unwrap_or_default();
            for peer in peers {
                if let Some(theirs) = peer.get(&name) {
                    total.connected = total.connected.saturating_add(theirs.connected);
                    if theirs.generation >= generation {
                        total.up_to_date = total.up_to_date.saturating_add(theirs.up_to_date);
                    }
                }
            }
            (key.clone(), total)
        })
        .collect()
}

/// Where reports live and how often they are renewed.
#[derive(Clone, Debug)]
pub struct ReportSettings {
    /// Namespace of the report Leases (the controller's own).
    pub namespace: String,
    /// Name prefix; each replica's Lease is `<prefix>-proxies-<identity>` (made a valid name).
    pub prefix: String,
    /// This replica's identity.
    pub identity: String,
    /// A report not renewed for this long is ignored.
    pub duration: Duration,
    /// How often a report is renewed.
    pub renew_every: Duration,
}

/// The kind of Lease proxy reports travel in.
pub const REPORT_LEASE: LeaseKind = LeaseKind {
    infix: "proxies",
    label: REPORT_LABEL,
    annotation: REPORT_ANNOTATION,
    field_manager: FIELD_MANAGER,
};

/// Writes this replica's report and reads the others'.
pub struct Reports {
    lease: ReplicaLease,
    settings: ReportSettings,
    /// For each peer Lease: the last `renewTime` seen and when it was first seen.
    seen: HashMap<String, (Option<MicroTime>, Instant)>,
}

impl Reports {
    /// Reports in `settings.namespace`.
    pub fn new(client: Client, settings: ReportSettings) -> Reports {
        let lease = ReplicaLease::new(
            client,
            REPORT_LEASE,
            ReplicaLeaseSettings {
                namespace: settings.namespace.clone(),
                prefix: settings.prefix.clone(),
                identity: settings.identity.clone(),
                duration: Some(settings.duration),
            },
        );
        Reports { lease, settings, seen: HashMap::new() }
    }

    /// Creates or renews this replica's Lease with `report`.
    pub async fn publish(&self, report: &ReplicaReport, wall: Timestamp) -> Result<(), LeaseError> {
        self.lease.publish(report, wall).await
    }

    /// Deletes this replica's Lease (on a clean stop). A Lease already gone is fine.
    pub async fn withdraw(&self) -> Result<(), LeaseError> {
        self.lease.withdraw().await
    }

    /// The other replicas' live reports. `now` is the monotonic clock: a report whose `renewTime`
    /// has not changed for a lease duration is stale and left out; an unreadable one is skipped
    /// with a warning.
    pub async fn peers(&mut self, now: Instant) -> Result<Vec<ReplicaReport>, LeaseError> {
        let peers = self.lease.peers().await?;
        let mut live = Vec::new();
        for peer in &peers {
            let first_seen = match self.seen.get(&peer.name) {
                Some((seen, since)) if *seen == peer.renew_time => *since,
                _ => {
                    self.seen.insert(peer.name.clone(), (peer.renew_time.clone(), now));
                    now
                }
            };
            if now.saturating_duration_since(first_seen) > peer.duration.unwrap_or(self.settings.duration) {
                continue;
            }
            match peer.annotation.as_deref().map(serde_json::from_str::<ReplicaReport>) {
                Some(Ok(report)) => live.push(report),
                Some(Err(error)) => {
                    tracing::warn!(lease = %peer.name, %error, "unreadable proxy report; ignored")
                }
                None => {
                    tracing::warn!(lease = %peer.name, "proxy report Lease without its annotation; ignored")
                }
            }
        }
        self.seen.retain(|name, _| peers.iter().any(|p| p.name == *name));
        Ok(live)
    }
}

/// Keeps this replica's report current (renewed every `renew_every`, rewritten soon after proxies
/// connect or apply) and, while this replica leads, the peers' reports in `peers_out`. Deletes the
/// report on shutdown.
pub async fn run_reports(
    mut reports: Reports,
    publisher: Arc<Publisher>,
    sessions: Arc<Sessions>,
    leader: watch::Receiver<bool>,
    peers_out: watch::Sender<Vec<ReplicaReport>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut proxies = sessions.watch();
    let renew_every = reports.settings.renew_every;
    let mut last: Option<(ReplicaReport, Instant)> = None;
    loop {
        let report = local_report(&publisher.current(), &sessions);
        let now = Instant::now();
        let due = match &last {
            Some((written, at)) => *written != report || now.saturating_duration_since(*at) >= renew_every,
            None => true,
        };
        if due {
            match reports.publish(&report, Timestamp::now()).await {
                Ok(()) => last = Some((report, now)),
                Err(error) => tracing::warn!(%error, "writing this replica's proxy report failed"),
            }
        }
        if *leader.borrow() {
            match reports.peers(now).await {
                Ok(peers) => {
                    peers_out.send_if_modified(|current| {
                        let changed = *current != peers;
                        *current = peers;
                        changed
                    });
                }
                Err(error) => tracing::warn!(%error, "reading the other replicas' proxy reports failed"),
            }
        } else {
            peers_out.send_if_modified(|current| !std::mem::take(current).is_empty());
        }
        tokio::select! {
            _ = tokio::time::sleep(renew_every) => {}
            // Proxies connected or applied: report soon, but at most once a second.
            _ = proxies.changed() => tokio::time::sleep(Duration::from_secs(1)).await,
            _ = crate::stopped(&mut shutdown) => {
                if let Err(error) = reports.withdraw().await {
                    tracing::warn!(%error, "deleting this replica's proxy report failed");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("shop", name)
    }

    fn report(entries: &[(&str, i64, u32, u32)]) -> ReplicaReport {
        entries
            .iter()
            .map(|(name, generation, connected, up_to_date)| {
                (
                    format!("shop/{name}"),
                    ApiReport { generation: *generation, connected: *connected, up_to_date: *up_to_date },
                )
            })
            .collect()
    }

    #[test]
    fn peers_add_their_proxies_and_count_as_up_to_date_only_on_the_same_or_a_newer_generation() {
        let own = BTreeMap::from([(key("a"), ApiProxies { connected: 2, up_to_date: 2 })]);
        let generations = BTreeMap::from([(key("a"), 5)]);
        let same = report(&[("a", 5, 3, 3)]);
        let behind = report(&[("a", 4, 2, 2)]);
        let ahead = report(&[("a", 6, 1, 1)]);
        let other_api = report(&[("b", 5, 9, 9)]);
        let total = add_peers(&own, &generations, &[same, behind, ahead, other_api]);
        assert_eq!(total[&key("a")], ApiProxies { connected: 8, up_to_date: 6 });
        assert_eq!(total.len(), 1, "only APIs this replica serves get a status");
    }

    #[test]
    fn a_peer_with_lagging_proxies_keeps_the_api_pending() {
        let own = BTreeMap::from([(key("a"), ApiProxies { connected: 1, up_to_date: 1 })]);
        let generations = BTreeMap::from([(key("a"), 2)]);
        let total = add_peers(&own, &generations, &[report(&[("a", 2, 2, 1)])]);
        assert_eq!(total[&key("a")], ApiProxies { connected: 3, up_to_date: 2 });
    }
}
