//! `UsagePlan`: throttle and quota for the holders of selected API keys on given API stages.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, DNS_LABEL_PATTERN, LabelSelector, Throttle};

/// The specification of a `UsagePlan`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[allow(clippy::duplicated_attributes, reason = "printcolumn(...) repeats its keys by design")]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "UsagePlan",
    namespaced,
    status = "UsagePlanStatus",
    derive = "PartialEq",
    doc = "UsagePlan gives the holders of selected API keys access to API stages, with a \
           throttle and a quota (like an Amazon API Gateway usage plan). API keys are Secrets of \
           type tollgate.dev/api-key, the key under `key`, selected by label.",
    shortname = "tgplan",
    category = "tollgate",
    printcolumn(name = "Rate", type_ = "number", json_path = ".spec.throttle.rate"),
    printcolumn(name = "Burst", type_ = "integer", json_path = ".spec.throttle.burst", priority = 1),
    printcolumn(name = "Quota", type_ = "integer", json_path = ".spec.quota.limit"),
    printcolumn(name = "Period", type_ = "string", json_path = ".spec.quota.period"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct UsagePlanSpec {
    /// The API stages this plan covers. A key of this plan is accepted only on them.
    /// Empty (default): the plan covers nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub api_stages: Vec<ApiStage>,

    /// Rate limit per API key across all covered stages, in requests per second.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,

    /// Maximum number of requests per API key in a period; always counted fleet-wide and
    /// durably. Default: none (unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,

    /// Selects, by label, the API keys of this plan: Secrets of type `tollgate.dev/api-key` in
    /// the plan's namespace, the key under `key`.
    pub key_selector: LabelSelector,
}

/// One API stage covered by a plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiStage {
    /// Name of the GatewayAPI.
    #[schemars(length(min = 1, max = 253))]
    pub api: String,

    /// Namespace of the GatewayAPI. Default: the plan's namespace. A plan in another namespace
    /// is honoured only when the API's allowedRoutes admits the plan's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,

    /// Name of the stage.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub stage: String,

    /// Per-route rate limits per API key, overriding the plan's throttle on those routes. Keys
    /// are `METHOD PATH` as in the Route's match (`GET /orders/{id}`); `* PATH` for any method.
    /// Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_throttles: BTreeMap<String, Throttle>,
}

/// A request quota.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Requests allowed per API key in each period. At least 1.
    #[schemars(range(min = 1))]
    pub limit: u64,

    /// The period: `DAY`, `WEEK` (starting Monday) or `MONTH`, with boundaries at 00:00 UTC.
    pub period: QuotaPeriod,

    /// What happens while the quota store (Redis, with `--redis`) cannot be reached: `Open`
    /// admits requests without counting them (logged and counted in
    /// `tollgate_redis_failures_total`), `Closed` answers 503. Default: `Open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<crate::common::FailurePolicy>,
}

/// The period of a quota.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum QuotaPeriod {
    /// A UTC day.
    Day,
    /// A UTC week, Monday to Sunday.
    Week,
    /// A UTC calendar month.
    Month,
}

/// Observed state of a `UsagePlan`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsagePlanStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions: `Accepted` (the plan is valid and its API stages exist), and others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl UsagePlan {
    /// The entry of `apiStages` covering stage `stage` of the GatewayAPI `namespace/api`, if any
    /// (an entry without a namespace refers to the plan's namespace).
    pub fn api_stage(&self, namespace: &str, api: &str, stage: &str) -> Option<&ApiStage> {
        let own = self.metadata.namespace.as_deref();
        self.spec
            .api_stages
            .iter()
            .find(|s| s.api == api && s.stage == stage && s.namespace.as_deref().or(own) == Some(namespace))
    }
}
