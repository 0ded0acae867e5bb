//! `ServiceExport`: offers a backend (a Service port or addresses outside the cluster) to APIs.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Duration, HOSTNAME_PATTERN, LocalRef, OneOfError, exactly_one};

/// The specification of a `ServiceExport`: exactly one of service or external, and who may use
/// it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[allow(clippy::duplicated_attributes, reason = "printcolumn(...) repeats its keys by design")]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "ServiceExport",
    namespaced,
    status = "ServiceExportStatus",
    derive = "PartialEq",
    doc = "ServiceExport lives in a backend's namespace and offers a Service port, or addresses \
           outside the cluster, to named APIs in other namespaces (like an Amazon API Gateway \
           VPC link), with upstream TLS, load balancing and outlier detection.",
    shortname = "tgexport",
    category = "tollgate",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service.name"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.service.port"),
    printcolumn(name = "DNS Name", type_ = "string", json_path = ".spec.external.dnsName", priority = 1),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) != has(self.external)").message(
    "spec: set exactly one of service or external"
))]
pub struct ServiceExportSpec {
    /// A port of a Service in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ExportedService>,

    /// Addresses or a DNS name outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBackend>,

    /// The APIs whose Routes may use this export (`integration.serviceExport`). Empty
    /// (default): none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allowed_apis: Vec<AllowedApi>,

    /// TLS (or mutual TLS) to the backend. Default: none (plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,

    /// How requests are spread over the backend's endpoints. Default: round robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,

    /// Ejection of failing endpoints. Default: none (endpoints are never ejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// A Service port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportedService {
    /// Name of the Service, in the export's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// Port of the Service (its `port`, not the target port).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// A backend outside the cluster: fixed addresses or a DNS name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.dnsName) != (has(self.addresses) && size(self.addresses) > 0)").message(
    "external: set exactly one of addresses or dnsName"
))]
#[x_kube(validation = Rule::new("has(self.dnsName) == has(self.port)").message(
    "external: port is required with dnsName and not allowed with addresses (write them as IP:port)"
))]
pub struct ExternalBackend {
    /// Fixed endpoints as `IP:port` (`10.1.2.3:443`, `[fd00::1]:443`): private (RFC 1918,
    /// unique-local), shared (100.64.0.0/10) or loopback addresses. Public addresses are refused
    /// (use a Route `url` integration), link-local ones (cloud metadata) always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = r"^([0-9.]+|\[[0-9a-fA-F:.]+\]):[0-9]{1,5}$")))]
    pub addresses: Vec<String>,

    /// A DNS name resolved by the proxies (again every 30 seconds); every address it resolves
    /// to is an endpoint. Also the default Host header and TLS server name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = HOSTNAME_PATTERN))]
    pub dns_name: Option<String>,

    /// Port used with dnsName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// An API allowed to use an export.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedApi {
    /// Namespace of the GatewayAPI.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,

    /// Name of the GatewayAPI. Default: every GatewayAPI in that namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
}

/// TLS to the backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// Server name sent in SNI and checked against the backend's certificate. Default: the
    /// Service's cluster DNS name (`NAME.NAMESPACE.svc`), dnsName, or for addresses the
    /// endpoint's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = HOSTNAME_PATTERN))]
    pub sni: Option<String>,

    /// Secret in this namespace whose `ca.crt` entry (PEM) holds the authorities the backend's
    /// certificate must chain to. Default: the public web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate_ref: Option<LocalRef>,

    /// Secret of type `kubernetes.io/tls` in this namespace with the client certificate the
    /// gateway presents (mutual TLS). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<LocalRef>,
}

/// Load balancing over a backend's endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.hashOn) || (has(self.policy) && self.policy == 'ConsistentHash')"
).message(
    "loadBalancing: hashOn applies only to policy ConsistentHash; set the policy or remove hashOn"
))]
pub struct LoadBalancing {
    /// `RoundRobin`, `LeastRequest` (the endpoint with fewest requests in flight, of two
    /// picked at random) or `ConsistentHash` (the same hashOn value goes to the same endpoint).
    /// Default: `RoundRobin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<LoadBalancingPolicy>,

    /// ConsistentHash: what is hashed: `header.NAME` (a request header), `query.NAME` (a query
    /// parameter), `cookie.NAME` (a cookie), `principal` (the caller's identity from the
    /// authorizer) or `sourceIp` (the client's IP address). A request without the value is
    /// balanced round robin. Default: `sourceIp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^((header|query|cookie)\..+|sourceIp|principal)$"))]
    pub hash_on: Option<String>,
}

/// A load-balancing policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum LoadBalancingPolicy {
    /// Endpoints in turn.
    #[default]
    RoundRobin,
    /// Fewest requests in flight.
    LeastRequest,
    /// Hash of a request attribute.
    ConsistentHash,
}

/// Outlier detection: endpoints that keep failing are taken out of rotation for a while. Without
/// this field endpoints are never ejected; `outlierDetection: {}` uses the defaults below.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures (connect or TLS errors, timeouts, 5xx responses) after which an
    /// endpoint is ejected; any other response resets the count. Default: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub consecutive_errors: Option<u32>,

    /// How long an ejected endpoint stays out. Default: `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection_time: Option<Duration>,

    /// The most endpoints ejected at once, in percent of the endpoints; one endpoint may always
    /// be ejected when there are two or more, and the last one never is. Default: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// Observed state of a `ServiceExport`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions: `Accepted` (the spec is valid) and `ResolvedRefs` (its Service, port and
    /// Secrets exist and hold what they should).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The one backend of a [`ServiceExportSpec`], as an enum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExportTarget<'a> {
    /// `service`
    Service(&'a ExportedService),
    /// `external`
    External(&'a ExternalBackend),
}

impl ServiceExportSpec {
    /// The backend, or an error when not exactly one of service / external is set (the API
    /// server rejects such objects; standalone manifests are not checked by it).
    pub fn target(&self) -> Result<ExportTarget<'_>, OneOfError> {
        exactly_one(
            "spec",
            &["service", "external"],
            [
                self.service.as_ref().map(ExportTarget::Service),
                self.external.as_ref().map(ExportTarget::External),
            ],
        )
    }

    /// Whether `allowedApis` lets the GatewayAPI `namespace/name` use this export.
    pub fn allows(&self, namespace: &str, name: &str) -> bool {
        self.allowed_apis
            .iter()
            .any(|a| a.namespace == namespace && a.name.as_deref().is_none_or(|n| n == name))
    }
}
