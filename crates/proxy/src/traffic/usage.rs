//! `/usage?plan=namespace/name` on the admin port: each key's count in the current quota period.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tollgate_ir::traffic as t;

use super::quota::QuotaStore;

/// The keys and quota of a plan, as served now.
#[derive(Clone, Default)]
pub struct PlanKeys {
    quota: Option<t::Quota>,
    keys: BTreeMap<String, bool>,
}

/// Adds a plan (as it applies to one stage) to the index.
pub fn record(index: &mut BTreeMap<String, PlanKeys>, plan: &t::UsagePlan) {
    let entry = index.entry(plan.key.to_string()).or_default();
    entry.quota = plan.quota.clone();
    for key in &plan.keys {
        entry.keys.insert(key.id.clone(), key.enabled);
    }
}

/// The usage report of one plan.
pub async fn report(store: &QuotaStore, plan: &PlanKeys, name: &str) -> Option<Value> {
    let mut keys = Vec::new();
    for (id, enabled) in &plan.keys {
        let mut entry = json!({"keyId": id, "enabled": enabled});
        if let Some(quota) = &plan.quota {
            match store.used(name, id, quota).await {
                Ok((used, period)) => {
                    entry["used"] = json!(used);
                    entry["remaining"] = json!(quota.limit.saturating_sub(used));
                    entry["periodStart"] = json!(period.start.date().to_string());
                    entry["periodEnd"] = json!(period.end.date().to_string());
                }
                Err(error) => entry["error"] = json!(error.to_string()),
            }
        }
        keys.push(entry);
    }
    Some(json!({
        "plan": name,
        "quota": plan.quota.as_ref().map(|q| json!({"limit": q.limit, "period": q.period})),
        "store": if store.is_redis() { "redis" } else { "local" },
        "keys": keys,
    }))
}
