//! Everything compile reads: the five Tollgate kinds and the core objects they refer to.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use tollgate_crds::{Authorizer, GatewayAPI, Route, ServiceExport, UsagePlan};
use tollgate_ir::ObjectKey;

/// An object with where it came from.
#[derive(Clone, Debug)]
pub struct Object<T> {
    /// The object.
    pub object: T,
    /// The manifest file it was read from (`None` when it came from the Kubernetes API).
    pub file: Option<PathBuf>,
}

impl<T: Resource> Object<T> {
    /// Namespace (default `default`) and name.
    pub fn key(&self) -> ObjectKey {
        let meta = self.object.meta();
        ObjectKey::new(
            meta.namespace.clone().unwrap_or_else(|| "default".to_string()),
            meta.name.clone().unwrap_or_default(),
        )
    }

    /// `metadata.generation`, 0 when unset (manifest files).
    pub fn generation(&self) -> i64 {
        self.object.meta().generation.unwrap_or(0)
    }

    /// `metadata.labels`.
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.object.meta().labels.clone().unwrap_or_default()
    }
}

/// All objects one compile sees.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// GatewayAPIs.
    pub gateway_apis: Vec<Object<GatewayAPI>>,
    /// Routes.
    pub routes: Vec<Object<Route>>,
    /// Authorizers.
    pub authorizers: Vec<Object<Authorizer>>,
    /// UsagePlans.
    pub usage_plans: Vec<Object<UsagePlan>>,
    /// ServiceExports.
    pub service_exports: Vec<Object<ServiceExport>>,
    /// Secrets (TLS, API keys, access keys).
    pub secrets: Vec<Object<Secret>>,
    /// Services.
    pub services: Vec<Object<Service>>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<Object<EndpointSlice>>,
    /// Namespaces' labels, for `allowedRoutes.namespaces: Selector` (from Namespace objects).
    pub namespaces: Vec<Object<k8s_openapi::api::core::v1::Namespace>>,
}

/// The kinds compile knows, for diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    /// `tollgate.dev/v1alpha1` GatewayAPI.
    GatewayAPI,
    /// `tollgate.dev/v1alpha1` Route.
    Route,
    /// `tollgate.dev/v1alpha1` Authorizer.
    Authorizer,
    /// `tollgate.dev/v1alpha1` UsagePlan.
    UsagePlan,
    /// `tollgate.dev/v1alpha1` ServiceExport.
    ServiceExport,
    /// `v1` Secret.
    Secret,
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` Namespace.
    Namespace,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}
