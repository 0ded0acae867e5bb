//! The publisher: turns compile results and endpoint changes into versioned, per-fleet snapshots
//! that subscriptions read, with each fleet's frames encoded once for all of its proxies.
//!
//! Two paths, cheap for what they are:
//! - **full**: after a compile, each fleet whose content changed gets a new version and a full
//!   snapshot frame; fleets whose content did not change keep their version.
//! - **endpoints**: when only EndpointSlices changed, no compile runs: the Services that the
//!   fleet's backends came from are re-resolved, and the changed endpoint lists are merged into
//!   one [`EndpointUpdate`] over the fleet's last full snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tollgate_ir::distribution::{EndpointUpdate, Frame, FrameError, ServiceEndpoints, ServiceRef};
use tollgate_ir::{ObjectKey, Snapshot};

use crate::compile::ServiceIndex;
use crate::inputs::Inputs;

/// What every subscription reads: the current state of each fleet.
#[derive(Default)]
pub struct Published {
    /// Whether anything was published yet (subscriptions wait until then).
    pub ready: bool,
    /// Fleets by name.
    pub fleets: BTreeMap<String, Arc<FleetView>>,
    /// For each served GatewayAPI: its fleet, generation, and the first version that carried it.
    pub apis: BTreeMap<ObjectKey, ApiVersion>,
    /// The view a fleet with no API gets.
    pub empty: Option<Arc<FleetView>>,
}

impl Published {
    /// The view of `fleet` (an empty snapshot for a fleet no API names).
    pub fn fleet(&self, fleet: &str) -> Option<Arc<FleetView>> {
        self.fleets.get(fleet).or(self.empty.as_ref()).cloned()
    }
}

/// Where one GatewayAPI's latest generation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiVersion {
    /// The API's fleet.
    pub fleet: String,
    /// The generation compiled.
    pub generation: i64,
    /// The first fleet version that carried this generation: a proxy at this version or later
    /// serves it.
    pub since: u64,
}

/// One fleet's current snapshot and its encoded frames.
pub struct FleetView {
    /// The snapshot (endpoint updates applied), at its current version.
    pub snapshot: Arc<Snapshot>,
    /// The version of the last full (structural) change.
    pub full_version: u64,
    /// The full snapshot, encoded.
    pub full_frame: Bytes,
    /// The endpoint update since `full_version`, encoded (when endpoints changed since).
    pub endpoints_frame: Option<Bytes>,
    /// When the change that produced this version was first seen.
    pub changed_at: Option<Instant>,
    /// The endpoint lists patched since `full_version`.
    patched: BTreeMap<ServiceRef, Vec<String>>,
}

impl FleetView {
    /// The current version.
    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// The frame that takes a proxy at `have` (0: nothing) to the current version, or `None` when
    /// it is there already.
    pub fn frame_from(&self, have: u64) -> Option<Bytes> {
        if have == self.version() {
            return None;
        }
        match &self.endpoints_frame {
            Some(frame) if have >= self.full_version && have < self.version() => Some(frame.clone()),
            _ => Some(self.full_frame.clone()),
        }
    }
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A frame could not be encoded.
    #[error("encoding the snapshot of fleet {fleet}: {source}")]
    Encode {
        /// The fleet.
        fleet: String,
        /// The cause.
        #[source]
        source: FrameError,
    },
}

/// Publishes snapshots; cheap to share.
pub struct Publisher {
    tx: watch::Sender<Arc<Published>>,
    last_version: Mutex<u64>,
}

/// What a publish did, for logs and metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Fleets that got a new version.
    pub changed_fleets: Vec<String>,
    /// The highest version now published.
    pub version: u64,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher::new()
    }
}

impl Publisher {
    /// A publisher with nothing published.
    pub fn new() -> Publisher {
        let (tx, _) = watch::channel(Arc::new(Published::default()));
        Publisher { tx, last_version: Mutex::new(0) }
    }

    /// Subscribes to changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// The current state.
    pub fn current(&self) -> Arc<Published> {
        self.tx.borrow().clone()
    }

