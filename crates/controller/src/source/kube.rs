//! The Kubernetes source: one watcher per kind (per namespace when a list is configured), each
//! feeding its own store; the view is complete only once every store has listed at least once.
//!
//! Secrets are watched selectively: the three types Tollgate reads (`kubernetes.io/tls`,
//! `tollgate.dev/api-key`, `tollgate.dev/access-key`, by field selector on `type`) plus, by name,
//! the Secrets that GatewayAPIs, Authorizers and ServiceExports name (CA bundles, JWKS) — so the
//! controller never caches the cluster's other Secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tollgate_crds::{Authorizer, GatewayAPI, Route, ServiceExport, UsagePlan};
use tollgate_ir::ObjectKey;

use super::{Changes, Source};
use crate::inputs::{Inputs, Kind, Object};
use crate::load::Loaded;

/// The Secret types Tollgate reads wherever they are.
pub const SECRET_TYPES: [&str; 3] = ["kubernetes.io/tls", "tollgate.dev/api-key", "tollgate.dev/access-key"];

/// Which namespaces to watch.
#[derive(Clone, Debug, Default)]
pub enum Namespaces {
    /// Every namespace.
    #[default]
    All,
    /// Only these.
    Only(Vec<String>),
}

/// One watcher's objects and whether it has listed once.
struct Store<K> {
    objects: Mutex<BTreeMap<ObjectKey, K>>,
    synced: AtomicBool,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store { objects: Mutex::new(BTreeMap::new()), synced: AtomicBool::new(false) }
    }
}

/// Every store of one kind.
struct Stores<K> {
    stores: Vec<Arc<Store<K>>>,
}

impl<K: Clone> Stores<K> {
    fn synced(&self) -> bool {
        self.stores.iter().all(|s| s.synced.load(Ordering::Acquire))
    }

