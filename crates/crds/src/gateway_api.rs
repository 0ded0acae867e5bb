//! `GatewayAPI`: an API (HTTP or WebSocket) with its hostnames, TLS, policies and stages.

mod stage;
mod status;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    CIDR_PATTERN, DNS_LABEL_PATTERN, Duration, HEADER_NAME_PATTERN, HOSTNAME_PATTERN, LabelSelector,
    LocalRef, Throttle,
};

pub use stage::{AccessLog, Canary, CanaryAnalysis, CanaryForceHeader, Stage, StageCache};
pub use status::{CanaryPhase, CanaryStatus, CanaryStep, GatewayApiStatus, ProxyCounts, StageStatus};

/// The fleet that serves an API when `spec.fleet` is not set (same as [`crate::defaults::FLEET`]).
pub const DEFAULT_FLEET: &str = crate::defaults::FLEET;

/// The specification of a `GatewayAPI`: one API, reached through its hostnames and stages.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[allow(clippy::duplicated_attributes, reason = "printcolumn(...) repeats its keys by design")]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "GatewayAPI",
    namespaced,
    status = "GatewayApiStatus",
    derive = "PartialEq",
    doc = "GatewayAPI is one API served by Tollgate (like an Amazon API Gateway REST, HTTP or \
           WebSocket API): its hostnames, TLS, the proxy fleet that serves it, default \
           authorizer, CORS, resource policy, limits, which namespaces may attach Routes, and \
           its stages (with optional canary releases).",
    shortname = "gwapi",
    shortname = "tgapi",
    category = "tollgate",
    selectable = ".spec.fleet",
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(name = "Hostnames", type_ = "string", json_path = ".spec.hostnames"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(name = "Fleet", type_ = "string", json_path = ".spec.fleet", priority = 1),
    printcolumn(
        name = "Proxies",
        type_ = "integer",
        json_path = ".status.proxies.upToDate",
        description = "Connected proxies that serve the latest generation",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiSpec {
    /// The API's protocol: `HTTP` (REST-style routes matched by method and path) or `WebSocket`
    /// (a managed WebSocket API: the proxy holds client connections and routes messages by route
    /// key). Default: `HTTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,

    /// Name of the proxy fleet that serves this API (proxies started with the same fleet name).
    /// Default: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub fleet: Option<String>,

    /// Host names the API answers on (`api.shop.example`, `*.shop.example`). Stages may add their
    /// own. Empty (default): any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(max = 253), regex(pattern = HOSTNAME_PATTERN)))]
    pub hostnames: Vec<String>,

    /// TLS for the API's listeners: server certificates chosen by SNI and optional client
    /// certificate validation (mTLS). Default: none (plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTls>,

    /// Which namespaces may attach Routes to this API. Default: `{namespaces: Same}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,

    /// Authorizer (in this namespace) used by every Route that declares no authorization of its
    /// own. Default: none (Routes without authorization are public).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_authorizer: Option<LocalRef>,

    /// Cross-origin resource sharing: the gateway answers preflight requests and adds CORS
    /// headers to responses. Default: none (no CORS handling; preflights are routed like any
    /// request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,

    /// Resource policy: which client addresses may call the API. Default: everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ResourcePolicy>,

    /// Request limits for the whole API. Default: see the fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,

    /// Rate limit for the whole API, all stages together, in requests per second. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,

    /// The API's stages (`prod`, `dev`, ...), each reached by its own hostnames or base path.
    /// Names are unique. Empty (default): one implicit stage named `default` with no base path,
    /// no variables, serving every Route on the API's hostnames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub stages: Vec<Stage>,

    /// WebSocket APIs: where the route key of an incoming message is found, e.g.
    /// `$request.body.action` (the `action` member of a JSON message). Messages without a
    /// matching route key go to the `$default` Route. Ignored for HTTP APIs.
    /// Default: `$request.body.action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\$request\.body\.[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$"))]
    pub route_selection_expression: Option<String>,

    /// WebSocket APIs: who may use the connections management API
    /// (`POST/GET/DELETE /@connections/{connectionId}`) to push to, inspect and close client
    /// connections. Ignored for HTTP APIs. Default: nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_api: Option<ConnectionsApi>,

    /// WebSocket APIs: frame and message size limits, idle timeout and maximum connection
    /// lifetime. Ignored for HTTP APIs. Default: see the fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_socket: Option<WebSocketLimits>,
}

/// Limits of a managed WebSocket API's client connections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketLimits {
    /// Largest frame a client may send, in bytes; a larger frame closes the connection with
    /// status 1009 (message too big). Default: 32768 (32 KiB, as AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 125))]
    pub max_frame_bytes: Option<i64>,

    /// Largest message (all frames of a fragmented message together) a client may send, in
    /// bytes; a larger message closes the connection with status 1009. Default: 131072
    /// (128 KiB, as AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 125))]
    pub max_message_bytes: Option<i64>,

    /// A connection with no message in either direction for this long is closed (status 1001).
    /// Default: `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,

    /// A connection is closed (status 1001) once it has been open this long. Default: `2h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
}

/// The protocol of an API.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum Protocol {
    /// REST-style API: Routes match on method, path, headers and query.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// Managed WebSocket API: Routes match on route keys of messages.
    WebSocket,
}