    /// A new version: the wall clock in milliseconds, or one more than the last — so versions
    /// keep growing across controller restarts (proxies log and report them; they never need to
    /// compare them).
    fn next_version(&self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let now = u64::try_from(now).unwrap_or(u64::MAX);
        match self.last_version.lock() {
            Ok(mut last) => {
                *last = now.max(*last + 1);
                *last
            }
            Err(_) => now,
        }
    }

    /// Publishes a compiled snapshot: fleets whose content changed get a new version.
    pub fn publish(&self, snapshot: &Snapshot, changed_at: Option<Instant>) -> Result<Outcome, PublishError> {
        let current = self.current();
        // Everything but APIs and certificates is fleet-independent.
        let template = without_apis(snapshot);
        let mut fleets_now: BTreeMap<String, Snapshot> = BTreeMap::new();
        for api in &snapshot.apis {
            fleets_now.entry(api.fleet.clone()).or_insert_with(|| template.clone()).apis.push(api.clone());
        }
        for (fleet, fleet_snapshot) in fleets_now.iter_mut() {
            fleet_snapshot.certificates = fleet_certificates(snapshot, fleet);
        }
        // A fleet that lost its last API gets an empty snapshot (its proxies stop serving it).
        for fleet in current.fleets.keys() {
            fleets_now.entry(fleet.clone()).or_insert_with(|| template.clone());
        }
        let mut next = Published {
            ready: true,
            fleets: BTreeMap::new(),
            apis: BTreeMap::new(),
            empty: current.empty.clone(),
        };
        let mut outcome = Outcome::default();
        let mut version = None;
        for (fleet, mut content) in fleets_now {
            let unchanged = current.fleets.get(&fleet).filter(|view| same_content(&view.snapshot, &content));
            let view = match unchanged {
                Some(view) => Arc::clone(view),
                None => {
                    let v = *version.get_or_insert_with(|| self.next_version());
                    set_version(&mut content, v);
                    outcome.changed_fleets.push(fleet.clone());
                    Arc::new(full_view(&fleet, content, changed_at)?)
                }
            };
            next.fleets.insert(fleet, view);
        }
        if next.empty.is_none() {
            let v = *version.get_or_insert_with(|| self.next_version());
            let mut empty = template.clone();
            set_version(&mut empty, v);
            next.empty = Some(Arc::new(full_view("(empty)", empty, changed_at)?));
        }
        for (fleet, view) in &next.fleets {
            for api in &view.snapshot.apis {
                let since = match current.apis.get(&api.key) {
                    Some(old) if old.generation == api.generation && old.fleet == *fleet => old.since,
                    _ => view.full_version,
                };
                next.apis.insert(
                    api.key.clone(),
                    ApiVersion { fleet: fleet.clone(), generation: api.generation, since },
                );
            }
        }
        outcome.version = next.fleets.values().map(|v| v.version()).max().unwrap_or(0);
        self.tx.send_replace(Arc::new(next));
        Ok(outcome)
    }

