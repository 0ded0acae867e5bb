//! Canary counts across controller replicas: proxies report to whichever replica they are
//! subscribed to, so every replica publishes the running totals of what its proxies reported in
//! a Lease of its own (`<prefix>-canary-<identity>`, label [`PEER_LABEL`], annotation
//! [`PEER_ANNOTATION`]); the leader reads the others' Leases and feeds the analysis the growth
//! since its last read.
//!
//! Totals (not deltas) travel, so a lost or late write loses nothing: the next one carries it. A
//! peer seen for the first time (or after this replica became leader) only sets a baseline — its
//! history is not judged as if it were the current interval. A dead peer's totals stop growing and
//! so stop counting; a replica that stops cleanly deletes its Lease.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use tollgate_ir::ObjectKey;
use tollgate_ir::canary::{Track, TrackCounts, TrackReport};

use super::leader::FIELD_MANAGER;
use crate::replica_lease::{LeaseError, LeaseKind, ReplicaLease, ReplicaLeaseSettings, lease_name};

/// Label of the canary count Leases.
pub const PEER_LABEL: &str = "tollgate.dev/canary-report";
/// Annotation holding a replica's totals (JSON list of [`TrackReport`]).
pub const PEER_ANNOTATION: &str = "tollgate.dev/canary-counts";

type CountKey = (ObjectKey, String, Track, String);

fn key_of(report: &TrackReport) -> CountKey {
    (report.api.clone(), report.stage.clone(), report.track, report.revision.clone())
}

/// Running totals of per-track counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    counts: BTreeMap<CountKey, TrackCounts>,
}

impl Totals {
    /// Adds reports.
    pub fn add(&mut self, reports: &[TrackReport]) {
        for r in reports {
            self.counts.entry(key_of(r)).or_default().add(&r.counts);
        }
    }

    /// Keeps only the canaries still served (`live` says which (api, stage, revision) are).
    pub fn retain(&mut self, live: impl Fn(&ObjectKey, &str, &str) -> bool) {
        self.counts.retain(|(api, stage, _, revision), _| live(api, stage, revision));
    }

    /// As reports.
    pub fn reports(&self) -> Vec<TrackReport> {
        self.counts
            .iter()
            .map(|((api, stage, track, revision), counts)| TrackReport {
                api: api.clone(),
                stage: stage.clone(),
                track: *track,
                revision: revision.clone(),
                counts: counts.clone(),
            })
            .collect()
    }

    /// What grew since `before` (a total that shrank — a restarted peer — counts from zero).
    pub fn growth_since(&self, before: &Totals) -> Vec<TrackReport> {
        let mut out = Vec::new();
        for (key, now) in &self.counts {
            let then = before.counts.get(key);
            let counts = match then {
                Some(then) if now.requests >= then.requests => TrackCounts {
                    requests: now.requests - then.requests,
                    errors: now.errors.saturating_sub(then.errors),
                    latency: now
                        .latency
                        .iter()
                        .enumerate()
                        .map(|(i, n)| n.saturating_sub(then.latency.get(i).copied().unwrap_or(0)))
                        .collect(),
                },
                _ => now.clone(),
            };
            if counts.requests > 0 {
                let (api, stage, track, revision) = key.clone();
                out.push(TrackReport { api, stage, track, revision, counts });
            }
        }
        out
    }

    fn from_reports(reports: Vec<TrackReport>) -> Totals {
        let mut totals = Totals::default();
        totals.add(&reports);
        totals
    }
}

/// Where the Leases live.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    /// Namespace (the controller's own).
    pub namespace: String,
    /// Name prefix; this replica's Lease is `<prefix>-canary-<identity>` (made a valid name).
    pub prefix: String,
    /// This replica's identity.
    pub identity: String,
}

impl PeerSettings {
    /// This replica's Lease name.
    pub fn lease_name(&self) -> String {
        lease_name(&self.prefix, CANARY_LEASE.infix, &self.identity)
    }
}

