//! Phase 3: each stage's routes — selection, stage variables, backends, duplicates.

use std::collections::BTreeMap;

use tollgate_crds::Stage;
use tollgate_ir as ir;

use super::api::ApiInfo;
use super::backend::{ServiceError, ServiceIndex, parse_url};
use super::route::{RouteInfo, Target};
use super::selector;
use super::traffic::TrafficInputs;
use super::variables::{VariableError, substitute};
use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::Kind;

/// The stage an API without `stages` gets: every route, any host, no base path.
pub const DEFAULT_STAGE: &str = tollgate_crds::defaults::STAGE_NAME;

pub fn compile_stages(
    api: &ApiInfo<'_>,
    routes: &[RouteInfo<'_>],
    services: &ServiceIndex<'_>,
    traffic: &TrafficInputs,
    d: &mut Diagnostics,
) -> Vec<ir::Stage> {
    let declared = &api.object.spec.stages;
    let implicit;
    let stages: &[Stage] = if declared.is_empty() {
        implicit = [Stage {
            name: DEFAULT_STAGE.to_string(),
            hostnames: Vec::new(),
            base_path: None,
            variables: BTreeMap::new(),
            throttle: None,
            cache: None,
            access_log: None,
            route_selector: None,
            canary: None,
        }];
        &implicit
    } else {
        declared
    };
    stages.iter().map(|stage| compile_stage(api, stage, routes, services, traffic, d)).collect()
}

fn compile_stage(
    api: &ApiInfo<'_>,
    stage: &Stage,
    routes: &[RouteInfo<'_>],
    services: &ServiceIndex<'_>,
    traffic: &TrafficInputs,
    d: &mut Diagnostics,
) -> ir::Stage {
    let base_path = stage.base_path.as_deref().map(|b| b.trim_end_matches('/')).filter(|b| !b.is_empty());
    let mut served: Vec<ir::Route> = Vec::new();
    // (shape, methods, headers) → the Route that claimed it first on this stage.
    let mut claims: Vec<(&RouteInfo<'_>, &ir::ObjectKey)> = Vec::new();
    for route in routes.iter().filter(|r| r.servable && attaches_to(r, api)) {
        if !selected(stage, &route.labels) {
            continue;
        }
        let Some(template) = &route.template else { continue };
        if let Some((_, owner)) = claims.iter().find(|(other, _)| conflicts(other, route)) {
            d.reject(
                Kind::Route,
                &route.key,
                reason::CONFLICT,
                "spec.match",
                format!(
                    "{} {template} is already served on stage {} by Route {owner}, which is older: change the path, \
                     methods or headers",
                    if route.methods.is_empty() { "ANY".to_string() } else { route.methods.join(",") },
                    stage.name
                ),
            );
            continue;
        }
        let Some(integration) = integration(route, stage, services, d) else {
            continue;
        };
        let Some(route_traffic) = super::traffic::route_traffic(
            route.object,
            &route.key,
            &route.methods,
            Some(template),
            stage,
            &api.key,
            d,
        ) else {
            continue;
        };
        claims.push((route, &route.key));
        route.served.set(true);
        d.programmed(Kind::Route, &route.key, true);
        served.push(ir::Route {
            key: route.key.clone(),
            methods: route.methods.clone(),
            path: template.to_string(),
            headers: route.headers.clone(),
            integration,
            timeout: route.timeout.unwrap_or(api.limits.timeout),
            retries: route.retries.clone(),
            traffic: route_traffic,
            auth: route.auth.clone(),
        });
    }
    served.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.key.cmp(&b.key)));
    ir::Stage {
        name: stage.name.clone(),
        hostnames: {
            let mut h: Vec<String> = stage.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect();
            h.sort();
            h
        },
        base_path: base_path.map(str::to_string),
        variables: stage.variables.clone(),
        access_log: stage.access_log.as_ref().and_then(|a| a.enabled).unwrap_or(true),
        traffic: super::traffic::stage_traffic(&api.key, stage, &served, &traffic.plans, d),
        routes: served,
    }
}

fn attaches_to(route: &RouteInfo<'_>, api: &ApiInfo<'_>) -> bool {
    route.object.spec.api_ref.name == api.key.name
        && route.object.spec.api_ref.namespace.as_deref().unwrap_or(&route.key.namespace) == api.key.namespace
}

/// The stable track: the stage's routeSelector when set; otherwise every Route the canary's
/// selector does not take.
fn selected(stage: &Stage, labels: &BTreeMap<String, String>) -> bool {
    match (&stage.route_selector, stage.canary.as_ref().and_then(|c| c.route_selector.as_ref())) {
        (Some(sel), _) => selector::matches(sel, labels),
        (None, Some(canary)) => !selector::matches(canary, labels),
        (None, None) => true,
    }
}

/// Two routes collide when they match the same paths with overlapping methods and the same
/// header conditions. "Any method" overlaps only "any method" (a named method wins over it).
fn conflicts(a: &RouteInfo<'_>, b: &RouteInfo<'_>) -> bool {
    let (Some(ta), Some(tb)) = (&a.template, &b.template) else {
        return false;
    };
    let methods_overlap = if a.methods.is_empty() || b.methods.is_empty() {
        a.methods.is_empty() && b.methods.is_empty()
    } else {
        a.methods.iter().any(|m| b.methods.contains(m))
    };
    methods_overlap && a.headers == b.headers && ta.same_shape(tb)
}

fn integration(
    route: &RouteInfo<'_>,
    stage: &Stage,
    services: &ServiceIndex<'_>,
    d: &mut Diagnostics,
) -> Option<ir::Integration> {
    let k = Kind::Route;
    let key = &route.key;
    let missing = |d: &mut Diagnostics, field: &str, error: VariableError| {
        let message = match error {
            VariableError::Missing(name) => format!(
                "stage {} has no variable {name:?}: add it to the stage's variables in the GatewayAPI",
                stage.name
            ),
            VariableError::Unsupported(expr) => {
                format!("{expr:?}: only ${{stageVariables.NAME}} may appear here")
            }
        };
        d.unresolved(k, key, reason::NOT_FOUND, field, message);
    };
    match route.target.as_ref()? {
        Target::Mock(mock) => Some(ir::Integration::Mock(mock.clone())),
        Target::Service { name, port } => {
            let field = "spec.integration.service.name";
            let name = match substitute(name, &stage.variables) {
                Ok(name) => name,
                Err(e) => {
                    missing(d, field, e);
                    return None;
                }
            };
            let backend = match services.resolve(&key.namespace, &name, *port) {
                Ok(backend) => {
                    if backend.endpoints.is_empty() {
                        d.warn(
                            k,
                            key,
                            reason::NO_ENDPOINTS,
                            "spec.integration.service",
                            format!(
                                "Service {}/{name} has no ready endpoints: requests get 503",
                                key.namespace
                            ),
                        );
                    }
                    backend
                }
                Err(error) => {
                    let message = match error {
                        ServiceError::NotFound => {
                            format!("Service {}/{name} not found: requests get 503", key.namespace)
                        }
                        ServiceError::NoSuchPort { available } => format!(
                            "Service {}/{name} has no port {port} (it has {available:?}): requests get 503",
                            key.namespace
                        ),
                    };
                    d.unresolved(k, key, reason::NOT_FOUND, "spec.integration.service", message);
                    ir::Backend {
                        name: format!("{}/{name}:{port}", key.namespace),
                        scheme: ir::Scheme::Http,
                        endpoints: Vec::new(),
                        host_header: None,
                        tls_server_name: None,
                        service: None,
                    }
                }
            };
            Some(ir::Integration::Http(ir::HttpIntegration {
                backend,
                path_prefix: String::new(),
                path: route.rewrite.clone(),
            }))
        }
        Target::Url(url) => {
            let field = "spec.integration.url";
            let url = match substitute(url, &stage.variables) {
                Ok(url) => url,
                Err(e) => {
                    missing(d, field, e);
                    return None;
                }
            };
            match parse_url(&url) {
                Ok(target) => Some(ir::Integration::Http(ir::HttpIntegration {
                    backend: target.backend,
                    path_prefix: target.path,
                    path: route.rewrite.clone(),
                })),
                Err(message) => {
                    d.unresolved(
                        k,
                        key,
                        reason::INVALID,
                        field,
                        format!("{url:?} (stage {}) {message}", stage.name),
                    );
                    None
                }
            }
        }
    }
}