    /// The cheap path: re-resolves the endpoints of every Service the published backends came
    /// from; fleets where some changed get an endpoint update (and a new version).
    pub fn update_endpoints(
        &self,
        inputs: &Inputs,
        changed_at: Option<Instant>,
    ) -> Result<Outcome, PublishError> {
        let current = self.current();
        if !current.ready {
            return Ok(Outcome::default());
        }
        let services = ServiceIndex::new(inputs);
        let mut next = Published {
            ready: true,
            fleets: BTreeMap::new(),
            apis: current.apis.clone(),
            empty: current.empty.clone(),
        };
        let mut outcome = Outcome::default();
        let mut version = None;
        for (fleet, view) in &current.fleets {
            let mut refs: BTreeMap<&ServiceRef, &Vec<String>> = BTreeMap::new();
            for backend in view.snapshot.backends() {
                if let Some(service) = &backend.service {
                    refs.entry(service).or_insert(&backend.endpoints);
                }
            }
            let mut changed = Vec::new();
            for (service, endpoints) in refs {
                let now = services
                    .resolve(&service.namespace, &service.name, service.port)
                    .map(|b| b.endpoints)
                    .unwrap_or_default();
                if now != *endpoints {
                    changed.push(ServiceEndpoints { service: service.clone(), endpoints: now });
                }
            }
            if changed.is_empty() {
                next.fleets.insert(fleet.clone(), Arc::clone(view));
                continue;
            }
            let v = *version.get_or_insert_with(|| self.next_version());
            let mut patched = view.patched.clone();
            for c in &changed {
                patched.insert(c.service.clone(), c.endpoints.clone());
            }
            let update = EndpointUpdate {
                version: v,
                base_version: view.full_version,
                services: patched
                    .iter()
                    .map(|(service, endpoints)| ServiceEndpoints {
                        service: service.clone(),
                        endpoints: endpoints.clone(),
                    })
                    .collect(),
            };
            let mut snapshot = (*view.snapshot).clone();
            snapshot.apply_endpoints(&update);
            set_version(&mut snapshot, v);
            let encode = |frame: Frame| {
                frame
                    .encode()
                    .map(Bytes::from)
                    .map_err(|source| PublishError::Encode { fleet: fleet.clone(), source })
            };
            let endpoints_frame = encode(Frame::Endpoints(update))?;
            // The full frame carries the patched endpoints, for proxies that connect now.
            let full_frame = encode(Frame::Snapshot(snapshot.clone()))?;
            outcome.changed_fleets.push(fleet.clone());
            next.fleets.insert(
                fleet.clone(),
                Arc::new(FleetView {
                    snapshot: Arc::new(snapshot),
                    full_version: view.full_version,
                    full_frame,
                    endpoints_frame: Some(endpoints_frame),
                    changed_at,
                    patched,
                }),
            );
        }
        outcome.version = next.fleets.values().map(|v| v.version()).max().unwrap_or(0);
        if !outcome.changed_fleets.is_empty() {
            self.tx.send_replace(Arc::new(next));
        }
        Ok(outcome)
    }
}

fn full_view(
    fleet: &str,
    snapshot: Snapshot,
    changed_at: Option<Instant>,
) -> Result<FleetView, PublishError> {
    let full_frame = Frame::encode_snapshot(&snapshot)
        .map(Bytes::from)
        .map_err(|source| PublishError::Encode { fleet: fleet.to_string(), source })?;
    Ok(FleetView {
        full_version: snapshot.version,
        snapshot: Arc::new(snapshot),
        full_frame,
        endpoints_frame: None,
        changed_at,
        patched: BTreeMap::new(),
    })
}

/// The certificates a fleet needs: those for hostnames of its APIs (and their stages).
fn fleet_certificates(snapshot: &Snapshot, fleet: &str) -> Vec<tollgate_ir::Certificate> {
    let hostnames: BTreeSet<&str> = snapshot
        .apis
        .iter()
        .filter(|a| a.fleet == fleet)
        .flat_map(|a| a.hostnames.iter().chain(a.stages.iter().flat_map(|s| s.hostnames.iter())))
        .map(String::as_str)
        .collect();
    snapshot
        .certificates
        .iter()
        .filter(|c| c.hostnames.iter().any(|h| hostnames.contains(h.as_str())))
        .cloned()
        .collect()
}

/// The fleet-independent part of a snapshot: no APIs, no certificates, version 0, no hash. Built
/// field by field rather than cloned and cleared: a clone would copy every route first.
fn without_apis(snapshot: &Snapshot) -> Snapshot {
    // Destructured so that a new field cannot be forgotten here.
    let Snapshot { version: _, content_hash: _, apis: _, certificates: _ } = snapshot;
    Snapshot::default()
}

/// Whether two snapshots have the same content (versions and hashes aside).
fn same_content(published: &Snapshot, candidate: &Snapshot) -> bool {
    let Snapshot { version: _, content_hash: _, apis, certificates } = published;
    *apis == candidate.apis && *certificates == candidate.certificates
}

/// Sets the version and the content hash: hex SHA-256 of the snapshot's JSON with version 0 and
/// an empty hash, as compile computes it.
fn set_version(snapshot: &mut Snapshot, version: u64) {
    snapshot.version = 0;
    snapshot.content_hash.clear();
    let json = serde_json::to_vec(&*snapshot).unwrap_or_default();
    snapshot.content_hash = hex::encode(Sha256::digest(&json));
    snapshot.version = version;
}
