//! Phase 3: each stage's routes — selection, stage variables, backends, duplicates — for the
//! stable track here, for the canary track in `canary.rs`.

use std::collections::BTreeMap;

use tollgate_crds::Stage;
use tollgate_ir as ir;

use super::api::ApiInfo;
use super::backend::{ServiceError, ServiceIndex, parse_url};
use super::claims::Claims;
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
    let stable: Vec<&RouteInfo<'_>> =
        routes.iter().filter(|r| r.servable && attaches_to(r, api) && selected(stage, &r.labels)).collect();
    let mut served = serve(api, stage, &stable, services, d, ir::canary::Track::Stable);
    if api.web_socket.is_some() {
        super::websocket::finish_stage(api.object, &api.key, stage, &mut served, api.limits.timeout, d);
    }
    served.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.key.cmp(&b.key)));
    let canary = super::canary::compile_track(api, stage, routes, &served, services, d);
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
        canary,
    }
}

/// Compiles `candidates` (in conflict order) for one track of `stage`, whose variables the
/// backends use; refuses duplicates within the track.
pub(super) fn serve<'r, 'a>(
    api: &ApiInfo<'_>,
    stage: &Stage,
    candidates: &[&'r RouteInfo<'a>],
    services: &ServiceIndex<'_>,
    d: &mut Diagnostics,
    track: ir::canary::Track,
) -> Vec<ir::Route> {
    let mut served: Vec<ir::Route> = Vec::new();
    // (shape, methods, headers) → the Route that claimed it first on this track.
    let mut claims: Claims<'r, 'a> = Claims::default();
    let on = match track {
        ir::canary::Track::Stable => format!("stage {}", stage.name),
        ir::canary::Track::Canary => format!("the canary track of stage {}", stage.name),
    };
    for &route in candidates {
        if let Some(route_key) = route.socket.route_key.as_deref() {
            // WebSocket APIs: routes are chosen by route key, not by path (websocket.rs).
            let integrate = |d: &mut Diagnostics| integration(route, stage, services, d);
            let served_route =
                super::websocket::stage_route(route, route_key, stage, api, &served, integrate, d);
            if let Some(served_route) = served_route {
                route.served.set(true);
                d.programmed(Kind::Route, &route.key, true);
                served.push(served_route);
            }
            continue;
        }
        let Some(template) = &route.template else { continue };
        if let Some(owner) = claims.owner_of_conflict(route) {
            d.reject(
                Kind::Route,
                &route.key,
                reason::CONFLICT,
                "spec.match",
                format!(
                    "{} {template} is already served on {on} by Route {owner}, which is older: change the path, \
                     methods or headers",
                    if route.methods.is_empty() { "ANY".to_string() } else { route.methods.join(",") },
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
        claims.claim(route);
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
            route_key: None,
            web_socket: route.socket.passthrough,
        });
    }
    served
}

pub(super) fn attaches_to(route: &RouteInfo<'_>, api: &ApiInfo<'_>) -> bool {
    route.object.spec.api_ref.name == api.key.name
        && route.object.spec.api_ref.namespace.as_deref().unwrap_or(&route.key.namespace) == api.key.namespace
}

/// The stable track: the stage's routeSelector (default: every Route), minus the Routes the
/// canary's selector takes — a Route the canary selects is only ever on the canary track.
fn selected(stage: &Stage, labels: &BTreeMap<String, String>) -> bool {
    let stable = stage.route_selector.as_ref().is_none_or(|sel| selector::matches(sel, labels));
    let canary = stage.canary.as_ref().and_then(|c| c.route_selector.as_ref());
    stable && !canary.is_some_and(|sel| selector::matches(sel, labels))
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
        Target::Export(backend) => Some(ir::Integration::Http(ir::HttpIntegration {
            backend: (**backend).clone(),
            path_prefix: String::new(),
            path: route.rewrite.clone(),
        })),
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
                    super::backend::http_backend(format!("{}/{name}:{port}", key.namespace), Vec::new(), None)
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
