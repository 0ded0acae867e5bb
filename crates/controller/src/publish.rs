//! The publisher: turns compile results and endpoint changes into versioned, per-fleet snapshots
//! that subscriptions read, with each fleet's frames encoded once for all of its proxies.
//!
//! Two paths, cheap for what they are:
//! - **full**: after a compile, each fleet whose content changed gets a new version and a full
//!   snapshot frame; fleets whose content did not change keep their version.
//! - **endpoints**: when only EndpointSlices changed, no compile runs: the Services that the
//!   fleet's backends came from are re-resolved, and the changed endpoint lists are merged into
//!   one [`EndpointUpdate`] over the fleet's last full snapshot. Only that small frame is encoded:
//!   the patched snapshot's full frame is encoded when a proxy first needs it (one that connects
//!   now), not per update — pod churn at 10,000 Routes would otherwise re-encode them all each
//!   time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// The snapshot (endpoint updates applied), at its current version. Its content hash is the
    /// last full snapshot's: endpoint updates change the version only.
    pub snapshot: Arc<Snapshot>,
    /// The version of the last full (structural) change.
    pub full_version: u64,
    /// The current snapshot, encoded: at once after a full change, on first use after an
    /// endpoint update (see [`FleetView::full_frame`]).
    full_frame: OnceLock<Bytes>,
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

    /// What takes a proxy at `have` (0: nothing) to the current version.
    pub fn next_frame(&self, have: u64) -> NextFrame {
        if have == self.version() {
            return NextFrame::UpToDate;
        }
        match (&self.endpoints_frame, self.full_frame.get()) {
            (Some(frame), _) if have >= self.full_version && have < self.version() => {
                NextFrame::Ready(frame.clone())
            }
            (_, Some(frame)) => NextFrame::Ready(frame.clone()),
            (_, None) => NextFrame::EncodeFull,
        }
    }

    /// The current snapshot as a full frame, encoded on the first call. CPU work at 10,000 Routes
    /// (tens of milliseconds): call it off the async workers.
    pub fn full_frame(&self) -> Result<Bytes, PublishError> {
        if let Some(frame) = self.full_frame.get() {
            return Ok(frame.clone());
        }
        // Two proxies connecting at once may both encode; the first result is kept.
        let encoded = encode_full(&self.snapshot)?;
        Ok(self.full_frame.get_or_init(|| encoded).clone())
    }
}