/// TLS settings for an API's listeners.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTls {
    /// Secrets of type `kubernetes.io/tls` in this namespace holding the server certificates and
    /// keys; the certificate is chosen by the SNI host name of the connection. At least one.
    #[schemars(length(min = 1, max = 64))]
    pub certificate_refs: Vec<LocalRef>,

    /// Validation of client certificates (mutual TLS). Default: none (no client certificate is
    /// requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidation>,
}

/// Client certificate validation (mTLS).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientValidation {
    /// Secret in this namespace whose `ca.crt` entry (PEM) holds the certificate authorities that
    /// client certificates must chain to.
    pub ca_certificate_ref: LocalRef,

    /// `Require`: connections without a valid client certificate are refused. `Optional`: a
    /// certificate is requested and verified when presented, but not required.
    /// Default: `Require`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientValidationMode>,
}

/// Whether a client certificate is mandatory.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum ClientValidationMode {
    /// A valid client certificate is required.
    #[default]
    Require,
    /// A client certificate is verified when presented.
    Optional,
}

/// Which namespaces may attach Routes to an API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.namespaces) && self.namespaces == 'Selector' ? has(self.selector) : !has(self.selector)"
).message(
    "allowedRoutes: set selector when (and only when) namespaces is Selector"
))]
pub struct AllowedRoutes {
    /// `Same`: Routes in the API's namespace. `All`: Routes in any namespace. `Selector`: Routes
    /// in namespaces whose labels match `selector`. Default: `Same`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,

    /// Label selector for namespaces; required when `namespaces` is `Selector`, not allowed
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Namespaces from which Routes may attach.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum RouteNamespaces {
    /// Only the API's own namespace.
    #[default]
    Same,
    /// Every namespace.
    All,
    /// Namespaces matching `allowedRoutes.selector`.
    Selector,
}

/// Cross-origin resource sharing settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!(has(self.allowCredentials) && self.allowCredentials && has(self.allowOrigins) && '*' in self.allowOrigins)"
).message(
    "cors: allowCredentials: true cannot be combined with allowOrigins '*'; list the allowed origins explicitly"
))]
pub struct Cors {
    /// Origins allowed to call the API (`https://shop.example`, `https://*.shop.example`), or
    /// `*` for any origin. Empty (default): no cross-origin calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^(\*|https?://[^/\s]+)$")))]
    pub allow_origins: Vec<String>,

    /// Methods allowed in cross-origin calls (`GET`, `POST`, ...), or `*`. Empty (default): the
    /// methods of the matched Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^([A-Z]+|\*)$")))]
    pub allow_methods: Vec<String>,

    /// Request headers allowed in cross-origin calls, or `*`. Empty (default): only CORS-safelisted
    /// headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = HEADER_NAME_PATTERN)))]
    pub allow_headers: Vec<String>,

    /// Response headers exposed to the calling script. Empty (default): only CORS-safelisted
    /// response headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = HEADER_NAME_PATTERN)))]
    pub expose_headers: Vec<String>,

    /// How long browsers may cache a preflight answer (`Access-Control-Max-Age`), e.g. `10m`.
    /// Default: not sent (browser default, usually 5 seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,

    /// Whether credentials (cookies, `Authorization`) may be sent
    /// (`Access-Control-Allow-Credentials`). Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
}

/// Resource policy: source-address allow and deny lists.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePolicy {
    /// Client address ranges allowed to call the API (CIDR like `10.0.0.0/8`; a bare address
    /// means that one address). Empty (default): every address not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = CIDR_PATTERN)))]
    pub allow_cidrs: Vec<String>,

    /// Client address ranges refused with 403. Deny wins over allow. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = CIDR_PATTERN)))]
    pub deny_cidrs: Vec<String>,

    /// Addresses of proxies or load balancers in front of Tollgate whose `X-Forwarded-For` header
    /// is trusted to name the real client. Empty (default): the TCP peer address is the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = CIDR_PATTERN)))]
    pub trusted_proxies: Vec<String>,
}

/// Request limits of an API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest request body accepted, in bytes; larger bodies get 413.
    /// Default: 10485760 (10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_request_body_bytes: Option<i64>,

    /// Time allowed for the integration to answer, for Routes that set no timeout of their own;
    /// past it the client gets 504. Default: `29s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Access to the WebSocket connections management API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionsApi {
    /// Selects, by label, Secrets of type `tollgate.dev/access-key` (entries `accessKeyId` and
    /// `secretAccessKey`) in the API's namespace; callers of the management API sign their
    /// requests with one of these keys (AWS Signature Version 4, service `execute-api`, any
    /// region), as AWS SDK `apigatewaymanagementapi` clients do. The API is served on the
    /// proxies' own connections listener (`--connections-listen`), reachable from inside the
    /// cluster only.
    pub credential_selector: LabelSelector,
}

impl GatewayAPI {
    /// The API's protocol, with the documented default (`HTTP`) applied.
    pub fn protocol(&self) -> Protocol {
        self.spec.protocol.unwrap_or_default()
    }

    /// The proxy fleet serving the API, with the documented default (`default`) applied.
    pub fn fleet(&self) -> &str {
        self.spec.fleet.as_deref().unwrap_or(DEFAULT_FLEET)
    }
}
