//! Traffic governance in the Snapshot: throttles, usage plans and API-key hashes, response cache,
//! CORS, request validation and transforms — everything already resolved per API, stage and route.

pub mod template;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Millis, ObjectKey};

/// Traffic settings of a whole API ([`crate::Api::traffic`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTraffic {
    /// Rate limit for every request of the API, all stages together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Cross-origin resource sharing; `None`: no CORS handling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
}

impl ApiTraffic {
    /// Whether nothing is set (keeps snapshots small).
    pub fn is_empty(&self) -> bool {
        self == &ApiTraffic::default()
    }
}

/// Traffic settings of a stage ([`crate::Stage::traffic`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageTraffic {
    /// Rate limit for every request of the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// The stage's response cache; `None`: disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<StageCache>,
    /// Usage plans covering this stage, in precedence order (oldest first); a key belongs to the
    /// first plan that lists it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<UsagePlan>,
}

impl StageTraffic {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self == &StageTraffic::default()
    }
}

/// Traffic settings of a route on one stage ([`crate::Route::traffic`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTraffic {
    /// Callers must present an API key of a plan covering the stage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api_key_required: bool,
    /// Rate limit for the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Caching of the route's responses; `None`: not cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<RouteCache>,
    /// Request validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// Request and response transforms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Transform>,
}

impl RouteTraffic {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self == &RouteTraffic::default()
    }
}

/// A token bucket: `rate` requests per second on average, `burst` at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttle {
    /// What the counts belong to (`api:ns/name`, `stage:ns/name/prod`, `route:...`,
    /// `plan:ns/name`, ...). Two throttles with the same id, rate, burst and scope share state,
    /// also across configuration swaps.
    pub id: String,
    /// Requests per second (> 0, fractions allowed).
    pub rate: f64,
    /// Bucket size (≥ 1).
    pub burst: u32,
    /// Where the bucket lives.
    pub scope: Scope,
    /// What a global throttle does while Redis is unreachable.
    pub failure_policy: FailurePolicy,
}

/// Where a throttle is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// In each proxy process.
    #[default]
    Local,
    /// In Redis, shared by the fleet (local when the proxy runs without Redis).
    Global,
}

/// Behaviour while shared state (Redis) cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Admit the request.
    #[default]
    Open,
    /// Answer 503.
    Closed,
}

/// A usage plan as it applies to one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsagePlan {
    /// The UsagePlan object.
    pub key: ObjectKey,
    /// Per-key throttle across the plan's stages (keyed by API key inside the limiter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Per-key throttles that replace `throttle` on given routes (by Route object key
    /// `ns/name`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_throttles: BTreeMap<String, Throttle>,
    /// Per-key quota, durable and fleet-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// The plan's API keys, sorted by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<ApiKey>,
}

/// A request quota per API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Requests per period.
    pub limit: u64,
    /// The period (UTC boundaries).
    pub period: QuotaPeriod,
    /// What happens while the quota store is unreachable.
    pub failure_policy: FailurePolicy,
}

/// A quota period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum QuotaPeriod {
    /// A UTC day.
    Day,
    /// A UTC week starting Monday.
    Week,
    /// A UTC calendar month.
    Month,
}

/// An API key, reduced to what the proxy needs: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// Non-secret identity: the Secret's `namespace/name`. Appears in logs, `/usage` and quota
    /// counters.
    pub id: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// `false` when the Secret is disabled (`tollgate.dev/disabled: "true"`); such a key is
    /// refused like an unknown one.
    pub enabled: bool,
}

/// A stage's response cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageCache {
    /// Memory bound of the cache, per proxy.
    pub max_bytes: u64,
    /// What the cache belongs to (`ns/name/stage`); the cache survives swaps while this and
    /// `max_bytes` stay the same.
    pub id: String,
}

/// Caching of one route's responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteCache {
    /// How long an entry is served.
    pub ttl: Millis,
    /// Upper-case methods whose responses are cached (GET and HEAD by default).
    pub methods: Vec<String>,
    /// Request parts added to the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_parameters: Vec<KeyParameter>,
    /// One entry for every caller (the caller's identity is not part of the key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// A request part in a cache key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "in", content = "name")]
pub enum KeyParameter {
    /// A query parameter.
    Query(String),
    /// A header (lower-case name).
    Header(String),
    /// A path parameter.
    Path(String),
}

/// Cross-origin resource sharing settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Allowed origins (`https://a.example`, `https://*.a.example`) or `*`.
    pub allow_origins: Vec<String>,
    /// Allowed methods or `*`; empty: the methods of the matched routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Allowed request headers (lower-case) or `*`; empty: safelisted only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers exposed to scripts (lower-case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age` in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// `Access-Control-Allow-Credentials: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
}

/// Request validation of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// Query parameters that must be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_query: Vec<String>,
    /// Headers that must be present (lower-case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_headers: Vec<String>,
    /// JSON Schema for the body (already checked to compile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_schema: Option<serde_json::Value>,
}

/// Request and response transforms. Values are templates ([`template::Template`]) checked at
/// compile time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transform {
    /// Request headers set (lower-case name → template).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_set_headers: BTreeMap<String, String>,
    /// Request headers removed (lower-case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_remove_headers: Vec<String>,
    /// Query parameters set (name → template).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_set_query: BTreeMap<String, String>,
    /// Query parameters removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_remove_query: Vec<String>,
    /// Body template replacing the request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// Response headers set (lower-case name → template).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_set_headers: BTreeMap<String, String>,
    /// Response headers removed (lower-case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_remove_headers: Vec<String>,
}
