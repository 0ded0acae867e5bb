//! The Snapshot: the compiled, self-contained configuration a Tollgate proxy serves.
//!
//! This crate is the contract between the control plane (which compiles Kubernetes objects into a
//! [`Snapshot`]) and the data plane (which builds runtime tables from it). It holds plain data with
//! serde, no IO and no Kubernetes types, so that it can be sent over the wire, stored, and compared.
//!
//! Everything here is already resolved: stage variables are substituted, Services are resolved to
//! endpoint addresses, Secrets are reduced to what the proxy needs (TLS material), and every name a
//! proxy reports in metrics or logs is precomputed.

pub mod auth;
pub mod canary;
pub mod distribution;
mod duration;
pub mod path;
pub mod path_template;
mod secret;
pub mod traffic;
pub mod upstream;
pub mod websocket;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use duration::Millis;
pub use path_template::{PathTemplate, TemplateError};
pub use secret::Redacted;

/// The whole configuration a proxy fleet serves, produced by one compile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Monotonic version assigned by the publisher (0 for a snapshot that was never published).
    pub version: u64,
    /// Hex SHA-256 of the snapshot's content (everything but `version`), for change detection.
    pub content_hash: String,
    /// Every API that compiled, sorted by namespace and name.
    pub apis: Vec<Api>,
    /// Certificates for TLS listeners, selected by SNI.
    pub certificates: Vec<Certificate>,
}

/// Identifies a Kubernetes object by namespace and name (kind implied by context).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key from a namespace and a name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One GatewayAPI, compiled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Api {
    /// The GatewayAPI object this came from.
    pub key: ObjectKey,
    /// The `metadata.generation` compiled (0 when the source has none, e.g. a manifest file).
    pub generation: i64,
    /// The proxy fleet that serves this API.
    pub fleet: String,
    /// Hostnames of the API (lower-case; `*.example.com` wildcards allowed). Empty: any host.
    pub hostnames: Vec<String>,
    /// Request limits that apply to every route of the API.
    pub limits: Limits,
    /// Stages, in the order they are matched (see [`Stage`]).
    pub stages: Vec<Stage>,
    /// API-wide throttle and CORS.
    #[serde(default, skip_serializing_if = "traffic::ApiTraffic::is_empty")]
    pub traffic: traffic::ApiTraffic,
    /// Authorizers used by the API's routes, resource policy and mTLS.
    #[serde(default, skip_serializing_if = "auth::ApiAuth::is_empty")]
    pub auth: auth::ApiAuth,
    /// Set on managed WebSocket APIs (`protocol: WebSocket`): route selection, limits and the
    /// @connections credentials. `None`: an HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_socket: Option<websocket::WebSocketApi>,
}

/// Request limits of an API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest accepted request body; larger bodies are answered with 413.
    pub max_request_body_bytes: u64,
    /// Default integration timeout for routes that set none (504 when exceeded).
    pub timeout: Millis,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_request_body_bytes: 10 * 1024 * 1024, timeout: Millis(29_000) }
    }
}

/// A stage of an API, reached by its own hostnames or by a base path.
///
/// A request goes to the stage whose base path is the longest prefix of the request path
/// (at a segment boundary) among the stages whose hostnames accept the request's host; a stage
/// with no hostnames accepts any host of its API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// The stage's name (`prod`, `dev`, ...).
    pub name: String,
    /// Hostnames that select this stage. Empty: any host of the API.
    pub hostnames: Vec<String>,
    /// Path prefix that selects this stage, without trailing slash (`/dev`), stripped before
    /// route matching. `None`: no prefix.
    pub base_path: Option<String>,
    /// Stage variables after resolution (already substituted into backends).
    pub variables: BTreeMap<String, String>,
    /// Whether requests of this stage are written to the access log.
    pub access_log: bool,
    /// The routes served on this stage (the stable track), sorted by route key.
    pub routes: Vec<Route>,
    /// Stage throttle, response cache and the usage plans covering the stage.
    #[serde(default, skip_serializing_if = "traffic::StageTraffic::is_empty")]
    pub traffic: traffic::StageTraffic,
    /// The canary track, when the stage has a canary release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<canary::CanaryTrack>,
}

