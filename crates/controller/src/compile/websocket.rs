//! WebSocket APIs: the API's route selection expression, limits and @connections credentials;
//! each Route's route key (required, unique per stage); a stage's `$connect` when none is
//! declared; passthrough timeouts of HTTP Routes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use tollgate_crds::gateway_api::WebSocketLimits;
use tollgate_crds::{GatewayAPI, Protocol, Route, Stage, defaults};
use tollgate_ir::websocket::{self as irws, CONNECT, DEFAULT, DISCONNECT};
use tollgate_ir::{self as ir, auth as ira};

use super::api::ApiInfo;
use super::auth::ACCESS_KEY_SECRET_TYPE;
use super::route::RouteInfo;
use super::selector;
use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::Kind;

const SELECTION_PREFIX: &str = "$request.body.";

/// Phase 1 for WebSocket APIs: `None` for HTTP APIs (whose WebSocket-only fields are reported as
/// ignored) and for WebSocket APIs whose settings are invalid (reported; the API is not served).
pub fn compile_api(
    api: &GatewayAPI,
    key: &ir::ObjectKey,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Option<irws::WebSocketApi> {
    let spec = &api.spec;
    let k = Kind::GatewayAPI;
    if spec.protocol.unwrap_or_default() != Protocol::WebSocket {
        for (field, set) in [
            ("spec.routeSelectionExpression", spec.route_selection_expression.is_some()),
            ("spec.connectionsApi", spec.connections_api.is_some()),
            ("spec.webSocket", spec.web_socket.is_some()),
        ] {
            if set {
                d.warn(
                    k,
                    key,
                    reason::INVALID,
                    field,
                    "ignored: applies to APIs with protocol: WebSocket only",
                );
            }
        }
        return None;
    }
    let before = d.is_rejected(k, key);
    let expression =
        spec.route_selection_expression.as_deref().unwrap_or(defaults::ROUTE_SELECTION_EXPRESSION);
    let route_selection = match parse_selection(expression) {
        Ok(path) => path,
        Err(message) => {
            d.invalid(k, key, "spec.routeSelectionExpression", message);
            Vec::new()
        }
    };
    let limits = compile_limits(spec.web_socket.as_ref(), key, d);
    let connections_keys = match &spec.connections_api {
        None => Vec::new(),
        Some(c) => access_keys(&c.credential_selector, key, secrets, d),
    };
    if d.is_rejected(k, key) && !before {
        return None;
    }
    Some(irws::WebSocketApi { route_selection, limits, connections_keys })
}

/// `$request.body.a.b` → `["a", "b"]`.
fn parse_selection(expression: &str) -> Result<Vec<String>, String> {
    let Some(path) = expression.strip_prefix(SELECTION_PREFIX) else {
        return Err(format!(
            "{expression:?} is not supported: use $request.body.<member>[.<member>...], e.g. $request.body.action"
        ));
    };
    let members: Vec<String> = path.split('.').map(str::to_string).collect();
    let valid = |m: &String| {
        !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'$'))
    };
    if members.iter().all(valid) {
        Ok(members)
    } else {
        Err(format!(
            "{expression:?}: each member after $request.body. must be letters, digits, _, - or $, separated by dots"
        ))
    }
}

fn compile_limits(
    spec: Option<&WebSocketLimits>,
    key: &ir::ObjectKey,
    d: &mut Diagnostics,
) -> irws::WebSocketLimits {
    let k = Kind::GatewayAPI;
    let mut limits = irws::WebSocketLimits::default();
    let Some(spec) = spec else { return limits };
    let bytes = |d: &mut Diagnostics, value: Option<i64>, field: &str, default: i64| -> u64 {
        match value {
            None => u64::try_from(default).unwrap_or(u64::MAX),
            Some(v) if v >= 125 => u64::try_from(v).unwrap_or(u64::MAX),
            Some(v) => {
                d.invalid(k, key, field, format!("{v} is too small: use at least 125 bytes"));
                u64::try_from(default).unwrap_or(u64::MAX)
            }
        }
    };
    limits.max_frame_bytes =
        bytes(d, spec.max_frame_bytes, "spec.webSocket.maxFrameBytes", defaults::WEBSOCKET_MAX_FRAME_BYTES);
    limits.max_message_bytes = bytes(
        d,
        spec.max_message_bytes,
        "spec.webSocket.maxMessageBytes",
        defaults::WEBSOCKET_MAX_MESSAGE_BYTES,
    );
    if limits.max_frame_bytes > limits.max_message_bytes {
        d.invalid(
            k,
            key,
            "spec.webSocket.maxFrameBytes",
            format!(
                "{} is larger than maxMessageBytes ({}): a frame is part of a message; lower it or raise \
                 maxMessageBytes",
                limits.max_frame_bytes, limits.max_message_bytes
            ),
        );
    }
    if let Some(t) = duration(d, k, key, spec.idle_timeout.as_ref(), "spec.webSocket.idleTimeout") {
        limits.idle_timeout = t;
    }
    if let Some(t) =
        duration(d, k, key, spec.max_connection_duration.as_ref(), "spec.webSocket.maxConnectionDuration")
    {
        limits.max_connection_duration = t;
    }
    limits
}

