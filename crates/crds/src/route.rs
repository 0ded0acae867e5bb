//! `Route`: a method + path (or WebSocket route key) of an API and what serves it.

mod integration;

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Condition, Duration, HEADER_NAME_PATTERN, LocalRef, NamespacedRef, PATH_PATTERN, Throttle,
    free_form_object,
};

pub use integration::{
    Integration, IntegrationTarget, MockIntegration, Retries, ServiceBackend, WebSocketPassthrough,
};

/// The specification of a `Route`: what it matches on which API, and how it is served.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[allow(clippy::duplicated_attributes, reason = "printcolumn(...) repeats its keys by design")]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "Route",
    namespaced,
    status = "RouteStatus",
    derive = "PartialEq",
    doc = "Route is one route of a GatewayAPI (like an Amazon API Gateway resource + method + \
           integration, or a WebSocket route key): what it matches, the integration that serves \
           it, and its authorization, API-key requirement, throttle, cache, request validation \
           and transforms.",
    shortname = "tgroute",
    shortname = "tgr",
    category = "tollgate",
    selectable = ".spec.apiRef.name",
    printcolumn(name = "API", type_ = "string", json_path = ".spec.apiRef.name"),
    printcolumn(name = "Methods", type_ = "string", json_path = ".spec.match.methods", priority = 1),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.match.path"),
    printcolumn(name = "Route Key", type_ = "string", json_path = ".spec.routeKey", priority = 1),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "ResolvedRefs",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ResolvedRefs\")].status",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.match) || has(self.routeKey)").message(
    "spec: set match (HTTP APIs) or routeKey (WebSocket APIs)"
))]
#[x_kube(validation = Rule::new(
    "has(self.integration) || (has(self.routeKey) && self.routeKey in ['$connect', '$disconnect'])"
).message(
    "spec.integration is required, except on WebSocket routes with routeKey $connect or $disconnect"
))]
pub struct RouteSpec {
    /// The GatewayAPI this Route attaches to. Without a namespace, the Route's own namespace;
    /// the API's allowedRoutes decides whether a Route from another namespace may attach.
    pub api_ref: NamespacedRef,

    /// HTTP APIs: which requests this Route serves. Ignored on WebSocket APIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<RouteMatch>,

    /// WebSocket APIs: the route key served: `$connect` (a client connects; may reject it, and
    /// authorization runs here), `$disconnect`, `$default` (messages no other key matches) or a
    /// custom key compared with the API's routeSelectionExpression. Ignored on HTTP APIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^(\$connect|\$disconnect|\$default|[^$].*)$"))]
    pub route_key: Option<String>,

    /// What serves matched requests: exactly one of service, serviceExport, url or mock.
    /// Required, except on WebSocket `$connect` and `$disconnect` routes, where no integration
    /// means the connection is simply accepted or closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration: Option<Integration>,

    /// Who may call this Route. Default: the API's defaultAuthorizer when it has one, otherwise
    /// no authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,

    /// Whether callers must present an API key (header `x-api-key`) of a UsagePlan that covers
    /// this API and stage; the plan's throttle and quota then apply. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_required: Option<bool>,

    /// Rate limit for this Route, in requests per second. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,

    /// Response caching for this Route; takes effect only on stages whose cache is enabled.
    /// Default: the stage's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<RouteCache>,

    /// Request validation; invalid requests get 400. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<RequestValidation>,

    /// Header, query and body changes on the way in and out. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Transform>,
}

/// Which HTTP requests a Route serves. All given conditions must hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Methods served. Empty (default): any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,

    /// Path template, matched after the stage's basePath is stripped: literal segments,
    /// `{name}` for exactly one segment, and `{name+}` (last segment only) for the rest of the
    /// path. Parameters are available as `${request.path.name}`. Starts with `/`.
    #[schemars(length(min = 1, max = 1024), regex(pattern = PATH_PATTERN))]
    pub path: String,

    /// Headers that must be present with exactly these values (names are case-insensitive).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,

    /// Query parameters that must be present with exactly these values. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query: Vec<QueryMatch>,
}