/// The kind of Lease canary counts travel in.
pub const CANARY_LEASE: LeaseKind = LeaseKind {
    infix: "canary",
    label: PEER_LABEL,
    annotation: PEER_ANNOTATION,
    field_manager: FIELD_MANAGER,
};

/// Why reading or writing the Leases failed.
pub type PeerError = LeaseError;

/// Publishes this replica's totals and reads the others' growth.
pub struct Peers {
    lease: ReplicaLease,
    /// Each peer Lease's totals at the last read.
    seen: HashMap<String, Totals>,
}

impl Peers {
    /// Leases in `settings.namespace`.
    pub fn new(client: Client, settings: PeerSettings) -> Peers {
        let settings = ReplicaLeaseSettings {
            namespace: settings.namespace,
            prefix: settings.prefix,
            identity: settings.identity,
            duration: None,
        };
        Peers { lease: ReplicaLease::new(client, CANARY_LEASE, settings), seen: HashMap::new() }
    }

    /// Writes this replica's totals (server-side apply).
    pub async fn publish(&self, totals: &Totals, wall: Timestamp) -> Result<(), PeerError> {
        self.lease.publish(&totals.reports(), wall).await
    }

    /// Deletes this replica's Lease (on a clean stop); one already gone is fine.
    pub async fn withdraw(&self) -> Result<(), PeerError> {
        self.lease.withdraw().await
    }

    /// Forgets the peers' totals (call when leadership is lost: the next read sets baselines).
    pub fn forget(&mut self) {
        self.seen.clear();
    }

    /// What the other replicas' proxies reported since the last read (nothing for a peer seen
    /// for the first time: its totals become the baseline).
    pub async fn growth(&mut self) -> Result<Vec<TrackReport>, PeerError> {
        let mut out = Vec::new();
        let mut present = Vec::new();
        for peer in self.lease.peers().await? {
            let totals = match peer.annotation.as_deref().map(serde_json::from_str::<Vec<TrackReport>>) {
                Some(Ok(reports)) => Totals::from_reports(reports),
                Some(Err(error)) => {
                    tracing::warn!(lease = %peer.name, %error, "unreadable canary counts; ignored");
                    continue;
                }
                None => continue,
            };
            present.push(peer.name.clone());
            if let Some(before) = self.seen.get(&peer.name) {
                out.extend(totals.growth_since(before));
            }
            self.seen.insert(peer.name, totals);
        }
        self.seen.retain(|name, _| present.contains(name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(requests: u64, errors: u64, revision: &str) -> TrackReport {
        crate::canary::test_report(Track::Canary, requests, errors, revision)
    }

    #[test]
    fn growth_is_the_difference_of_totals_and_a_restart_counts_from_zero() {
        let mut a = Totals::default();
        a.add(&[report(10, 1, "r1")]);
        let before = a.clone();
        a.add(&[report(5, 2, "r1"), report(3, 0, "r2")]);
        let growth = a.growth_since(&before);
        assert_eq!(growth.len(), 2);
        assert_eq!((growth[0].counts.requests, growth[0].counts.errors), (5, 2));
        assert_eq!(growth[0].counts.latency.iter().sum::<u64>(), 5);
        assert_eq!(growth[1].counts.requests, 3);
        assert!(a.growth_since(&a).is_empty());
        let mut restarted = Totals::default();
        restarted.add(&[report(4, 0, "r1")]);
        assert_eq!(restarted.growth_since(&a)[0].counts.requests, 4);
        a.retain(|_, _, revision| revision == "r2");
        assert_eq!(a.reports().len(), 1);
    }

    #[test]
    fn lease_names_are_valid() {
        let s = PeerSettings {
            namespace: "tollgate-system".into(),
            prefix: "tollgate-controller".into(),
            identity: "Pod_0a1b".into(),
        };
        assert_eq!(s.lease_name(), "tollgate-controller-canary-pod-0a1b");
    }
}