fn duration(
    d: &mut Diagnostics,
    kind: Kind,
    key: &ir::ObjectKey,
    value: Option<&tollgate_crds::common::Duration>,
    field: &str,
) -> Option<ir::Millis> {
    match value?.parse() {
        Ok(t) if !t.is_zero() => Some(t.into()),
        Ok(_) => {
            d.invalid(kind, key, field, "must be more than 0 (e.g. 10m)");
            None
        }
        Err(e) => {
            d.invalid(kind, key, field, e.to_string());
            None
        }
    }
}

/// Access keys (`tollgate.dev/access-key` Secrets of the API's namespace) the selector picks.
fn access_keys(
    sel: &tollgate_crds::LabelSelector,
    key: &ir::ObjectKey,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Vec<ira::AccessKey> {
    let k = Kind::GatewayAPI;
    let field = "spec.connectionsApi.credentialSelector";
    if let Err(message) = selector::validate(sel) {
        d.invalid(k, key, field, message);
        return Vec::new();
    }
    let keys = super::auth::select_access_keys(k, key, sel, field, secrets, d);
    if keys.is_empty() {
        d.warn(
            k,
            key,
            reason::NOT_FOUND,
            field,
            format!(
                "no Secret of type {ACCESS_KEY_SECRET_TYPE} in namespace {} matches: every @connections call \
                 is refused",
                key.namespace
            ),
        );
    }
    keys
}

/// What phase 2 learns about a Route's WebSocket side.
#[derive(Default)]
pub struct RouteSocket {
    /// WebSocket APIs: the route key (`None` when missing: the Route is invalid).
    pub route_key: Option<String>,
    /// HTTP APIs: passthrough timeouts the Route sets.
    pub passthrough: Option<irws::Passthrough>,
}

/// Phase 2 for a Route: the route key on WebSocket APIs (required; `match` is ignored there), the
/// passthrough timeouts on HTTP APIs (where a route key is ignored).
pub fn check_route(
    route: &Route,
    key: &ir::ObjectKey,
    web_socket_api: bool,
    d: &mut Diagnostics,
) -> RouteSocket {
    let spec = &route.spec;
    let k = Kind::Route;
    let mut out = RouteSocket::default();
    if !web_socket_api {
        if spec.route_key.is_some() {
            d.warn(
                k,
                key,
                reason::INVALID,
                "spec.routeKey",
                "ignored: route keys apply to WebSocket APIs only",
            );
        }
        if let Some(ws) = spec.integration.as_ref().and_then(|i| i.web_socket.as_ref()) {
            let mut p = irws::Passthrough::default();
            let at = "spec.integration.webSocket";
            if let Some(t) = duration(d, k, key, ws.idle_timeout.as_ref(), &format!("{at}.idleTimeout")) {
                p.idle_timeout = t;
            }
            let field = format!("{at}.maxConnectionDuration");
            if let Some(t) = duration(d, k, key, ws.max_connection_duration.as_ref(), &field) {
                p.max_connection_duration = t;
            }
            out.passthrough = Some(p);
        }
        return out;
    }
    match spec.route_key.as_deref() {
        None => d.invalid(
            k,
            key,
            "spec.routeKey",
            "a Route of a WebSocket API needs a routeKey: $connect, $disconnect, $default or a custom key",
        ),
        Some(rk) if rk.is_empty() || (rk.starts_with('$') && ![CONNECT, DISCONNECT, DEFAULT].contains(&rk)) => {
            d.invalid(
                k,
                key,
                "spec.routeKey",
                format!("{rk:?}: keys starting with $ are reserved; use $connect, $disconnect, $default or a key without $"),
            )
        }
        Some(rk) => out.route_key = Some(rk.to_string()),
    }
    if spec.r#match.is_some() {
        d.warn(
            k,
            key,
            reason::INVALID,
            "spec.match",
            "ignored on WebSocket APIs: messages are routed by routeKey",
        );
    }
    if spec.integration.as_ref().is_some_and(|i| i.web_socket.is_some()) {
        d.warn(
            k,
            key,
            reason::INVALID,
            "spec.integration.webSocket",
            "ignored on WebSocket APIs: set the API's spec.webSocket limits instead",
        );
    }
    let on_connect = out.route_key.as_deref() == Some(CONNECT);
    if spec.authorization.is_some() && !on_connect && out.route_key.is_some() {
        d.warn(
            k,
            key,
            reason::INVALID,
            "spec.authorization",
            "ignored: on WebSocket APIs authorization runs once, on the $connect Route; move it there",
        );
    }
    if spec.integration.is_none()
        && out.route_key.is_some()
        && !on_connect
        && out.route_key.as_deref() != Some(DISCONNECT)
    {
        d.invalid(
            k,
            key,
            "spec.integration",
            "a message Route needs an integration (service, url or mock); only $connect and $disconnect may omit it",
        );
    }
    out
}

