//! Phase 3, canary track: field checks, the overlay of canary Routes on the stable ones, the
//! canary's variables, and the weight to serve (the spec's, or the analysis' from status).

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use tollgate_crds::{Canary, CanaryPhase, Stage, defaults};
use tollgate_ir as ir;
use tollgate_ir::canary::{Analysis, CanaryTrack, Track, Weight};

use super::api::ApiInfo;
use super::backend::ServiceIndex;
use super::route::RouteInfo;
use super::selector;
use super::stage::{attaches_to, serve};
use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::Kind;

/// Shortest accepted analysis interval.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Checks `stages[i].canary` (`at` is `spec.stages[i]`).
pub fn check(stage: &Stage, at: &str, key: &ir::ObjectKey, d: &mut Diagnostics) {
    let Some(canary) = &stage.canary else { return };
    let k = Kind::GatewayAPI;
    let at = format!("{at}.canary");
    if !(0.0..=100.0).contains(&canary.weight) {
        d.invalid(
            k,
            key,
            format!("{at}.weight"),
            format!("{} is not a percentage: give 0 to 100 (fractions such as 0.5 are fine)", canary.weight),
        );
    }
    if let Some(sel) = &canary.route_selector
        && let Err(message) = selector::validate(sel)
    {
        d.invalid(k, key, format!("{at}.routeSelector"), message);
    }
    for (name, value) in &canary.variables {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            d.invalid(
                k,
                key,
                format!("{at}.variables.{name}"),
                "variable names may contain only letters, digits and _",
            );
        }
        if value.contains("${") {
            d.invalid(
                k,
                key,
                format!("{at}.variables.{name}"),
                format!("{value:?}: variable values are literal text (no ${{...}}): give the value itself"),
            );
        }
    }
    if let Some(name) = canary.force_header.as_ref().and_then(|f| f.name.as_deref())
        && http_header_name(name).is_none()
    {
        d.invalid(
            k,
            key,
            format!("{at}.forceHeader.name"),
            format!("{name:?} is not a valid header name (letters, digits and -, e.g. x-tollgate-canary)"),
        );
    }
    if let Some(analysis) = &canary.analysis {
        let at = format!("{at}.analysis");
        if let Some(interval) = &analysis.interval {
            match interval.parse() {
                Ok(i) if i >= MIN_INTERVAL => {}
                Ok(_) => d.invalid(k, key, format!("{at}.interval"), "must be at least 1s (e.g. 1m)"),
                Err(e) => d.invalid(k, key, format!("{at}.interval"), e.to_string()),
            }
        }
        let percent = |d: &mut Diagnostics, field: &str, value: Option<f64>, zero_ok: bool| {
            if let Some(v) = value
                && (!(0.0..=100.0).contains(&v) || (!zero_ok && v == 0.0))
            {
                let range = if zero_ok { "0 to 100" } else { "more than 0, at most 100" };
                d.invalid(k, key, format!("{at}.{field}"), format!("{v} is out of range: give {range}"));
            }
        };
        percent(d, "stepWeight", analysis.step_weight, false);
        percent(d, "maxWeight", analysis.max_weight, false);
        percent(d, "maxErrorRate", analysis.max_error_rate, true);
        let step = analysis.step_weight.unwrap_or(defaults::CANARY_STEP_WEIGHT);
        let max = analysis.max_weight.unwrap_or(defaults::CANARY_MAX_WEIGHT);
        if step > max {
            d.invalid(
                k,
                key,
                format!("{at}.stepWeight"),
                format!("stepWeight {step} exceeds maxWeight {max}: lower stepWeight or raise maxWeight"),
            );
        }
        if canary.weight > max {
            d.invalid(
                k,
                key,
                format!("{at}.maxWeight"),
                format!("maxWeight {max} is below the starting weight {}: raise maxWeight", canary.weight),
            );
        }
        if let Some(p99) = &analysis.max_p99_latency {
            match p99.parse() {
                Ok(p) if !p.is_zero() => {}
                Ok(_) => d.invalid(k, key, format!("{at}.maxP99Latency"), "must be more than 0 (e.g. 500ms)"),
                Err(e) => d.invalid(k, key, format!("{at}.maxP99Latency"), e.to_string()),
            }
        }
    }
}

fn http_header_name(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    ok.then_some(lower)
}

