//! Tollgate's Kubernetes API: the custom resources of group `tollgate.dev`, version `v1alpha1`.
//!
//! | kind | spec | status | short names |
//! | --- | --- | --- | --- |
//! | [`GatewayAPI`] | [`GatewayApiSpec`] | [`GatewayApiStatus`] | `gwapi`, `tgapi` |
//! | [`Route`] | [`RouteSpec`] | [`RouteStatus`] | `tgroute`, `tgr` |
//! | [`Authorizer`] | [`AuthorizerSpec`] | [`AuthorizerStatus`] | `tgauthz` |
//! | [`UsagePlan`] | [`UsagePlanSpec`] | [`UsagePlanStatus`] | `tgplan` |
//! | [`ServiceExport`] | [`ServiceExportSpec`] | [`ServiceExportStatus`] | `tgexport` |
//!
//! Every kind is namespaced, has a status subresource, printer columns and the category
//! `tollgate` (`kubectl get tollgate`). The plurals `routes` and `serviceexports` also exist in
//! other groups (OpenShift routes, the multi-cluster Services API); where both are installed use
//! the short names or the full names (`kubectl get routes.tollgate.dev`).
//!
//! The types are the user-facing contract: field docs become `kubectl explain` text; optional
//! fields are `Option` (or empty collections) whose defaults are documented on the field, and
//! serializing a value adds no field the user did not write (empty lists and maps are omitted).
//! Validation that fits in the schema lives there: enums, patterns, ranges, and CEL rules
//! (`x-kubernetes-validations`) for "exactly one of" choices. Manifests read from disk never meet
//! an API server, so the typed accessors ([`Integration::target`], [`AuthorizerSpec::mechanism`],
//! [`ServiceExportSpec::target`]) check the "exactly one of" rules again, and durations are kept
//! as written and parsed with [`Duration::parse`]. The documented defaults are also values, in
//! [`defaults`].
//!
//! [`crds`] returns the CustomResourceDefinitions and [`crds_yaml`] renders them; the checked-in
//! copies under `crds/` at the repository root are compared with them by this crate's tests.
//! No IO happens here.

pub mod authorizer;
pub mod common;
pub mod defaults;
pub mod gateway_api;
pub mod route;
pub mod service_export;
pub mod usage_plan;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use authorizer::{
    Authorizer, AuthorizerMechanism, AuthorizerSpec, AuthorizerStatus, ExternalAuthorizer, JwtAuthorizer,
    SigV4Authorizer,
};
pub use common::{
    Duration, DurationError, FailurePolicy, LabelSelector, LocalRef, NamespacedRef, OneOfError, Throttle,
    ThrottleScope,
};
pub use gateway_api::{
    AccessLog, AllowedRoutes, Canary, CanaryAnalysis, CanaryForceHeader, CanaryPhase, CanaryStatus,
    CanaryStep, ClientValidation, ClientValidationMode, ConnectionsApi, Cors, DEFAULT_FLEET, GatewayAPI,
    GatewayApiSpec, GatewayApiStatus, GatewayTls, Limits, Protocol, ProxyCounts, ResourcePolicy,
    RouteNamespaces, Stage, StageCache, StageStatus,
};
pub use route::{
    Authorization, AuthorizationType, HeaderMatch, HttpMethod, Integration, IntegrationTarget,
    MockIntegration, QueryMatch, RequestTransform, RequestValidation, ResponseTransform, Retries, Route,
    RouteCache, RouteMatch, RouteSpec, RouteStatus, ServiceBackend, Transform,
};
pub use service_export::{
    AllowedApi, ExportTarget, ExportedService, ExternalBackend, LoadBalancing, LoadBalancingPolicy,
    OutlierDetection, ServiceExport, ServiceExportSpec, ServiceExportStatus, UpstreamTls,
};
pub use usage_plan::{ApiStage, Quota, QuotaPeriod, UsagePlan, UsagePlanSpec, UsagePlanStatus};

/// The API group of every Tollgate kind.
pub const GROUP: &str = "tollgate.dev";

/// The API version of every Tollgate kind.
pub const VERSION: &str = "v1alpha1";

/// The first line of every rendered CRD: where it comes from and how to regenerate it.
const HEADER: &str = "# Generated from crates/crds (tollgate-crds); do not edit. \
                      Regenerate: UPDATE_CRDS=1 cargo test -p tollgate-crds --test generated\n";

/// The CustomResourceDefinitions of all kinds, in a fixed order: GatewayAPI, Route, Authorizer,
/// UsagePlan, ServiceExport.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![GatewayAPI::crd(), Route::crd(), Authorizer::crd(), UsagePlan::crd(), ServiceExport::crd()]
}

/// One CRD as a YAML document (starting with a generated-file comment, no `---`).
#[allow(clippy::expect_used, reason = "a CRD is plain data: string keys, no custom serializers")]
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml_ng::to_string(crd).expect("a CustomResourceDefinition serializes to YAML");
    format!("{HEADER}{body}")
}

/// All CRDs as one multi-document YAML stream, `---` between documents, in the order of [`crds`].
pub fn crds_yaml() -> String {
    crds().iter().map(crd_yaml).collect::<Vec<_>>().join("---\n")
}

/// The file name of a CRD under `crds/`: `<plural>.<group>.yaml`, e.g.
/// `gatewayapis.tollgate.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.{}.yaml", crd.spec.names.plural, crd.spec.group)
}
