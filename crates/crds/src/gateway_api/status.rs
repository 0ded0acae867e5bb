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
    /// Phase of automated analysis: `Progressing`, `Promoted` or `RolledBack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CanaryPhase>,

    /// The weight the proxies serve, in percent. With analysis it differs from `spec` while the
    /// analysis steps it; the spec is never rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_weight: Option<f64>,

    /// The latest decision of the analysis and why (the figures it judged, canary against stable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<String>,

    /// Once `Promoted`: the change to make in git to finish the promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,

    /// Identifies the canary spec this state belongs to (a hash of `stages[].canary`); an edit of
    /// the canary restarts the analysis from `spec.weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,

    /// When the effective weight or the phase last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,

    /// The latest analysis steps, oldest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<CanaryStep>,
}

/// One decision of a canary analysis.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// When the decision was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,

    /// The effective weight after the decision, in percent.
    pub weight: f64,

    /// What was decided and why.
    pub decision: String,
}

/// Phase of an automated canary analysis.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum CanaryPhase {
    /// The weight is being stepped up.
    Progressing,
    /// The weight reached `maxWeight` with the canary healthy; finish the promotion in git.
    Promoted,
    /// The canary breached its bounds and its weight was set to 0.
    RolledBack,
}
