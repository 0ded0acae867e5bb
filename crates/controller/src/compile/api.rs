//! Phase 1: GatewayAPIs — field checks, hostname claims, stages, TLS.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use tollgate_crds::{GatewayAPI, Protocol, RouteNamespaces, Stage};
use tollgate_ir as ir;

use super::{selector, tls};
use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::{Kind, Object};

/// A GatewayAPI after phase 1.
pub struct ApiInfo<'a> {
    pub key: ir::ObjectKey,
    pub generation: i64,
    pub object: &'a GatewayAPI,
    pub fleet: String,
    pub hostnames: Vec<String>,
    pub limits: ir::Limits,
    pub certificates: Vec<ir::Certificate>,
    /// Accepted, and safe to serve with what this version enforces.
    pub serve: bool,
    /// Resource policy and client validation (authorizers are added once routes resolve).
    pub auth: tollgate_ir::auth::ApiAuth,
    /// Set on WebSocket APIs.
    pub web_socket: Option<ir::websocket::WebSocketApi>,
}

pub fn compile_apis<'a>(
    apis: &[&'a Object<GatewayAPI>],
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Vec<ApiInfo<'a>> {
    // Hostname (or "" for "any host") → the API that claimed it first.
    let mut claimed: BTreeMap<String, ir::ObjectKey> = BTreeMap::new();
    let mut out = Vec::new();
    for object in apis {
        let key = object.key();
        let api = &object.object;
        let spec = &api.spec;
        let k = Kind::GatewayAPI;
        let mut serve = true;

        // WebSocket APIs: route selection, limits, @connections credentials.
        let web_socket = super::websocket::compile_api(api, &key, secrets, d);
        if spec.protocol == Some(Protocol::WebSocket) && web_socket.is_none() {
            serve = false;
        }
        let hostnames = check_hostnames(&spec.hostnames, "spec.hostnames", &key, d);
        check_stages(&spec.stages, &key, d);

        // Resource policy and mTLS; when they cannot be compiled the API is not served (fail closed).
        let auth = super::auth::compile_api_auth(spec, &key, secrets, d);
        if auth.is_none() {
            serve = false;
        }

        if let Some(allowed) = &spec.allowed_routes {
            match (allowed.namespaces.unwrap_or_default(), &allowed.selector) {
                (RouteNamespaces::Selector, None) => d.invalid(
                    k,
                    &key,
                    "spec.allowedRoutes.selector",
                    "namespaces: Selector needs a selector: add allowedRoutes.selector",
                ),
                (_, Some(sel)) => {
                    if let Err(message) = selector::validate(sel) {
                        d.invalid(k, &key, "spec.allowedRoutes.selector", message);
                    }
                }
                _ => {}
            }
        }

        let limits = compile_limits(api, &key, d);

        // Hostname claims: the API's own and its stages'; "" stands for "any host".
        let mut claims: BTreeSet<String> = hostnames.iter().cloned().collect();
        for stage in &spec.stages {
            claims.extend(stage.hostnames.iter().map(|h| h.to_ascii_lowercase()));
        }
        if hostnames.is_empty()
            && (spec.stages.is_empty() || spec.stages.iter().any(|s| s.hostnames.is_empty()))
        {
            claims.insert(String::new());
        }
        if !d.is_rejected(k, &key) {
            for claim in &claims {
                if let Some(owner) = claimed.get(claim) {
                    let what = if claim.is_empty() {
                        "any host (no hostnames)".to_string()
                    } else {
                        format!("hostname {claim}")
                    };
                    d.reject(
                        k,
                        &key,
                        reason::CONFLICT,
                        "spec.hostnames",
                        format!("{what} is already served by GatewayAPI {owner}, which is older: choose another hostname"),
                    );
                }
            }
        }
        let accepted = !d.is_rejected(k, &key);
        if accepted {
            for claim in claims {
                claimed.entry(claim).or_insert_with(|| key.clone());
            }
        }

        let mut cert_hosts: BTreeSet<String> = hostnames.iter().cloned().collect();
        for stage in &spec.stages {
            cert_hosts.extend(stage.hostnames.iter().map(|h| h.to_ascii_lowercase()));
        }
        let certificates = match &spec.tls {
            Some(t) => tls::resolve_certificates(&key, &t.certificate_refs, &cert_hosts, secrets, d),
            None => Vec::new(),
        };
        if !certificates.is_empty() && cert_hosts.is_empty() {
            // Certificates are chosen by SNI among the API's hostnames: with none, a client that
            // sends SNI (every browser and curl with a name) gets a TLS alert.
            d.warn(
                k,
                &key,
                reason::INVALID,
                "spec.tls.certificateRefs",
                "the API has no hostnames, so no TLS server name selects these certificates: add spec.hostnames \
                 (or stage hostnames) naming what the certificates are for",
            );
        }

        out.push(ApiInfo {
            key,
            generation: object.generation(),
            object: api,
            fleet: spec
                .fleet
                .clone()
                .unwrap_or_else(|| tollgate_crds::gateway_api::DEFAULT_FLEET.to_string()),
            hostnames,
            limits,
            certificates,
            serve: serve && accepted,
            auth: auth.unwrap_or_default(),
            web_socket,
        });
    }
    out
}