/// The integration of a `$connect` / `$disconnect` Route without one: accept (200, no body).
pub fn accept_integration() -> ir::MockIntegration {
    ir::MockIntegration { status: 200, headers: BTreeMap::new(), body: String::new() }
}

/// Phase 3 for a Route of a WebSocket API on one stage: its route key must be free on the stage
/// (the older Route keeps it), then its integration and traffic policy resolve.
pub fn stage_route(
    route: &RouteInfo<'_>,
    route_key: &str,
    stage: &Stage,
    api: &ApiInfo<'_>,
    served: &[ir::Route],
    integrate: impl FnOnce(&mut Diagnostics) -> Option<ir::Integration>,
    d: &mut Diagnostics,
) -> Option<ir::Route> {
    if let Some(owner) = served.iter().find(|r| r.route_key.as_deref() == Some(route_key)).map(|r| &r.key) {
        d.reject(
            Kind::Route,
            &route.key,
            reason::CONFLICT,
            "spec.routeKey",
            format!(
                "route key {route_key} is already served on stage {} by Route {owner}, which is older: choose \
                 another routeKey",
                stage.name
            ),
        );
        return None;
    }
    let integration = integrate(d)?;
    let traffic = super::traffic::route_traffic(route.object, &route.key, &[], None, stage, &api.key, d)?;
    Some(ir::Route {
        key: route.key.clone(),
        methods: Vec::new(),
        path: "/".to_string(),
        headers: Vec::new(),
        integration,
        timeout: route.timeout.unwrap_or(api.limits.timeout),
        retries: route.retries.clone(),
        traffic,
        auth: route.auth.clone(),
        route_key: Some(route_key.to_string()),
        web_socket: None,
    })
}

/// Phase 3 for WebSocket APIs: a stage that serves no `$connect` Route gets one that accepts
/// every connection — unless the API has a defaultAuthorizer, which only a declared `$connect`
/// Route runs: then connections are refused (fail closed) and the API says why.
pub fn finish_stage(
    api: &GatewayAPI,
    key: &ir::ObjectKey,
    stage: &Stage,
    served: &mut Vec<ir::Route>,
    timeout: ir::Millis,
    d: &mut Diagnostics,
) {
    if served.iter().any(|r| r.route_key.as_deref() == Some(CONNECT)) {
        return;
    }
    let auth = if api.spec.default_authorizer.is_some() {
        d.warn(
            Kind::GatewayAPI,
            key,
            reason::INVALID,
            "spec.defaultAuthorizer",
            format!(
                "stage {} has no $connect Route to run the defaultAuthorizer, so every connection is refused: add a \
                 Route with routeKey: $connect (an integration is optional)",
                stage.name
            ),
        );
        ira::RouteAuth::Deny
    } else {
        ira::RouteAuth::None
    };
    served.push(ir::Route {
        key: key.clone(),
        methods: Vec::new(),
        path: "/".to_string(),
        headers: Vec::new(),
        integration: ir::Integration::Mock(accept_integration()),
        timeout,
        retries: ir::Retries::default(),
        traffic: Default::default(),
        auth,
        route_key: Some(CONNECT.to_string()),
        web_socket: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_expression_is_a_json_path_into_the_body() {
        assert_eq!(parse_selection("$request.body.action"), Ok(vec!["action".to_string()]));
        assert_eq!(
            parse_selection("$request.body.meta.type"),
            Ok(vec!["meta".to_string(), "type".to_string()])
        );
        assert!(parse_selection("$request.header.x").is_err());
        assert!(parse_selection("$request.body.").is_err());
        assert!(parse_selection("$request.body.a..b").is_err());
    }
}
