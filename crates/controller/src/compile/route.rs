//! Phase 2: Routes — match, integration, attachment to an API.

use std::cell::Cell;
use std::collections::BTreeMap;

use tollgate_crds::Route;
use tollgate_ir::{self as ir, PathTemplate};

use super::api::ApiInfo;
use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::{Inputs, Kind, Object};

/// What a Route forwards to, before stage variables are substituted.
pub enum Target {
    /// A Service in the Route's namespace; `name` may hold `${stageVariables.X}`.
    Service { name: String, port: i32 },
    /// A URL; may hold `${stageVariables.X}`.
    Url(String),
    /// A fixed response.
    Mock(ir::MockIntegration),
    /// A ServiceExport's backend, resolved and allowed for the Route's API.
    Export(Box<ir::Backend>),
}

/// A Route after phase 2.
pub struct RouteInfo<'a> {
    pub key: ir::ObjectKey,
    pub object: &'a Route,
    pub labels: BTreeMap<String, String>,
    pub methods: Vec<String>,
    pub template: Option<PathTemplate>,
    pub headers: Vec<ir::HeaderMatch>,
    pub target: Option<Target>,
    pub rewrite: Option<String>,
    pub timeout: Option<ir::Millis>,
    pub retries: ir::Retries,
    /// Accepted and safe to serve with what this version enforces.
    pub servable: bool,
    /// Set once a stage serves it.
    pub served: Cell<bool>,
    /// Who may call it (resolved by `auth::resolve_routes`).
    pub auth: ir::auth::RouteAuth,
    /// WebSocket APIs: the route key; HTTP APIs: passthrough timeouts.
    pub socket: super::websocket::RouteSocket,
}

const K: Kind = Kind::Route;

pub fn compile_routes<'a>(
    routes: &[&'a Object<Route>],
    apis: &[ApiInfo<'_>],
    inputs: &Inputs,
    exports: &super::service_export::Exports<'_>,
    d: &mut Diagnostics,
) -> Vec<RouteInfo<'a>> {
    let namespace_labels: BTreeMap<String, BTreeMap<String, String>> =
        inputs.namespaces.iter().map(|n| (n.key().name, n.labels())).collect();
    routes.iter().map(|object| compile_route(object, apis, &namespace_labels, exports, d)).collect()
}

