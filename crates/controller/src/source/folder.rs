//! The folder source: the same manifests standalone mode reads, polled for changes, so the
//! controller → proxy path runs (and is tested) without a cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Changes, Source};
use crate::fingerprint::Fingerprint;
use crate::inputs::{Inputs, Kind, Object};
use crate::load::{self, Loaded};
use crate::load_cache::LoadCache;

/// Objects read from a folder; re-read when a file changes. A folder that fails to load keeps the
/// last good objects.
pub struct FolderSource {
    dir: PathBuf,
    state: Mutex<FolderState>,
    /// Parsed files, so a change re-parses only the files that changed.
    cache: Mutex<LoadCache>,
    changes: Changes,
}

#[derive(Default)]
struct FolderState {
    loaded: Option<Arc<Loaded>>,
    fingerprint: Option<Fingerprint>,
    hashes: BTreeMap<Kind, [u8; 32]>,
    last_error: Option<String>,
}

impl FolderSource {
    /// A source for `dir`; nothing is read until [`FolderSource::poll`].
    pub fn new(dir: PathBuf, changes: Changes) -> Arc<FolderSource> {
        Arc::new(FolderSource {
            dir,
            state: Mutex::new(FolderState::default()),
            cache: Mutex::new(LoadCache::new()),
            changes,
        })
    }

    /// Polls every `interval` until the task is dropped.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let this = Arc::clone(&self);
            // Reading and parsing files blocks; keep it off the async workers.
            if tokio::task::spawn_blocking(move || this.poll()).await.is_err() {
                tracing::error!("reading the manifest folder panicked");
            }
        }
    }

    /// Re-reads the folder if its fingerprint changed; marks the kinds whose objects changed.
    pub fn poll(&self) {
        let fingerprint = Fingerprint::of(&self.dir).ok();
        {
            let Ok(state) = self.state.lock() else { return };
            if fingerprint.is_some() && state.fingerprint == fingerprint && state.loaded.is_some() {
                return;
            }
        }
        let result = match self.cache.lock() {
            Ok(mut cache) => cache.load_dir(&self.dir),
            Err(_) => load::load_dir(&self.dir),
        };
        let Ok(mut state) = self.state.lock() else { return };
        state.fingerprint = fingerprint;
        match result {
            Ok(loaded) => {
                let hashes = kind_hashes(&loaded);
                let first = state.loaded.is_none();
                for (kind, hash) in &hashes {
                    if first || state.hashes.get(kind) != Some(hash) {
                        self.changes.mark(*kind);
                    }
                }
                tracing::debug!(files = loaded.files.len(), "manifest folder read");
                state.hashes = hashes;
                state.loaded = Some(Arc::new(loaded));
                state.last_error = None;
            }
            Err(error) => {
                tracing::error!(%error, "reading the manifest folder failed; serving the last good objects");
                state.last_error = Some(error.to_string());
            }
        }
    }
}

impl Source for FolderSource {
    fn current(&self) -> Option<Arc<Loaded>> {
        self.state.lock().ok()?.loaded.clone()
    }

    fn last_error(&self) -> Option<String> {
        self.state.lock().ok()?.last_error.clone()
    }
}

/// A hash per kind of its objects, to tell which kinds a file change touched (so an edit of an
/// EndpointSlice takes the cheap path). Objects left out for schema errors count with their kind.
fn kind_hashes(loaded: &Loaded) -> BTreeMap<Kind, [u8; 32]> {
    let mut hashes = input_hashes(&loaded.inputs);
    for object in &loaded.undecodable {
        if let Some(hash) = hashes.get_mut(&object.kind) {
            let mut hasher = Sha256::new();
            hasher.update(*hash);
            hasher.update(format!("{}\0{}\0{}\0{:?}", object.key, object.field, object.message, object.file));
            *hash = hasher.finalize().into();
        }
    }
    hashes
}

fn input_hashes(inputs: &Inputs) -> BTreeMap<Kind, [u8; 32]> {
    fn hash<T: serde::Serialize>(objects: &[Object<T>]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for object in objects {
            hasher.update(serde_json::to_vec(&object.object).unwrap_or_default());
            hasher
                .update(object.file.as_deref().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
            hasher.update([0]);
        }
        hasher.finalize().into()
    }
    BTreeMap::from([
        (Kind::GatewayAPI, hash(&inputs.gateway_apis)),
        (Kind::Route, hash(&inputs.routes)),
        (Kind::Authorizer, hash(&inputs.authorizers)),
        (Kind::UsagePlan, hash(&inputs.usage_plans)),
        (Kind::ServiceExport, hash(&inputs.service_exports)),
        (Kind::Secret, hash(&inputs.secrets)),
        (Kind::Service, hash(&inputs.services)),
        (Kind::EndpointSlice, hash(&inputs.endpoint_slices)),
        (Kind::Namespace, hash(&inputs.namespaces)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "apiVersion: tollgate.dev/v1alpha1\nkind: Route\nmetadata: {name: r, namespace: ns}\n\
                         spec: {apiRef: {name: a}, match: {path: /a}, integration: {mock: {status: 200}}}\n";
    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, \
                         labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints: [{addresses: [\"10.0.0.1\"]}]\n\
                         ports: [{port: 80}]\n";

    #[test]
    fn an_endpoint_slice_edit_marks_only_endpoint_slices() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("route.yaml"), ROUTE).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("slice.yaml"), SLICE).unwrap_or_else(|e| panic!("{e}"));
        let changes = Changes::default();
        let source = FolderSource::new(dir.path().to_path_buf(), changes.clone());
        assert!(source.current().is_none(), "nothing before the first read");
        source.poll();
        assert!(source.current().is_some());
        assert!(changes.take().kinds.contains(&Kind::Route));
        std::fs::write(dir.path().join("slice.yaml"), SLICE.replace("10.0.0.1", "10.0.0.22"))
            .unwrap_or_else(|e| panic!("{e}"));
        source.poll();
        let taken = changes.take();
        assert!(taken.endpoints_only(), "{taken:?}");
        std::fs::write(dir.path().join("route.yaml"), "kind: [").unwrap_or_else(|e| panic!("{e}"));
        source.poll();
        assert!(source.last_error().is_some());
        assert!(source.current().is_some(), "the last good objects stay");
    }
}