/// A compiled Route on one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The Route object this came from.
    pub key: ObjectKey,
    /// Upper-case methods this route answers. Empty: any method.
    pub methods: Vec<String>,
    /// Path template (`/orders/{id}`, `/files/{path+}`), normalized, relative to the stage's base
    /// path.
    pub path: String,
    /// Headers that must be present with these exact values for the route to match.
    pub headers: Vec<HeaderMatch>,
    /// What answers the request.
    pub integration: Integration,
    /// Integration timeout (504 when exceeded).
    pub timeout: Millis,
    /// Retry policy for the integration.
    pub retries: Retries,
    /// API key requirement, throttle, cache, validation and transforms.
    #[serde(default, skip_serializing_if = "traffic::RouteTraffic::is_empty")]
    pub traffic: traffic::RouteTraffic,
    /// Who may call the route.
    #[serde(default, skip_serializing_if = "auth::RouteAuth::is_none")]
    pub auth: auth::RouteAuth,
    /// WebSocket APIs: the route key this Route serves (`$connect`, `$disconnect`, `$default` or
    /// a custom key). `None` on HTTP APIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_key: Option<String>,
    /// HTTP APIs: timeouts of WebSocket connections passed through to the backend, when the
    /// Route sets them (`None`: the defaults of [`websocket::Passthrough`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_socket: Option<websocket::Passthrough>,
}

/// A header that must match for a route to apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Header name, lower-case.
    pub name: String,
    /// Exact value required.
    pub value: String,
}

/// What answers a route's requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
#[allow(clippy::large_enum_variant, reason = "built once per configuration, never moved on a request path")]
pub enum Integration {
    /// Forward to an HTTP(S) upstream.
    Http(HttpIntegration),
    /// Answer at the gateway with a fixed response.
    Mock(MockIntegration),
}

/// Forwarding to an HTTP upstream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpIntegration {
    /// Where requests go.
    pub backend: Backend,
    /// Prefix prepended to the upstream path (the path of a `url` integration, without trailing
    /// slash; empty for none).
    pub path_prefix: String,
    /// Upstream path template: literal text with `{name}` placeholders filled from the route's
    /// path parameters. `None`: the request path (after the stage's base path) is forwarded.
    pub path: Option<String>,
}

/// An upstream: a set of endpoints speaking HTTP or HTTPS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// A bounded, human-readable name for metrics and logs (`ns/service:port` or the URL's
    /// authority).
    pub name: String,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Endpoint authorities (`10.0.0.7:8080`, `legacy.example:443`), ready ones only, sorted.
    pub endpoints: Vec<String>,
    /// Host header to send upstream. `None`: the client's Host is kept.
    pub host_header: Option<String>,
    /// Server name to verify for HTTPS upstreams (defaults to the endpoint host).
    pub tls_server_name: Option<String>,
    /// The Service port the endpoints were resolved from (`None` for URLs and ExternalName
    /// Services), so endpoint changes can travel without the rest of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<distribution::ServiceRef>,
    /// Trusted authorities and client certificate for HTTPS (ServiceExport `tls`). `None`: the
    /// proxy's default roots, no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<upstream::UpstreamTls>,
    /// How requests are spread over the endpoints.
    #[serde(default, skip_serializing_if = "upstream::LoadBalancing::is_default")]
    pub load_balancing: upstream::LoadBalancing,
    /// Ejection of failing endpoints. `None`: endpoints are never ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<upstream::OutlierDetection>,
    /// A DNS name the proxy resolves into the endpoints (then `endpoints` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<upstream::DnsTarget>,
}

/// Upstream protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP over TLS.
    Https,
}

/// A response produced by the gateway itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MockIntegration {
    /// Status code.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// Response body.
    pub body: String,
}

/// When to retry a failed integration call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first attempt (0: no retry).
    pub attempts: u32,
    /// Retry when no connection could be made to the chosen endpoint.
    pub on_connect_failure: bool,
    /// Retry when the upstream answers one of these statuses.
    pub on_statuses: Vec<u16>,
}

/// A TLS certificate chain and key, served for the listed hostnames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// The Secret this came from.
    pub source: ObjectKey,
    /// Hostnames (exact or `*.` wildcard) of the APIs that reference this certificate.
    pub hostnames: Vec<String>,
    /// PEM certificate chain.
    pub cert_pem: String,
    /// PEM private key; never printed.
    pub key_pem: Redacted,
}