fn compile_route<'a>(
    object: &'a Object<Route>,
    apis: &[ApiInfo<'_>],
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    exports: &super::service_export::Exports<'_>,
    d: &mut Diagnostics,
) -> RouteInfo<'a> {
    let key = object.key();
    let spec = &object.object.spec;
    let mut servable = true;

    // Attachment.
    let api_ns = spec.api_ref.namespace.clone().unwrap_or_else(|| key.namespace.clone());
    let api_key = ir::ObjectKey::new(api_ns, spec.api_ref.name.clone());
    let api = apis.iter().position(|a| a.key == api_key);
    match api.and_then(|i| apis.get(i)) {
        None => {
            d.unresolved(
                K,
                &key,
                reason::NOT_FOUND,
                "spec.apiRef",
                format!("GatewayAPI {api_key} not found"),
            );
            servable = false;
        }
        Some(info) => {
            if !info.serve {
                d.warn(
                    K,
                    &key,
                    reason::NOT_PROGRAMMED,
                    "spec.apiRef",
                    format!(
                        "GatewayAPI {api_key} is not served (see its conditions), so neither is this Route"
                    ),
                );
                servable = false;
            }
            if !info.allows_namespace(&key.namespace, namespace_labels.get(&key.namespace)) {
                d.reject(
                    K,
                    &key,
                    reason::NOT_ALLOWED_BY_API,
                    "spec.apiRef",
                    format!(
                        "GatewayAPI {api_key} does not accept Routes from namespace {}: change its \
                         spec.allowedRoutes, or create the Route in {}",
                        key.namespace, api_key.namespace
                    ),
                );
            }
        }
    }

    let web_socket_api = api.and_then(|i| apis.get(i)).is_some_and(|a| a.web_socket.is_some());
    let socket = super::websocket::check_route(&object.object, &key, web_socket_api, d);

    // Match.
    let mut methods = Vec::new();
    let mut template = None;
    let mut headers = Vec::new();
    match &spec.r#match {
        _ if web_socket_api => {}
        None => {
            d.invalid(
                K,
                &key,
                "spec.match",
                "an HTTP route needs match.path (e.g. match: {path: /orders/{id}})",
            );
        }
        Some(m) => {
            methods = m.methods.iter().map(method_name).collect();
            methods.sort();
            methods.dedup();
            match PathTemplate::parse(&m.path) {
                Ok(t) => template = Some(t),
                Err(e) => d.invalid(K, &key, "spec.match.path", format!("{:?}: {e}", m.path)),
            }
            for (i, h) in m.headers.iter().enumerate() {
                let name = h.name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    d.invalid(
                        K,
                        &key,
                        format!("spec.match.headers[{i}].name"),
                        format!("{:?} is not a valid header name", h.name),
                    );
                } else if http::HeaderValue::from_str(&h.value).is_err() {
                    d.invalid(
                        K,
                        &key,
                        format!("spec.match.headers[{i}].value"),
                        "must be visible ASCII text",
                    );
                } else {
                    headers.push(ir::HeaderMatch { name, value: h.value.clone() });
                }
            }
            headers.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.value.cmp(&b.value)));
            if !m.query.is_empty() {
                d.warn(
                    K,
                    &key,
                    reason::NOT_YET_ENFORCED,
                    "spec.match.query",
                    "query matching is not yet enforced: the route matches regardless of the query string",
                );
            }
        }
    }

    // Integration.
    let mut target = None;
    let mut rewrite = None;
    let mut timeout = None;
    let mut retries = ir::Retries::default();
    match &spec.integration {
        // `$connect` / `$disconnect` without an integration: accept (reported by websocket.rs
        // for other route keys).
        None if web_socket_api => {
            target = Some(Target::Mock(super::websocket::accept_integration()));
        }
        None => {
            d.invalid(K, &key, "spec.integration", "set exactly one of service, serviceExport, url or mock")
        }
        Some(i) => {
            let set = [i.service.is_some(), i.service_export.is_some(), i.url.is_some(), i.mock.is_some()];
            if set.iter().filter(|s| **s).count() != 1 {
                d.invalid(
                    K,
                    &key,
                    "spec.integration",
                    "set exactly one of service, serviceExport, url or mock",
                );
            } else if let Some(s) = &i.service {
                if !(1..=65535).contains(&s.port) {
                    d.invalid(
                        K,
                        &key,
                        "spec.integration.service.port",
                        "must be a port number from 1 to 65535",
                    );
                } else if !s.name.contains("${") && !is_dns_label(&s.name) {
                    d.invalid(
                        K,
                        &key,
                        "spec.integration.service.name",
                        format!("{:?} is not a valid Service name", s.name),
                    );
                } else {
                    target = Some(Target::Service { name: s.name.clone(), port: s.port });
                }
            } else if let Some(export) = &i.service_export {
                target = super::service_export::route_target(&key, &api_key, export, exports, d);
            } else if let Some(url) = &i.url {
                // Check the shape now; stage variables are substituted per stage.
                let probe = url.replace("${", "x").replace('}', "");
                match super::backend::parse_url(&probe) {
                    Ok(_) => target = Some(Target::Url(url.clone())),
                    Err(message) => d.invalid(K, &key, "spec.integration.url", format!("{url:?} {message}")),
                }
            } else if let Some(mock) = &i.mock {
                target = compile_mock(mock, &key, d).map(Target::Mock);
            }
            if let Some(path) = &i.path {
                match check_rewrite(path, template.as_ref()) {
                    Ok(()) => rewrite = Some(path.clone()),
                    Err(message) => d.invalid(K, &key, "spec.integration.path", message),
                }
                if i.mock.is_some() {
                    d.warn(
                        K,
                        &key,
                        reason::INVALID,
                        "spec.integration.path",
                        "ignored: a mock integration has no upstream path",
                    );
                }
            }
            if let Some(t) = &i.timeout {
                match t.parse() {
                    Ok(t) if !t.is_zero() => timeout = Some(t.into()),
                    Ok(_) => d.invalid(K, &key, "spec.integration.timeout", "must be more than 0 (e.g. 5s)"),
                    Err(e) => d.invalid(K, &key, "spec.integration.timeout", e.to_string()),
                }
            }
            if let Some(r) = &i.retries {
                retries.attempts = r.attempts.min(10);
                let conditions: Vec<(String, &String)> =
                    r.on.iter()
                        .enumerate()
                        .map(|(n, v)| (format!("spec.integration.retries.on[{n}]"), v))
                        .chain(
                            r.retry_on
                                .iter()
                                .enumerate()
                                .map(|(n, v)| (format!("spec.integration.retries.retryOn[{n}]"), v)),
                        )
                        .collect();
                if conditions.is_empty() {
                    retries.on_connect_failure = true; // the documented default: [connect-failure]
                }
                for (field, on) in conditions {
                    match on.as_str() {
                        "connect-failure" => retries.on_connect_failure = true,
                        status => match status.parse::<u16>() {
                            Ok(code) if (100..=599).contains(&code) => retries.on_statuses.push(code),
                            _ => d.invalid(
                                K,
                                &key,
                                field,
                                format!("{status:?}: use connect-failure or a status code such as \"503\""),
                            ),
                        },
                    }
                }
                retries.on_statuses.sort_unstable();
                retries.on_statuses.dedup();
            }
        }
    }

    // Throttle, cache, validation and transforms: checked once here; resolved per stage.
    super::traffic::check_route(&object.object, &key, template.as_ref(), d);

    let servable = servable && !d.is_rejected(K, &key) && target.is_some();
    RouteInfo {
        key,
        object: &object.object,
        labels: object.labels(),
        methods,
        template,
        headers,
        target,
        rewrite,
        timeout,
        retries,
        servable,
        served: Cell::new(false),
        auth: ir::auth::RouteAuth::None,
        socket,
    }
}