/// What a subscription sends next: see [`FleetView::next_frame`].
#[derive(Debug, PartialEq, Eq)]
pub enum NextFrame {
    /// The proxy has the current version.
    UpToDate,
    /// This frame.
    Ready(Bytes),
    /// The full frame, not encoded yet: [`FleetView::full_frame`].
    EncodeFull,
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A frame could not be encoded.
    #[error("encoding the snapshot of version {version}: {source}")]
    Encode {
        /// The snapshot's version.
        version: u64,
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
                    Arc::new(full_view(content, changed_at)?)
                }
            };
            next.fleets.insert(fleet, view);
        }
        if next.empty.is_none() {
            let v = *version.get_or_insert_with(|| self.next_version());
            let mut empty = template.clone();
            set_version(&mut empty, v);
            next.empty = Some(Arc::new(full_view(empty, changed_at)?));
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
            // The version changes; the content hash stays the full snapshot's (as on the proxies,
            // which patch their copy the same way): hashing 10,000 Routes per update costs more
            // than the update.
            snapshot.apply_endpoints(&update);
            let endpoints_frame = Frame::Endpoints(update)
                .encode()
                .map(Bytes::from)
                .map_err(|source| PublishError::Encode { version: v, source })?;
            outcome.changed_fleets.push(fleet.clone());
            next.fleets.insert(
                fleet.clone(),
                Arc::new(FleetView {
                    snapshot: Arc::new(snapshot),
                    full_version: view.full_version,
                    // Proxies that connect now need the patched endpoints: encoded when one does.
                    full_frame: OnceLock::new(),
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

fn full_view(snapshot: Snapshot, changed_at: Option<Instant>) -> Result<FleetView, PublishError> {
    let full_frame = encode_full(&snapshot)?;
    Ok(FleetView {
        full_version: snapshot.version,
        snapshot: Arc::new(snapshot),
        full_frame: OnceLock::from(full_frame),
        endpoints_frame: None,
        changed_at,
        patched: BTreeMap::new(),
    })
}

fn encode_full(snapshot: &Snapshot) -> Result<Bytes, PublishError> {
    Frame::encode_snapshot(snapshot)
        .map(Bytes::from)
        .map_err(|source| PublishError::Encode { version: snapshot.version, source })
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tollgate_ir::distribution::FrameReader;

    use super::*;
    use crate::compile::compile_loaded;
    use crate::load::{Loaded, load_text};

    const API_AND_ROUTE: &str = "\
apiVersion: tollgate.dev/v1alpha1
kind: GatewayAPI
metadata: {name: shop, namespace: shop}
spec: {}
---
apiVersion: tollgate.dev/v1alpha1
kind: Route
metadata: {name: orders, namespace: shop}
spec:
  apiRef: {name: shop}
  match: {path: /orders}
  integration: {service: {name: orders, port: 80}}
";

    fn loaded(endpoint: SocketAddr) -> Loaded {
        let service = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: orders, namespace: shop}}\n\
             spec:\n  ports: [{{name: http, port: 80}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: orders-1\n  \
             namespace: shop\n  labels: {{kubernetes.io/service-name: orders}}\naddressType: IPv4\n\
             ports: [{{name: http, port: {}}}]\nendpoints:\n- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
            endpoint.port(),
            endpoint.ip()
        );
        let mut loaded = Loaded::default();
        load_text(API_AND_ROUTE, None, &mut loaded).expect("API and Route load");
        load_text(&service, None, &mut loaded).expect("Service loads");
        loaded
    }

    fn decode(bytes: &Bytes) -> Frame {
        let mut reader = FrameReader::default();
        reader.push(bytes);
        reader.next_frame().expect("a valid frame").expect("a whole frame")
    }

    fn endpoints(snapshot: &Snapshot) -> Vec<String> {
        snapshot.backends().flat_map(|b| b.endpoints.clone()).collect()
    }

    #[test]
    fn an_endpoint_update_encodes_the_full_frame_only_when_a_proxy_needs_it() {
        let (old, new): (SocketAddr, SocketAddr) =
            ("10.0.0.1:8080".parse().expect("address"), "10.0.0.2:8080".parse().expect("address"));
        let publisher = Publisher::new();
        let compiled = compile_loaded(&loaded(old));
        publisher.publish(&compiled.snapshot, None).expect("published");
        let full = publisher.current().fleet("default").expect("the default fleet");
        assert!(matches!(full.next_frame(0), NextFrame::Ready(_)), "a full change is encoded at once");

        let outcome = publisher.update_endpoints(&loaded(new).inputs, None).expect("endpoints published");
        assert_eq!(outcome.changed_fleets, vec!["default".to_string()]);
        let view = publisher.current().fleet("default").expect("the default fleet");
        assert!(view.version() > full.version());
        assert_eq!(view.full_version, full.version());
        assert_eq!(view.snapshot.content_hash, full.snapshot.content_hash, "the hash is the full snapshot's");
        assert_eq!(endpoints(&view.snapshot), vec![new.to_string()]);

        // A proxy at the full version gets the small update.
        let NextFrame::Ready(update) = view.next_frame(full.version()) else { panic!("an endpoints frame") };
        let Frame::Endpoints(update) = decode(&update) else { panic!("an endpoints frame") };
        assert_eq!((update.base_version, update.version), (full.version(), view.version()));
        assert_eq!(update.services[0].endpoints, vec![new.to_string()]);

        // A proxy that connects now needs the patched snapshot in full: encoded on demand, once.
        assert_eq!(view.next_frame(0), NextFrame::EncodeFull);
        let encoded = view.full_frame().expect("encodes");
        let Frame::Snapshot(snapshot) = decode(&encoded) else { panic!("a snapshot frame") };
        assert_eq!(snapshot.version, view.version());
        assert_eq!(endpoints(&snapshot), vec![new.to_string()]);
        assert_eq!(view.next_frame(0), NextFrame::Ready(encoded));
        assert_eq!(view.next_frame(view.version()), NextFrame::UpToDate);
    }
}