/// The canary track of `stage`: the stable routes (recompiled with the canary's variables when
/// it has any) overlaid by the Routes the canary selects. `None` without a canary.
pub fn compile_track(
    api: &ApiInfo<'_>,
    stage: &Stage,
    routes: &[RouteInfo<'_>],
    stable: &[ir::Route],
    services: &ServiceIndex<'_>,
    d: &mut Diagnostics,
) -> Option<CanaryTrack> {
    let canary = stage.canary.as_ref()?;
    let index = api.object.spec.stages.iter().position(|s| s.name == stage.name).unwrap_or_default();
    let at = format!("spec.stages[{index}].canary");
    if api.web_socket.is_some() {
        d.warn(
            Kind::GatewayAPI,
            &api.key,
            reason::INVALID,
            at,
            "canary releases apply to HTTP APIs only: every connection of this WebSocket API stays on the stable \
             track; remove the canary",
        );
        return None;
    }
    let mut variables = stage.variables.clone();
    variables.extend(canary.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
    let canary_stage = Stage { variables: variables.clone(), ..stage.clone() };

    // The stable routes, on the canary's variables.
    let stable_keys: BTreeSet<&ir::ObjectKey> = stable.iter().map(|r| &r.key).collect();
    let base: Vec<ir::Route> = if canary.variables.is_empty() {
        stable.to_vec()
    } else {
        let candidates: Vec<&RouteInfo<'_>> =
            routes.iter().filter(|r| stable_keys.contains(&r.key)).collect();
        serve(api, &canary_stage, &candidates, services, d, Track::Canary)
    };
    // The canary's own routes overlay them.
    let overlay: Vec<ir::Route> = match &canary.route_selector {
        Some(sel) => {
            let candidates: Vec<&RouteInfo<'_>> = routes
                .iter()
                .filter(|r| r.servable && attaches_to(r, api) && selector::matches(sel, &r.labels))
                .collect();
            if candidates.is_empty() {
                d.warn(
                    Kind::GatewayAPI,
                    &api.key,
                    reason::UNUSED,
                    format!("{at}.routeSelector"),
                    "selects no Route of this API: the canary track serves the stable Routes (with the canary's \
                     variables); label the new Routes or fix the selector",
                );
            }
            serve(api, &canary_stage, &candidates, services, d, Track::Canary)
        }
        None => Vec::new(),
    };
    let infos: BTreeMap<&ir::ObjectKey, &RouteInfo<'_>> = routes.iter().map(|r| (&r.key, r)).collect();
    let replaced = |route: &ir::Route| {
        overlay.iter().any(|o| match (infos.get(&o.key), infos.get(&route.key)) {
            (Some(a), Some(b)) => same_endpoint(a, b),
            _ => false,
        })
    };
    let mut served: Vec<ir::Route> = base.into_iter().filter(|r| !replaced(r)).collect();
    served.extend(overlay);
    served.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.key.cmp(&b.key)));

    let revision = revision(canary);
    let spec_weight = Weight::from_percent(canary.weight);
    let analysis = canary.analysis.as_ref().map(analysis_settings);
    let weight = match &analysis {
        Some(a) => analysis_weight(api, &stage.name, &revision).unwrap_or(a.start_weight(spec_weight)),
        None => spec_weight,
    };
    let force = canary.force_header.as_ref();
    Some(CanaryTrack {
        weight,
        spec_weight,
        sticky: canary.sticky.unwrap_or(false),
        force_header: if force.and_then(|f| f.enabled).unwrap_or(true) {
            let name = force.and_then(|f| f.name.as_deref()).unwrap_or(defaults::CANARY_FORCE_HEADER);
            http_header_name(name)
        } else {
            None
        },
        use_stage_cache: canary.use_stage_cache.unwrap_or(false),
        key: ir::Redacted::new(cookie_key(api, &stage.name)),
        revision,
        variables,
        routes: served,
        analysis,
    })
}

/// Whether a canary Route takes the place of a stable one: same path shape, same header
/// conditions, and a method in common (or both for any method).
fn same_endpoint(a: &RouteInfo<'_>, b: &RouteInfo<'_>) -> bool {
    let (Some(ta), Some(tb)) = (&a.template, &b.template) else { return false };
    let methods = if a.methods.is_empty() || b.methods.is_empty() {
        a.methods.is_empty() && b.methods.is_empty()
    } else {
        a.methods.iter().any(|m| b.methods.contains(m))
    };
    methods && a.headers == b.headers && ta.same_shape(tb)
}

/// A short hash of the canary spec: a new revision restarts the analysis and re-assigns
/// sticky clients.
pub fn revision(canary: &Canary) -> String {
    let bytes = serde_json::to_vec(canary).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// The key proxies sign sticky cookies and hash identities with: derived from the GatewayAPI's
/// `metadata.uid` (random, assigned by the API server, not known to API clients) so every proxy
/// and every controller replica derive the same one. Empty when there is no uid (standalone
/// manifests): a single proxy then uses a random key of its own.
fn cookie_key(api: &ApiInfo<'_>, stage: &str) -> String {
    let Some(uid) = api.object.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
        return String::new();
    };
    let mut hash = Sha256::new();
    for part in ["tollgate/canary-key/v1", uid, stage] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    hex::encode(hash.finalize())
}

fn analysis_settings(a: &tollgate_crds::CanaryAnalysis) -> Analysis {
    let interval = a
        .interval
        .as_ref()
        .and_then(|i| i.parse().ok())
        .filter(|i| *i >= MIN_INTERVAL)
        .unwrap_or(defaults::CANARY_ANALYSIS_INTERVAL);
    Analysis {
        interval: interval.into(),
        step_weight: Weight::from_percent(a.step_weight.unwrap_or(defaults::CANARY_STEP_WEIGHT)),
        max_weight: Weight::from_percent(a.max_weight.unwrap_or(defaults::CANARY_MAX_WEIGHT)),
        max_error_rate: a.max_error_rate.unwrap_or(defaults::CANARY_MAX_ERROR_RATE),
        max_p99_latency: a.max_p99_latency.as_ref().and_then(|p| p.parse().ok()).map(ir::Millis::from),
        min_requests: u64::from(a.min_requests.unwrap_or(defaults::CANARY_MIN_REQUESTS)),
    }
}

/// The weight the analysis reached, from the GatewayAPI's status, when it belongs to this
/// canary revision.
fn analysis_weight(api: &ApiInfo<'_>, stage: &str, revision: &str) -> Option<Weight> {
    let status = api.object.status.as_ref()?.stages.iter().find(|s| s.name == stage)?.canary.as_ref()?;
    if status.revision.as_deref() != Some(revision) {
        return None;
    }
    if status.phase == Some(CanaryPhase::RolledBack) {
        return Some(Weight(0));
    }
    status.effective_weight.map(Weight::from_percent)
}
