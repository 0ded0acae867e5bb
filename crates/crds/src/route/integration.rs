//! The integration of a `Route`: the backend that serves it, its timeout and retries.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, HTTP_URL_PATTERN, NamespacedRef, OneOfError, PATH_PATTERN, exactly_one};

/// What serves a Route's requests: exactly one of service, serviceExport, url or mock, plus
/// how the request is sent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.service) ? 1 : 0) + (has(self.serviceExport) ? 1 : 0) + (has(self.url) ? 1 : 0) + (has(self.mock) ? 1 : 0) == 1"
).message(
    "integration: set exactly one of service, serviceExport, url or mock"
))]
pub struct Integration {
    /// A Service port in the Route's namespace. The name may use `${stageVariables.NAME}`,
    /// resolved per stage and canary track.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,

    /// A ServiceExport, the way to reach a Service in another namespace (it must allow this
    /// Route's API). Without a namespace, the Route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_export: Option<NamespacedRef>,

    /// An HTTP(S) URL outside the cluster (`https://legacy.example/orders`). Its scheme, host
    /// and port say where requests go; its path, if any, is prepended to the request path.
    /// May use `${stageVariables.NAME}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HTTP_URL_PATTERN))]
    pub url: Option<String>,

    /// A fixed response, served without any backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockIntegration>,

    /// Path sent to the backend (a rewrite), may use the Route's path parameters (`{id}`) and
    /// templates (`${request.path.id}`, `${stageVariables.NAME}`). Default: the request path
    /// after the stage's basePath is stripped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub path: Option<String>,

    /// Time allowed for the backend to answer; past it the client gets 504.
    /// Default: the API's limits.timeout (`29s` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,

    /// Retries of failed backend calls. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,

    /// WebSocket passthrough (an HTTP Route whose backend speaks WebSocket): timeouts of the
    /// upgraded connection. Default: see the fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_socket: Option<WebSocketPassthrough>,
}

/// Timeouts of a WebSocket connection passed through to a backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketPassthrough {
    /// The connection is closed when no byte has crossed it, either way, for this long.
    /// Default: `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,

    /// The connection is closed once it has been open this long. Default: `2h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
}

/// A Service port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    /// Name of the Service (may use `${stageVariables.NAME}`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Port of the Service (its `port`, not the target port).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// A fixed response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MockIntegration {
    /// HTTP status code. Default: 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    pub status: Option<i32>,

    /// Response headers. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,

    /// Response body (a template). Default: empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Retries of failed backend calls.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// How many times a failed call is retried (0 to 10), on top of the first attempt.
    #[schemars(range(min = 0, max = 10))]
    pub attempts: u32,

    /// What counts as failed: `connect-failure` (no connection could be made) or a 3-digit
    /// response status such as `"503"` (quote it in YAML). Default: `[connect-failure]`.
    /// Quote the key too (`"on": [...]`): kubectl and Kubernetes read YAML 1.1, where a bare
    /// `on` is the boolean true.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^(connect-failure|[1-5][0-9][0-9])$")))]
    pub on: Vec<String>,

    /// The same as `on`, under a name YAML 1.1 cannot misread: prefer it in manifests applied
    /// with kubectl. When both are set, the union applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^(connect-failure|[1-5][0-9][0-9])$")))]
    pub retry_on: Vec<String>,
}

/// The one backend of an [`Integration`], as an enum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IntegrationTarget<'a> {
    /// `service`
    Service(&'a ServiceBackend),
    /// `serviceExport`
    ServiceExport(&'a NamespacedRef),
    /// `url`
    Url(&'a str),
    /// `mock`
    Mock(&'a MockIntegration),
}

impl Integration {
    /// The backend, or an error when not exactly one of service / serviceExport / url / mock
    /// is set (the API server rejects such objects; standalone manifests are not checked by it).
    pub fn target(&self) -> Result<IntegrationTarget<'_>, OneOfError> {
        exactly_one(
            "integration",
            &["service", "serviceExport", "url", "mock"],
            [
                self.service.as_ref().map(IntegrationTarget::Service),
                self.service_export.as_ref().map(IntegrationTarget::ServiceExport),
                self.url.as_deref().map(IntegrationTarget::Url),
                self.mock.as_ref().map(IntegrationTarget::Mock),
            ],
        )
    }
}
