//! UsagePlans: their throttles, quotas and API keys (Secrets of type `tollgate.dev/api-key`,
//! hashed here so plaintext keys never enter a Snapshot), and the stages they cover.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use tollgate_crds::UsagePlan;
use tollgate_ir::{self as ir, traffic as t};

use super::{split_route_key, throttle};
use crate::compile::selector;
use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::{Inputs, Kind};

/// The Secret type of API keys.
pub const API_KEY_TYPE: &str = "tollgate.dev/api-key";
/// A label or annotation with value `"true"` disables an API key without deleting it.
pub const DISABLED: &str = "tollgate.dev/disabled";

/// A UsagePlan after checking.
pub struct PlanInfo {
    key: ir::ObjectKey,
    stages: Vec<PlanStage>,
    throttle: Option<t::Throttle>,
    quota: Option<t::Quota>,
    keys: Vec<t::ApiKey>,
}

struct PlanStage {
    api: ir::ObjectKey,
    stage: String,
    /// (`METHOD PATH` as written, method, normalized path, throttle).
    route_throttles: Vec<(String, String, String, t::Throttle)>,
}

const K: Kind = Kind::UsagePlan;

/// Checks every UsagePlan and hashes its keys, oldest plan first.
pub fn compile_plans(inputs: &Inputs, d: &mut Diagnostics) -> Vec<PlanInfo> {
    let stages_of = |api: &ir::ObjectKey| -> Option<Vec<String>> {
        let found = inputs.gateway_apis.iter().find(|a| &a.key() == api)?;
        let stages = &found.object.spec.stages;
        Some(if stages.is_empty() {
            vec![tollgate_crds::defaults::STAGE_NAME.to_string()]
        } else {
            stages.iter().map(|s| s.name.clone()).collect()
        })
    };
    let mut out = Vec::new();
    for object in crate::compile::ordered(&inputs.usage_plans) {
        let key = object.key();
        let plan: &UsagePlan = &object.object;
        let spec = &plan.spec;
        let throttle = spec
            .throttle
            .as_ref()
            .and_then(|s| throttle(s, format!("plan:{key}"), K, &key, "spec.throttle", d));
        let quota = spec.quota.as_ref().map(|q| t::Quota {
            limit: q.limit,
            period: match q.period {
                tollgate_crds::QuotaPeriod::Day => t::QuotaPeriod::Day,
                tollgate_crds::QuotaPeriod::Week => t::QuotaPeriod::Week,
                tollgate_crds::QuotaPeriod::Month => t::QuotaPeriod::Month,
            },
            failure_policy: super::failure_policy(q.failure_policy),
        });
        if spec.quota.as_ref().is_some_and(|q| q.limit == 0) {
            d.invalid(K, &key, "spec.quota.limit", "must be at least 1");
        }
        if let Err(message) = selector::validate(&spec.key_selector) {
            d.invalid(K, &key, "spec.keySelector", message);
        }
        let mut stages = Vec::new();
        for (i, s) in spec.api_stages.iter().enumerate() {
            let at = format!("spec.apiStages[{i}]");
            let api = ir::ObjectKey::new(
                s.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
                s.api.clone(),
            );
            match stages_of(&api) {
                None => d.unresolved(
                    K,
                    &key,
                    reason::NOT_FOUND,
                    format!("{at}.api"),
                    format!("GatewayAPI {api} not found"),
                ),
                Some(names) if !names.contains(&s.stage) => d.unresolved(
                    K,
                    &key,
                    reason::NOT_FOUND,
                    format!("{at}.stage"),
                    format!("GatewayAPI {api} has no stage {:?} (it has: {})", s.stage, names.join(", ")),
                ),
                Some(_) => {}
            }
            if api.namespace != key.namespace
                && let Some(found) = inputs.gateway_apis.iter().find(|a| a.key() == api)
            {
                let labels =
                    inputs.namespaces.iter().find(|n| n.key().name == key.namespace).map(|n| n.labels());
                if !super::super::api::admits_namespace(
                    &found.object,
                    &api.namespace,
                    &key.namespace,
                    labels.as_ref(),
                ) {
                    d.reject(
                        K,
                        &key,
                        reason::NOT_ALLOWED_BY_API,
                        format!("{at}.namespace"),
                        format!(
                            "GatewayAPI {api} does not admit objects from namespace {} (its spec.allowedRoutes): \
                             create the UsagePlan in {} or widen allowedRoutes",
                            key.namespace, api.namespace
                        ),
                    );
                    continue;
                }
            }
            let mut route_throttles = Vec::new();
            for (text, spec_throttle) in &s.route_throttles {
                let field = format!("{at}.routeThrottles[{text}]");
                let Some((method, path)) = split_route_key(text) else {
                    d.invalid(
                        K,
                        &key,
                        field,
                        format!("{text:?}: write METHOD PATH, e.g. \"GET /orders/{{id}}\" or \"* /orders\""),
                    );
                    continue;
                };
                let id = format!("plan:{key}:{method} {path}");
                if let Some(th) = super::throttle(spec_throttle, id, K, &key, &field, d) {
                    route_throttles.push((text.clone(), method, path, th));
                }
            }
            stages.push(PlanStage { api, stage: s.stage.clone(), route_throttles });
        }
        let keys = api_keys(inputs, &key, &spec.key_selector, d);
        if d.is_rejected(K, &key) {
            continue;
        }
        out.push(PlanInfo { key, stages, throttle, quota, keys });
    }
    out
}

