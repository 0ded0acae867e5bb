//! Stages of a `GatewayAPI` and their canary releases.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    DNS_LABEL_PATTERN, Duration, HEADER_NAME_PATTERN, HOSTNAME_PATTERN, LabelSelector, Throttle,
};

/// A stage of an API (`prod`, `dev`, ...): its own entry point, variables and settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// Name of the stage, unique within the API (a DNS label: lower case letters, digits, `-`).
    /// Appears in metrics, access logs and `${context.stage}`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,

    /// Host names that reach this stage (`api.shop.example`, `*.dev.shop.example`).
    /// Empty (default): the API's hostnames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(max = 253), regex(pattern = HOSTNAME_PATTERN)))]
    pub hostnames: Vec<String>,

    /// Path prefix that reaches this stage (`/prod`); it is stripped before Route matching. No
    /// trailing slash. Default: none (the stage is reached by host alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(/[^/?#\s]+)+$"))]
    pub base_path: Option<String>,

    /// Stage variables, usable as `${stageVariables.NAME}` in Route backends, rewrites and
    /// transforms. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,

    /// Rate limit for the stage (all its Routes together), in requests per second.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,

    /// Response cache of the stage. Default: disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<StageCache>,

    /// Access logging for the stage. Default: enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,

    /// Selects, by label, the Routes of the API that make up the stage's stable track. An empty
    /// selector (`{}`) selects every Route. Default: every Route of the API that the canary's
    /// routeSelector does not select.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_selector: Option<LabelSelector>,

    /// A canary release on this stage: a share of the traffic goes to a canary track.
    /// Default: none (all traffic on the stable track).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// The response cache of a stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageCache {
    /// Whether responses are cached (GET and HEAD by default; Routes may tune it).
    /// Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// How long a cached response is served, for Routes that set no TTL. Default: `300s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,

    /// Memory the cache may use on each proxy replica, in bytes; least recently used entries are
    /// evicted first. Default: 67108864 (64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_bytes: Option<i64>,
}

/// Access-log settings of a stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessLog {
    /// Whether requests to this stage are written to the access log (JSON lines). Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A canary release on a stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// Percentage of the stage's requests sent to the canary track, 0 to 100; fractions are
    /// allowed (0.5 = one request in 200). With `analysis`, the starting weight (0 starts at
    /// `stepWeight`): the analysis then steps the weight it serves (shown in status) without ever
    /// editing this field.
    #[schemars(range(min = 0, max = 100))]
    pub weight: f64,

    /// Selects, by label, the Routes of the canary track. They overlay the stable Routes: a
    /// canary Route with the same method and path replaces the stable one, new ones are added.
    /// Default: none (the canary track serves the stable Routes with the canary's variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_selector: Option<LabelSelector>,

    /// Stage-variable overrides for the canary track (merged over the stage's variables).
    /// Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,

    /// Whether a client stays on its track: callers that send an API key or an `Authorization`
    /// header are placed by a keyed hash of it; others get a signed cookie. Default: false (each
    /// request is assigned at random by weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<bool>,

    /// Whether the canary track reads and writes the stage's response cache; otherwise it has a
    /// cache of its own (same size limit). Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_stage_cache: Option<bool>,

    /// A request header that forces the track, for testing: value `always` (the canary) or
    /// `never` (the stable track). Default: enabled, header `x-tollgate-canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_header: Option<CanaryForceHeader>,

    /// Automated analysis: step the weight up while the canary stays healthy, roll it back to 0
    /// when it does not (the reason is recorded in status). Default: none (the weight is only
    /// changed by editing it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,
}

/// The header that lets a request choose its canary track.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryForceHeader {
    /// Whether the header is honoured. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Name of the header. Default: `x-tollgate-canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HEADER_NAME_PATTERN))]
    pub name: Option<String>,
}

/// Automated canary analysis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.stepWeight) || !has(self.maxWeight) || self.stepWeight <= self.maxWeight"
).message(
    "canary.analysis: stepWeight must not exceed maxWeight; lower stepWeight or raise maxWeight"
))]
pub struct CanaryAnalysis {
    /// How often the canary is evaluated and the weight stepped (at least `1s`). Default: `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,

    /// Percentage points added to the weight after each healthy interval. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100), extend("exclusiveMinimum" = true))]
    pub step_weight: Option<f64>,

    /// Weight at which stepping stops (phase `Promoted`); finishing the promotion is then an edit
    /// in git. Default: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_weight: Option<f64>,

    /// Largest acceptable share of canary responses that are errors (5xx, including the gateway's
    /// own 502/503/504), in percent (1 = 1 %). Above it the canary is rolled back. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_error_rate: Option<f64>,

    /// Largest acceptable 99th-percentile latency of the canary track, e.g. `500ms`. Above it
    /// the canary is rolled back. Default: none (latency is not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_latency: Option<Duration>,

    /// Requests the canary must have served in an interval before it is judged; with fewer,
    /// the weight is held. Default: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_requests: Option<u32>,
}