/// An HTTP method.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum HttpMethod {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
}

/// A header condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    #[schemars(regex(pattern = HEADER_NAME_PATTERN))]
    pub name: String,
    /// Exact value the header must have.
    pub value: String,
}

/// A query-parameter condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryMatch {
    /// Parameter name (case-sensitive).
    #[schemars(length(min = 1))]
    pub name: String,
    /// Exact value the parameter must have.
    pub value: String,
}

/// Authorization of a Route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.type) || self.type != 'None' || (!has(self.authorizerRef) && (!has(self.scopes) || size(self.scopes) == 0))"
).message(
    "authorization: type None turns authorization off; remove authorizerRef and scopes, or remove type"
))]
pub struct Authorization {
    /// Authorizer (in the Route's namespace) that checks callers. Default: the API's
    /// defaultAuthorizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer_ref: Option<LocalRef>,

    /// Scopes the caller's token must all carry (JWT authorizers: from the scopes claim).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,

    /// `None`: the Route is public even when the API has a defaultAuthorizer (cannot be
    /// combined with authorizerRef or scopes). `Authorizer`: the Route is checked by
    /// authorizerRef or else the API's defaultAuthorizer; with neither, every call is refused.
    /// Default: `Authorizer` when authorizerRef is set or the API has a defaultAuthorizer,
    /// otherwise `None`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<AuthorizationType>,
}

/// Whether a Route is authorized.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum AuthorizationType {
    /// No authorization.
    None,
    /// Authorization by an Authorizer.
    Authorizer,
}

/// Response caching of a Route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteCache {
    /// Whether responses of this Route are cached. Default: true for GET and HEAD when the
    /// stage's cache is enabled, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// How long a response is served from the cache. Default: the stage's cache ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,

    /// Request parts added to the cache key besides method, host, stage and path:
    /// `query.NAME`, `header.NAME` or `path.NAME`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^(query|header|path)\..+$")))]
    pub key_parameters: Vec<String>,

    /// Whether one cached response is served to every caller. When false, the caller's identity
    /// (principal or API key) is part of the key. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

/// Request validation of a Route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestValidation {
    /// Query parameters every request must carry. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_query: Vec<String>,

    /// Headers every request must carry. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = HEADER_NAME_PATTERN)))]
    pub required_headers: Vec<String>,

    /// JSON Schema (draft 2020-12) the request body must satisfy; the body must then be JSON.
    /// Default: the body is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub body_schema: Option<serde_json::Value>,
}

/// Request and response transforms of a Route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transform {
    /// Changes to the request before it goes to the integration. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestTransform>,

    /// Changes to the response before it goes to the client. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseTransform>,
}

/// Changes to a request. Values are templates (`${request.header.NAME}`,
/// `${context.authorizer.claims.sub}`, `${stageVariables.NAME}`, ...).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestTransform {
    /// Headers set (replacing any present), name to template. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_headers: BTreeMap<String, String>,

    /// Headers removed. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = HEADER_NAME_PATTERN)))]
    pub remove_headers: Vec<String>,

    /// Query parameters set (replacing any present), name to template. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_query: BTreeMap<String, String>,

    /// Query parameters removed. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_query: Vec<String>,

    /// Template that replaces the request body. Default: the body is passed unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Changes to a response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResponseTransform {
    /// Headers set (replacing any present), name to template. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_headers: BTreeMap<String, String>,

    /// Headers removed (e.g. `server`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = HEADER_NAME_PATTERN)))]
    pub remove_headers: Vec<String>,
}

/// Observed state of a `Route`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions: `Accepted` (the Route compiled and attached to its API), `ResolvedRefs`
    /// (its backend and authorizer references resolve), and others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl Route {
    /// Namespace of the GatewayAPI this Route attaches to: `apiRef.namespace`, or else the
    /// Route's own namespace (`None` only for an object without a namespace).
    pub fn api_namespace(&self) -> Option<&str> {
        self.spec.api_ref.namespace.as_deref().or(self.metadata.namespace.as_deref())
    }
}