/// The plan's API keys: Secrets of type `tollgate.dev/api-key` in the plan's namespace whose
/// labels match the selector, reduced to an id and a SHA-256 hash.
fn api_keys(
    inputs: &Inputs,
    plan: &ir::ObjectKey,
    sel: &tollgate_crds::LabelSelector,
    d: &mut Diagnostics,
) -> Vec<t::ApiKey> {
    let mut keys = Vec::new();
    for secret in &inputs.secrets {
        let id = secret.key();
        let meta = &secret.object.metadata;
        if id.namespace != plan.namespace || secret.object.type_.as_deref() != Some(API_KEY_TYPE) {
            continue;
        }
        let labels = secret.labels();
        if !selector::matches(sel, &labels) {
            continue;
        }
        let Some(value) = secret.object.data.as_ref().and_then(|data| data.get("key")).map(|b| &b.0) else {
            d.warn(
                K,
                plan,
                reason::INVALID,
                "spec.keySelector",
                format!("Secret {id} has no `key` entry; it is ignored"),
            );
            continue;
        };
        let trimmed = value.trim_ascii();
        if trimmed.len() < 16 {
            // The message names the Secret, never its content.
            d.warn(
                K,
                plan,
                reason::INVALID,
                "spec.keySelector",
                format!(
                    "Secret {id}: the key is shorter than 16 characters and is ignored; use a long random key"
                ),
            );
            continue;
        }
        let flag = |m: Option<&BTreeMap<String, String>>| {
            m.and_then(|m| m.get(DISABLED)).is_some_and(|v| v == "true")
        };
        let enabled = !(flag(meta.labels.as_ref()) || flag(meta.annotations.as_ref()));
        keys.push(t::ApiKey { id: id.to_string(), sha256: hex::encode(Sha256::digest(trimmed)), enabled });
    }
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    let mut seen = BTreeSet::new();
    keys.retain(|k| {
        let fresh = seen.insert(k.sha256.clone());
        if !fresh {
            d.warn(
                K,
                plan,
                reason::CONFLICT,
                "spec.keySelector",
                format!("Secret {} holds the same key as another Secret of this plan; it is ignored", k.id),
            );
        }
        fresh
    });
    keys
}

/// The plans covering `stage` of `api`, with route throttles resolved against the stage's routes.
/// A key listed by two plans on one stage belongs to the older plan.
pub fn plans_for_stage(
    api: &ir::ObjectKey,
    stage: &str,
    routes: &[ir::Route],
    plans: &[PlanInfo],
    d: &mut Diagnostics,
) -> Vec<t::UsagePlan> {
    let mut taken: BTreeMap<String, ir::ObjectKey> = BTreeMap::new();
    let mut out = Vec::new();
    for plan in plans {
        let Some(covered) = plan.stages.iter().find(|s| &s.api == api && s.stage == stage) else {
            continue;
        };
        let mut route_throttles = BTreeMap::new();
        for (text, method, path, th) in &covered.route_throttles {
            let hits: Vec<&ir::Route> = routes
                .iter()
                .filter(|r| {
                    &r.path == path && (method == "*" || r.methods.is_empty() || r.methods.contains(method))
                })
                .collect();
            if hits.is_empty() {
                d.warn(
                    K,
                    &plan.key,
                    reason::NOT_FOUND,
                    format!("spec.apiStages[{api}/{stage}].routeThrottles[{text}]"),
                    format!(
                        "no Route serves {text} on stage {stage} of {api}; the throttle has no effect there"
                    ),
                );
            }
            for r in hits {
                route_throttles.insert(r.key.to_string(), th.clone());
            }
        }
        let mut keys = Vec::new();
        for k in &plan.keys {
            match taken.get(&k.sha256) {
                Some(owner) => d.warn(
                    K,
                    &plan.key,
                    reason::CONFLICT,
                    "spec.keySelector",
                    format!(
                        "API key Secret {} is also in UsagePlan {owner}, which is older and covers stage {stage} of \
                         {api}: there the key counts against {owner}",
                        k.id
                    ),
                ),
                None => {
                    taken.insert(k.sha256.clone(), plan.key.clone());
                    keys.push(k.clone());
                }
            }
        }
        out.push(t::UsagePlan {
            key: plan.key.clone(),
            throttle: plan.throttle.clone(),
            route_throttles,
            quota: plan.quota.clone(),
            keys,
        });
    }
    out
}