impl ApiInfo<'_> {
    /// Whether a Route in `namespace` (with namespace labels `labels`) may attach.
    pub fn allows_namespace(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        admits_namespace(self.object, &self.key.namespace, namespace, labels)
    }
}

/// Whether `api` (in `api_namespace`) admits objects from `namespace` per its `allowedRoutes`
/// (Routes attaching, UsagePlans covering it).
pub fn admits_namespace(
    api: &GatewayAPI,
    api_namespace: &str,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let allowed = api.spec.allowed_routes.as_ref();
    match allowed.and_then(|a| a.namespaces).unwrap_or_default() {
        RouteNamespaces::Same => namespace == api_namespace,
        RouteNamespaces::All => true,
        RouteNamespaces::Selector => match (allowed.and_then(|a| a.selector.as_ref()), labels) {
            (Some(sel), Some(labels)) => selector::matches(sel, labels),
            (Some(sel), None) => selector::matches(sel, &BTreeMap::new()),
            (None, _) => false,
        },
    }
}

fn compile_limits(api: &GatewayAPI, key: &ir::ObjectKey, d: &mut Diagnostics) -> ir::Limits {
    let mut limits = ir::Limits::default();
    let Some(spec) = &api.spec.limits else {
        return limits;
    };
    if let Some(max) = spec.max_request_body_bytes {
        match u64::try_from(max) {
            Ok(max) => limits.max_request_body_bytes = max,
            Err(_) => d.invalid(
                Kind::GatewayAPI,
                key,
                "spec.limits.maxRequestBodyBytes",
                "must be zero or more bytes",
            ),
        }
    }
    if let Some(timeout) = &spec.timeout {
        match timeout.parse() {
            Ok(t) if !t.is_zero() => limits.timeout = t.into(),
            Ok(_) => {
                d.invalid(Kind::GatewayAPI, key, "spec.limits.timeout", "must be more than 0 (e.g. 29s)")
            }
            Err(e) => d.invalid(Kind::GatewayAPI, key, "spec.limits.timeout", e.to_string()),
        }
    }
    limits
}

/// Lower-cases and checks hostnames; reports invalid and duplicate ones.
pub fn check_hostnames(
    names: &[String],
    field: &str,
    key: &ir::ObjectKey,
    d: &mut Diagnostics,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        if let Err(message) = valid_hostname(&lower) {
            d.invalid(Kind::GatewayAPI, key, format!("{field}[{i}]"), format!("{name:?} {message}"));
            continue;
        }
        if out.contains(&lower) {
            d.invalid(Kind::GatewayAPI, key, format!("{field}[{i}]"), format!("{name:?} is listed twice"));
            continue;
        }
        out.push(lower);
    }
    out.sort();
    out
}

fn valid_hostname(name: &str) -> Result<(), &'static str> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    if bare.is_empty() || name.len() > 253 {
        return Err("is not a valid hostname");
    }
    if bare.contains('*') {
        return Err("may use a wildcard only as the whole first label (*.example.com)");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if bare.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("is not a valid DNS name (no ports, no IP literals with colons)")
    }
}

fn check_stages(stages: &[Stage], key: &ir::ObjectKey, d: &mut Diagnostics) {
    let k = Kind::GatewayAPI;
    let mut names = BTreeSet::new();
    let mut selectors = BTreeSet::new();
    for (i, stage) in stages.iter().enumerate() {
        let at = format!("spec.stages[{i}]");
        if !names.insert(stage.name.clone()) {
            d.invalid(k, key, format!("{at}.name"), format!("stage {} is declared twice", stage.name));
        }
        let hosts = check_hostnames(&stage.hostnames, &format!("{at}.hostnames"), key, d);
        if let Some(base) = &stage.base_path
            && let Err(message) = check_base_path(base)
        {
            d.invalid(k, key, format!("{at}.basePath"), message);
        }
        let base = stage.base_path.clone().unwrap_or_default().trim_end_matches('/').to_string();
        if !selectors.insert((hosts, base.clone())) {
            d.invalid(
                k,
                key,
                at.clone(),
                format!(
                    "stage {} is reached by the same hostnames and basePath {:?} as an earlier stage: give it its own \
                     hostnames or basePath",
                    stage.name,
                    if base.is_empty() { "/" } else { base.as_str() }
                ),
            );
        }
        if let Some(sel) = &stage.route_selector
            && let Err(message) = selector::validate(sel)
        {
            d.invalid(k, key, format!("{at}.routeSelector"), message);
        }
        super::canary::check(stage, &at, key, d);
        for name in stage.variables.keys() {
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || name.is_empty() {
                d.invalid(
                    k,
                    key,
                    format!("{at}.variables.{name}"),
                    "variable names may contain only letters, digits and _",
                );
            }
        }
    }
}

/// `/dev`, `/v1/beta`: starts with `/`, no empty, `.` or `..` segments, no `{`.
fn check_base_path(base: &str) -> Result<(), String> {
    if !base.starts_with('/') {
        return Err(format!("{base:?} must start with /"));
    }
    let trimmed = base.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(());
    }
    for segment in trimmed[1..].split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!("{base:?} has an empty, . or .. segment"));
        }
        if segment.contains(['{', '}', '?', '#', '%']) {
            return Err(format!("{base:?} must be literal text (no templates, query, fragment or escapes)"));
        }
    }
    Ok(())
}