    fn collect(&self, into: &mut BTreeMap<ObjectKey, K>) {
        for store in &self.stores {
            if let Ok(objects) = store.objects.lock() {
                into.extend(objects.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }

    fn objects(&self) -> Vec<Object<K>> {
        let mut all = BTreeMap::new();
        self.collect(&mut all);
        all.into_values().map(|object| Object { object, file: None }).collect()
    }
}

/// A per-name Secret watcher: its store and its task.
type NamedSecret = (Arc<Store<Secret>>, JoinHandle<()>);

/// Objects from the Kubernetes API.
pub struct KubeSource {
    gateway_apis: Stores<GatewayAPI>,
    routes: Stores<Route>,
    authorizers: Stores<Authorizer>,
    usage_plans: Stores<UsagePlan>,
    service_exports: Stores<ServiceExport>,
    services: Stores<Service>,
    endpoint_slices: Stores<EndpointSlice>,
    typed_secrets: Stores<Secret>,
    namespaces: Stores<Namespace>,
    named_secrets: Mutex<BTreeMap<ObjectKey, NamedSecret>>,
    client: Client,
    changes: Changes,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl KubeSource {
    /// Starts every watcher. Must be called inside a tokio runtime.
    pub fn start(client: Client, namespaces: Namespaces, changes: Changes) -> Arc<KubeSource> {
        let mut tasks = Vec::new();
        let gateway_apis = spawn_all(&client, &namespaces, Kind::GatewayAPI, &changes, &mut tasks, |_| None);
        let routes = spawn_all(&client, &namespaces, Kind::Route, &changes, &mut tasks, |_| None);
        let authorizers = spawn_all(&client, &namespaces, Kind::Authorizer, &changes, &mut tasks, |_| None);
        let usage_plans = spawn_all(&client, &namespaces, Kind::UsagePlan, &changes, &mut tasks, |_| None);
        let service_exports =
            spawn_all(&client, &namespaces, Kind::ServiceExport, &changes, &mut tasks, |_| None);
        let services = spawn_all(&client, &namespaces, Kind::Service, &changes, &mut tasks, |_| None);
        let endpoint_slices =
            spawn_all(&client, &namespaces, Kind::EndpointSlice, &changes, &mut tasks, |_| None);
        let mut typed_secrets = Stores { stores: Vec::new() };
        for secret_type in SECRET_TYPES {
            let more = spawn_all::<Secret>(&client, &namespaces, Kind::Secret, &changes, &mut tasks, |c| {
                Some(c.fields(&format!("type={secret_type}")))
            });
            typed_secrets.stores.extend(more.stores);
        }
        // Namespaces are cluster-scoped: one watcher, even with a namespace list.
        let namespace_store = Arc::new(Store::default());
        tasks.push(tokio::spawn(watch(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            Arc::clone(&namespace_store),
            Kind::Namespace,
            changes.clone(),
        )));
        Arc::new(KubeSource {
            gateway_apis,
            routes,
            authorizers,
            usage_plans,
            service_exports,
            services,
            endpoint_slices,
            typed_secrets,
            namespaces: Stores { stores: vec![namespace_store] },
            named_secrets: Mutex::new(BTreeMap::new()),
            client,
            changes,
            tasks: Mutex::new(tasks),
        })
    }

    /// Starts and stops per-name Secret watchers to match what objects reference now.
    fn sync_named_secrets(&self) {
        if !(self.gateway_apis.synced() && self.authorizers.synced() && self.service_exports.synced()) {
            return;
        }
        let wanted = self.referenced_secrets();
        let Ok(mut named) = self.named_secrets.lock() else { return };
        let before = named.len();
        named.retain(|key, (_, task)| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        let removed = before != named.len();
        for key in wanted {
            if named.contains_key(&key) {
                continue;
            }
            let store = Arc::new(Store::default());
            let task = tokio::spawn(watch(
                Api::<Secret>::namespaced(self.client.clone(), &key.namespace),
                watcher::Config::default().fields(&format!("metadata.name={}", key.name)),
                Arc::clone(&store),
                Kind::Secret,
                self.changes.clone(),
            ));
            named.insert(key, (store, task));
        }
        if removed {
            self.changes.mark(Kind::Secret);
        }
    }

    fn referenced_secrets(&self) -> BTreeSet<ObjectKey> {
        let mut refs = BTreeSet::new();
        for api in self.gateway_apis.objects() {
            let key = api.key();
            if let Some(tls) = &api.object.spec.tls {
                for r in &tls.certificate_refs {
                    refs.insert(ObjectKey::new(key.namespace.clone(), r.name.clone()));
                }
                if let Some(cv) = &tls.client_validation {
                    refs.insert(ObjectKey::new(key.namespace.clone(), cv.ca_certificate_ref.name.clone()));
                }
            }
        }
        for authorizer in self.authorizers.objects() {
            let key = authorizer.key();
            if let Some(r) = authorizer.object.spec.jwt.as_ref().and_then(|j| j.jwks_secret_ref.as_ref()) {
                refs.insert(ObjectKey::new(key.namespace.clone(), r.name.clone()));
            }
        }
        for export in self.service_exports.objects() {
            let key = export.key();
            if let Some(tls) = &export.object.spec.tls {
                for r in [&tls.ca_certificate_ref, &tls.client_certificate_ref].into_iter().flatten() {
                    refs.insert(ObjectKey::new(key.namespace.clone(), r.name.clone()));
                }
            }
        }
        refs
    }

    /// Whether every watcher has listed once.
    pub fn synced(&self) -> bool {
        let named_synced = self
            .named_secrets
            .lock()
            .map(|n| n.values().all(|(s, _)| s.synced.load(Ordering::Acquire)))
            .unwrap_or(false);
        self.gateway_apis.synced()
            && self.routes.synced()
            && self.authorizers.synced()
            && self.usage_plans.synced()
            && self.service_exports.synced()
            && self.services.synced()
            && self.endpoint_slices.synced()
            && self.typed_secrets.synced()
            && self.namespaces.synced()
            && named_synced
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            tasks.iter().for_each(JoinHandle::abort);
        }
        if let Ok(named) = self.named_secrets.lock() {
            named.values().for_each(|(_, t)| t.abort());
        }
    }
}

impl Source for KubeSource {
    fn current(&self) -> Option<Arc<Loaded>> {
        // New references start their watchers here; the view stays incomplete (None) until they
        // have listed, and their first list marks a change that brings the loop back.
        self.sync_named_secrets();
        if !self.synced() {
            return None;
        }
        let mut secrets = BTreeMap::new();
        self.typed_secrets.collect(&mut secrets);
        if let Ok(named) = self.named_secrets.lock() {
            for (store, _) in named.values() {
                if let Ok(objects) = store.objects.lock() {
                    secrets.extend(objects.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let inputs = Inputs {
            gateway_apis: self.gateway_apis.objects(),
            routes: self.routes.objects(),
            authorizers: self.authorizers.objects(),
            usage_plans: self.usage_plans.objects(),
            service_exports: self.service_exports.objects(),
            secrets: secrets.into_values().map(|object| Object { object, file: None }).collect(),
            services: self.services.objects(),
            endpoint_slices: self.endpoint_slices.objects(),
            namespaces: self.namespaces.objects(),
        };
        Some(Arc::new(Loaded { inputs, ..Loaded::default() }))
    }
}

fn spawn_all<K>(
    client: &Client,
    namespaces: &Namespaces,
    kind: Kind,
    changes: &Changes,
    tasks: &mut Vec<JoinHandle<()>>,
    config: impl Fn(watcher::Config) -> Option<watcher::Config>,
) -> Stores<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + Debug
        + Send
        + Sync
        + 'static,
{
    let config = config(watcher::Config::default()).unwrap_or_default();
    let apis: Vec<Api<K>> = match namespaces {
        Namespaces::All => vec![Api::all(client.clone())],
        Namespaces::Only(list) => list.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect(),
    };
    let mut stores = Vec::new();
    for api in apis {
        let store = Arc::new(Store::default());
        tasks.push(tokio::spawn(watch(api, config.clone(), Arc::clone(&store), kind, changes.clone())));
        stores.push(store);
    }
    Stores { stores }
}

fn key_of<K: Resource>(object: &K) -> ObjectKey {
    let meta = object.meta();
    ObjectKey::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// Whether a modification matters to compile. Tollgate kinds have a status subresource: their
/// `generation` moves with the spec, so our own status writes (which only move
/// `resourceVersion`) do not trigger a rebuild. Labels matter too (selectors), and so does a
/// GatewayAPI's `status.stages` (the canary analysis' effective weight, which compile reads).
fn relevant_change<K: Resource + serde::Serialize>(kind: Kind, old: Option<&K>, new: &K) -> bool {
    let tollgate = matches!(
        kind,
        Kind::GatewayAPI | Kind::Route | Kind::Authorizer | Kind::UsagePlan | Kind::ServiceExport
    );
    match old {
        Some(old) if tollgate => {
            old.meta().generation != new.meta().generation
                || old.meta().labels != new.meta().labels
                || (kind == Kind::GatewayAPI && canary_status(old) != canary_status(new))
        }
        _ => true,
    }
}

/// What compile reads from a GatewayAPI's `status.stages`: each canary's effective weight, phase
/// and revision (not the decision texts, which change every analysis interval). Empty for
/// anything else.
fn canary_status<K: serde::Serialize>(object: &K) -> Vec<serde_json::Value> {
    let value = serde_json::to_value(object).unwrap_or_default();
    let Some(stages) = value.get("status").and_then(|s| s.get("stages")).and_then(|s| s.as_array()) else {
        return Vec::new();
    };
    stages
        .iter()
        .map(|stage| {
            let canary = stage.get("canary");
            let field = |name: &str| canary.and_then(|c| c.get(name)).cloned().unwrap_or_default();
            serde_json::json!([
                stage.get("name"),
                field("effectiveWeight"),
                field("phase"),
                field("revision")
            ])
        })
        .collect()
}

/// Runs one watcher into its store until the task is aborted.
async fn watch<K>(api: Api<K>, config: watcher::Config, store: Arc<Store<K>>, kind: Kind, changes: Changes)
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + Debug + Send + Sync + 'static,
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut buffer: Option<BTreeMap<ObjectKey, K>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => buffer = Some(BTreeMap::new()),
            Ok(Event::InitApply(object)) => {
                buffer.get_or_insert_with(BTreeMap::new).insert(key_of(&object), object);
            }
            Ok(Event::InitDone) => {
                if let Ok(mut objects) = store.objects.lock() {
                    *objects = buffer.take().unwrap_or_default();
                }
                store.synced.store(true, Ordering::Release);
                changes.mark(kind);
            }
            Ok(Event::Apply(object)) => {
                let relevant = match store.objects.lock() {
                    Ok(mut objects) => {
                        let key = key_of(&object);
                        let relevant = relevant_change(kind, objects.get(&key), &object);
                        objects.insert(key, object);
                        relevant
                    }
                    Err(_) => true,
                };
                if relevant {
                    changes.mark(kind);
                }
            }
            Ok(Event::Delete(object)) => {
                if let Ok(mut objects) = store.objects.lock() {
                    objects.remove(&key_of(&object));
                }
                changes.mark(kind);
            }
            Err(error) => tracing::warn!(%kind, %error, "watch failed; retrying with backoff"),
        }
    }
}

#[cfg(test)]
mod canary_tests {
    use super::*;

    fn api(weight: f64, decision: &str) -> tollgate_crds::GatewayAPI {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "GatewayAPI",
            "metadata": {"name": "shop", "namespace": "shop", "generation": 1},
            "spec": {},
            "status": {"stages": [{"name": "prod", "canary": {"phase": "Progressing", "effectiveWeight": weight,
                "revision": "r1", "lastDecision": decision}}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_new_canary_weight_in_status_recompiles_a_new_decision_text_does_not() {
        let old = api(10.0, "stepped");
        assert!(relevant_change(Kind::GatewayAPI, Some(&old), &api(20.0, "stepped")));
        assert!(!relevant_change(Kind::GatewayAPI, Some(&old), &api(10.0, "held at 10 %")));
    }
}
