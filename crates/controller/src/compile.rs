//! `compile`: a pure function from every object to a Snapshot plus a report per object.
//!
//! Deterministic: inputs are ordered by creation time, then namespace and name (the order that
//! decides conflicts: the older object wins), and every output list is sorted. No IO, no clock.
//!
//! Phases:
//! 1. GatewayAPIs: validate fields, claim hostnames (conflicts rejected), resolve TLS Secrets.
//! 2. ServiceExports compile on their own (backend, TLS Secrets, balancing, outlier detection);
//!    Routes: validate match and integration, check the API allows the Route's namespace and a
//!    `serviceExport` allows the Route's API.
//! 3. Stages: select each stage's Routes, substitute stage variables, resolve backends, reject
//!    duplicates per stage.
//! 4. Authorization: Authorizers and their Secrets compile on their own; each Route's
//!    authorization resolves to one of them (or to the API's defaultAuthorizer); a Route whose
//!    authorizer does not resolve is not served (fail closed).
//! 5. Fields whose behaviour a later version brings are reported as `NotYetEnforced`; when
//!    serving without them would open access, the object is not served at all (fail closed).

mod api;
mod auth;
mod backend;
mod canary;
mod claims;
mod route;
mod selector;
mod service_export;
mod stage;
mod tls;
mod traffic;
mod variables;
mod websocket;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use tollgate_ir as ir;

use crate::diagnostics::{Diagnostics, ObjectReport};
use crate::inputs::{Inputs, Kind, Object};
use crate::load::Loaded;

pub use backend::{ServiceError, ServiceIndex, UrlTarget, parse_url};
pub use selector::matches as selector_matches;

/// The output of a compile.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The configuration to serve (version 0: the publisher assigns versions).
    pub snapshot: ir::Snapshot,
    /// One report per Tollgate object, sorted by kind, namespace and name.
    pub reports: Vec<ObjectReport>,
}

impl Compiled {
    /// Whether any object was rejected.
    pub fn has_rejections(&self) -> bool {
        self.reports.iter().any(ObjectReport::rejected)
    }
}

/// Compiles objects read from a folder, adding the loader's unknown-field warnings.
pub fn compile_loaded(loaded: &Loaded) -> Compiled {
    compile_with(&loaded.inputs, |d| loaded.report_load_findings(d))
}

/// Compiles every object into a Snapshot and per-object reports.
pub fn compile(inputs: &Inputs) -> Compiled {
    compile_with(inputs, |_| {})
}

fn compile_with(inputs: &Inputs, extra: impl FnOnce(&mut Diagnostics)) -> Compiled {
    let mut diagnostics = Diagnostics::default();
    track_all(inputs, &mut diagnostics);
    extra(&mut diagnostics);
    let services = backend::ServiceIndex::new(inputs);
    let secrets: BTreeMap<ir::ObjectKey, &k8s_openapi::api::core::v1::Secret> =
        inputs.secrets.iter().map(|s| (s.key(), &s.object)).collect();

    let apis = api::compile_apis(&ordered(&inputs.gateway_apis), &secrets, &mut diagnostics);
    let authorizers = auth::compile_authorizers(&ordered(&inputs.authorizers), &secrets, &mut diagnostics);
    let exports = service_export::compile_exports(
        &ordered(&inputs.service_exports),
        &services,
        &secrets,
        &mut diagnostics,
    );
    let mut routes =
        route::compile_routes(&ordered(&inputs.routes), &apis, inputs, &exports, &mut diagnostics);
    auth::resolve_routes(&mut routes, &apis, &authorizers, &mut diagnostics);
    let traffic_inputs = traffic::TrafficInputs::new(inputs, &mut diagnostics);
    let mut snapshot_apis = Vec::new();
    let mut certificates = Vec::new();
    for api in &apis {
        if !api.serve {
            continue;
        }
        let stages = stage::compile_stages(api, &routes, &services, &traffic_inputs, &mut diagnostics);
        diagnostics.programmed(Kind::GatewayAPI, &api.key, true);
        certificates.extend(api.certificates.iter().cloned());
        let api_auth = auth::api_auth(api, &authorizers, &stages);
        snapshot_apis.push(ir::Api {
            key: api.key.clone(),
            generation: api.generation,
            fleet: api.fleet.clone(),
            hostnames: api.hostnames.clone(),
            limits: api.limits.clone(),
            stages,
            traffic: traffic::api_traffic(&api.key, api.object, &mut diagnostics),
            auth: api_auth,
            web_socket: api.web_socket.clone(),
        });
    }
    for route in &routes {
        if !route.served.get() {
            diagnostics.programmed(Kind::Route, &route.key, false);
        }
    }
    snapshot_apis.sort_by(|a, b| a.key.cmp(&b.key));
    certificates.sort_by(|a, b| a.source.cmp(&b.source).then_with(|| a.hostnames.cmp(&b.hostnames)));
    let mut snapshot =
        ir::Snapshot { version: 0, content_hash: String::new(), apis: snapshot_apis, certificates };
    snapshot.content_hash = content_hash(&snapshot);
    Compiled { snapshot, reports: diagnostics.finish() }
}

fn track_all(inputs: &Inputs, d: &mut Diagnostics) {
    fn each<T: kube::Resource>(d: &mut Diagnostics, kind: Kind, objects: &[Object<T>]) {
        for o in objects {
            d.track(kind, &o.key(), o.file.as_ref(), o.generation());
        }
    }
    each(d, Kind::GatewayAPI, &inputs.gateway_apis);
    each(d, Kind::Route, &inputs.routes);
    each(d, Kind::Authorizer, &inputs.authorizers);
    each(d, Kind::UsagePlan, &inputs.usage_plans);
    each(d, Kind::ServiceExport, &inputs.service_exports);
}

/// Objects in conflict-resolution order: creation time, then namespace, then name.
fn ordered<T: kube::Resource>(objects: &[Object<T>]) -> Vec<&Object<T>> {
    let mut sorted: Vec<&Object<T>> = objects.iter().collect();
    sorted.sort_by(|a, b| {
        let created = |o: &Object<T>| o.object.meta().creation_timestamp.as_ref().map(|t| t.0);
        created(a).cmp(&created(b)).then_with(|| a.key().cmp(&b.key()))
    });
    sorted
}

fn content_hash(snapshot: &ir::Snapshot) -> String {
    let bytes = serde_json::to_vec(snapshot).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}
