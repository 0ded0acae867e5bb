//! Status of a `GatewayAPI`, written by the controller.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Time};

/// Observed state of a `GatewayAPI`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions: `Accepted` (the API compiled), `Programmed` (every connected proxy of the
    /// fleet serves its latest generation), and others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// How many proxies of the fleet are connected and how many serve the latest generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<ProxyCounts>,

    /// Per-stage state, e.g. the canary's current weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub stages: Vec<StageStatus>,
}

/// Proxy counts of the fleet serving an API.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyCounts {
    /// Proxies of the fleet connected to the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<i32>,

    /// Connected proxies that have applied a snapshot with this API's latest generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to_date: Option<i32>,
}

/// Observed state of one stage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Name of the stage.
    pub name: String,

    /// State of the stage's canary, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
}

/// Observed state of a canary release.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The weight currently served, in percent (differs from spec while analysis steps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,

    /// Phase of automated analysis: `Progressing`, `Succeeded` or `RolledBack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CanaryPhase>,

    /// Why the canary is in this phase (e.g. the error rate that caused a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// When the weight last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// Phase of an automated canary analysis.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum CanaryPhase {
    /// The weight is being stepped up.
    Progressing,
    /// The weight reached `maxWeight` with the canary healthy; promote it in git.
    Succeeded,
    /// The canary breached its bounds and its weight was set to 0.
    RolledBack,
}