fn method_name(m: &tollgate_crds::route::HttpMethod) -> String {
    serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn compile_mock(
    mock: &tollgate_crds::route::MockIntegration,
    key: &ir::ObjectKey,
    d: &mut Diagnostics,
) -> Option<ir::MockIntegration> {
    let status = mock.status.unwrap_or(tollgate_crds::defaults::MOCK_STATUS);
    let Ok(status) = u16::try_from(status)
        .map_err(|_| ())
        .and_then(|s| if (100..=599).contains(&s) { Ok(s) } else { Err(()) })
    else {
        d.invalid(
            K,
            key,
            "spec.integration.mock.status",
            format!("{status} is not an HTTP status (100–599)"),
        );
        return None;
    };
    let mut headers = BTreeMap::new();
    for (name, value) in &mock.headers {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            d.invalid(
                K,
                key,
                format!("spec.integration.mock.headers.{name}"),
                "is not a valid header name and value",
            );
            return None;
        }
        headers.insert(lower, value.clone());
    }
    Some(ir::MockIntegration { status, headers, body: mock.body.clone().unwrap_or_default() })
}

/// An upstream path: starts with `/`, and every `{name}` / `${request.path.name}` names a
/// parameter of the match path.
fn check_rewrite(path: &str, template: Option<&PathTemplate>) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with /"));
    }
    if path.contains(['?', '#']) {
        return Err(format!("{path:?} must not hold a query or fragment"));
    }
    let params: Vec<&str> = template.map(|t| t.params().collect()).unwrap_or_default();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("{path:?} has an unclosed {{"))?;
        let inner = &after[..close];
        let name = inner.strip_prefix("request.path.").unwrap_or(inner).trim_end_matches('+');
        if inner.contains("${") || (rest[..open].ends_with('$') && !inner.starts_with("request.path.")) {
            return Err(format!(
                "{path:?}: only path parameters ({{name}} or ${{request.path.name}}) may appear here"
            ));
        }
        if !params.contains(&name) {
            return Err(format!(
                "{path:?} uses {{{name}}}, which spec.match.path does not define (it defines: {})",
                if params.is_empty() { "none".to_string() } else { params.join(", ") }
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}
