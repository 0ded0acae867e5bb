//! Traffic governance: throttles, usage plans and their API keys, response cache, CORS, request
//! validation and transforms, compiled into the Snapshot's `traffic` fields.
//!
//! Route-level checks that do not depend on a stage (templates, JSON Schema, cache key
//! parameters) run once in phase 2 ([`check_route`]) and reject an invalid Route; what depends
//! on a stage (stage variables, the stage's cache, the plans covering it) is resolved per stage.

mod plans;

use tollgate_crds::{GatewayAPI, Route, Stage};
use tollgate_ir::traffic::template::{Template, Variable};
use tollgate_ir::{self as ir, PathTemplate, traffic as t};

use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::{Inputs, Kind};

pub use plans::{PlanInfo, compile_plans};

/// Default stage cache TTL (`StageCache.ttl`).
const DEFAULT_CACHE_TTL_MS: u64 = 300_000;
/// Default stage cache size (`StageCache.maxBytes`).
const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// A throttle from a CRD, checked; `None` (with a diagnostic) when invalid.
pub fn throttle(
    spec: &tollgate_crds::Throttle,
    id: String,
    kind: Kind,
    key: &ir::ObjectKey,
    field: &str,
    d: &mut Diagnostics,
) -> Option<t::Throttle> {
    if !(spec.rate.is_finite() && spec.rate > 0.0) {
        d.invalid(
            kind,
            key,
            format!("{field}.rate"),
            "must be a number greater than 0 (requests per second)",
        );
        return None;
    }
    if spec.rate > 1_000_000_000.0 || 1.0 / spec.rate > 86_400.0 * 365.0 {
        d.invalid(
            kind,
            key,
            format!("{field}.rate"),
            "must be between one request a year and 1e9 per second",
        );
        return None;
    }
    if spec.burst == 0 {
        d.invalid(kind, key, format!("{field}.burst"), "must be at least 1");
        return None;
    }
    Some(t::Throttle {
        id,
        rate: spec.rate,
        burst: spec.burst,
        scope: match spec.scope.unwrap_or_default() {
            tollgate_crds::ThrottleScope::Local => t::Scope::Local,
            tollgate_crds::ThrottleScope::Global => t::Scope::Global,
        },
        failure_policy: failure_policy(spec.failure_policy),
    })
}

/// The CRD failure policy in IR form (default `Open`).
pub fn failure_policy(policy: Option<tollgate_crds::FailurePolicy>) -> t::FailurePolicy {
    match policy.unwrap_or_default() {
        tollgate_crds::FailurePolicy::Open => t::FailurePolicy::Open,
        tollgate_crds::FailurePolicy::Closed => t::FailurePolicy::Closed,
    }
}

/// API-wide throttle and CORS.
pub fn api_traffic(key: &ir::ObjectKey, api: &GatewayAPI, d: &mut Diagnostics) -> t::ApiTraffic {
    let k = Kind::GatewayAPI;
    let throttle = api
        .spec
        .throttle
        .as_ref()
        .and_then(|s| throttle(s, format!("api:{key}"), k, key, "spec.throttle", d));
    let cors = api.spec.cors.as_ref().and_then(|c| cors(c, key, d));
    t::ApiTraffic { throttle, cors }
}

fn cors(
    spec: &tollgate_crds::gateway_api::Cors,
    key: &ir::ObjectKey,
    d: &mut Diagnostics,
) -> Option<t::Cors> {
    let k = Kind::GatewayAPI;
    let credentials = spec.allow_credentials.unwrap_or(false);
    let mut ok = true;
    for (i, origin) in spec.allow_origins.iter().enumerate() {
        let field = format!("spec.cors.allowOrigins[{i}]");
        if origin == "*" {
            if credentials {
                d.invalid(
                    k,
                    key,
                    field,
                    "allowCredentials: true cannot be combined with allowOrigins '*' (the Fetch standard \
                     forbids it): list the allowed origins explicitly",
                );
                ok = false;
            }
            continue;
        }
        let valid = origin
            .split_once("://")
            .filter(|(scheme, _)| *scheme == "http" || *scheme == "https")
            .is_some_and(|(_, host)| {
                let host = host.strip_prefix("*.").unwrap_or(host);
                !host.is_empty() && !host.contains(['/', '*', ' ', '?', '#'])
            });
        if !valid {
            d.invalid(
                k,
                key,
                field,
                format!("{origin:?} is not an origin: use https://host[:port], https://*.host or *"),
            );
            ok = false;
        }
    }
    for (i, header) in spec.allow_headers.iter().chain(&spec.expose_headers).enumerate() {
        if header != "*" && http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            d.invalid(k, key, format!("spec.cors headers[{i}]"), format!("{header:?} is not a header name"));
            ok = false;
        }
    }
    let max_age_secs = match &spec.max_age {
        None => None,
        Some(age) => match age.parse() {
            Ok(age) => Some(age.as_secs()),
            Err(e) => {
                d.invalid(k, key, "spec.cors.maxAge", e.to_string());
                ok = false;
                None
            }
        },
    };
    let lower = |v: &Vec<String>| v.iter().map(|h| h.to_ascii_lowercase()).collect::<Vec<_>>();
    ok.then(|| t::Cors {
        allow_origins: spec.allow_origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
        allow_methods: spec.allow_methods.clone(),
        allow_headers: lower(&spec.allow_headers),
        expose_headers: lower(&spec.expose_headers),
        max_age_secs,
        allow_credentials: credentials,
    })
}

/// Stage throttle, cache and the plans covering the stage.
pub fn stage_traffic(
    api: &ir::ObjectKey,
    stage: &Stage,
    routes: &[ir::Route],
    plans: &[PlanInfo],
    d: &mut Diagnostics,
) -> t::StageTraffic {
    let k = Kind::GatewayAPI;
    let at = format!("spec.stages[{}]", stage.name);
    let throttle = stage.throttle.as_ref().and_then(|s| {
        throttle(s, format!("stage:{api}/{}", stage.name), k, api, &format!("{at}.throttle"), d)
    });
    let cache = stage_cache(stage, api, d)
        .map(|(max_bytes, _)| t::StageCache { max_bytes, id: format!("{api}/{}", stage.name) });
    let plans = plans::plans_for_stage(api, &stage.name, routes, plans, d);
    t::StageTraffic { throttle, cache, plans }
}

/// `(maxBytes, default ttl)` of an enabled stage cache.
fn stage_cache(stage: &Stage, api: &ir::ObjectKey, d: &mut Diagnostics) -> Option<(u64, ir::Millis)> {
    let cache = stage.cache.as_ref().filter(|c| c.enabled.unwrap_or(false))?;
    let at = format!("spec.stages[{}].cache", stage.name);
    let max_bytes = match cache.max_bytes {
        None => DEFAULT_CACHE_BYTES,
        Some(n) => match u64::try_from(n) {
            Ok(n) if n > 0 => n,
            _ => {
                d.invalid(Kind::GatewayAPI, api, format!("{at}.maxBytes"), "must be more than 0 bytes");
                return None;
            }
        },
    };
    let ttl = match &cache.ttl {
        None => ir::Millis(DEFAULT_CACHE_TTL_MS),
        Some(ttl) => match ttl.parse() {
            Ok(ttl) if !ttl.is_zero() => ttl.into(),
            Ok(_) => {
                d.invalid(Kind::GatewayAPI, api, format!("{at}.ttl"), "must be more than 0 (e.g. 300s)");
                return None;
            }
            Err(e) => {
                d.invalid(Kind::GatewayAPI, api, format!("{at}.ttl"), e.to_string());
                return None;
            }
        },
    };
    Some((max_bytes, ttl))
}

/// Phase-2 checks of a Route's traffic fields; errors reject the Route.
pub fn check_route(route: &Route, key: &ir::ObjectKey, template: Option<&PathTemplate>, d: &mut Diagnostics) {
    let spec = &route.spec;
    let k = Kind::Route;
    let params: Vec<&str> = template.map(|t| t.params().collect()).unwrap_or_default();
    if let Some(s) = &spec.throttle {
        throttle(s, String::new(), k, key, "spec.throttle", d);
    }
    if let Some(cache) = &spec.cache {
        for (i, p) in cache.key_parameters.iter().enumerate() {
            if let Err(message) = key_parameter(p, &params) {
                d.invalid(k, key, format!("spec.cache.keyParameters[{i}]"), message);
            }
        }
        if let Some(ttl) = &cache.ttl
            && let Err(e) = ttl.parse()
        {
            d.invalid(k, key, "spec.cache.ttl", e.to_string());
        }
    }
    if let Some(v) = &spec.validation {
        for (i, h) in v.required_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).is_err() {
                d.invalid(
                    k,
                    key,
                    format!("spec.validation.requiredHeaders[{i}]"),
                    format!("{h:?} is not a header name"),
                );
            }
        }
        if let Some(schema) = &v.body_schema
            && let Err(e) = jsonschema::validator_for(schema)
        {
            d.invalid(k, key, "spec.validation.bodySchema", format!("not a valid JSON Schema: {e}"));
        }
    }
    let Some(transform) = &spec.transform else { return };
    let mut templates: Vec<(String, &String, bool)> = Vec::new();
    if let Some(req) = &transform.request {
        for (name, value) in &req.set_headers {
            check_header_name(name, &format!("spec.transform.request.setHeaders.{name}"), key, d);
            templates.push((format!("spec.transform.request.setHeaders.{name}"), value, false));
        }
        for (name, value) in &req.set_query {
            templates.push((format!("spec.transform.request.setQuery.{name}"), value, false));
        }
        if let Some(body) = &req.body {
            templates.push(("spec.transform.request.body".to_string(), body, true));
        }
    }
    if let Some(res) = &transform.response {
        for (name, value) in &res.set_headers {
            check_header_name(name, &format!("spec.transform.response.setHeaders.{name}"), key, d);
            templates.push((format!("spec.transform.response.setHeaders.{name}"), value, false));
        }
    }
    for (field, text, is_body) in templates {
        match Template::parse(text) {
            Err(e) => d.invalid(k, key, field, e.to_string()),
            Ok(parsed) => {
                for var in parsed.variables() {
                    match var {
                        Variable::PathParam(p) if !params.contains(&p.as_str()) => d.invalid(
                            k,
                            key,
                            &field,
                            format!(
                                "${{request.path.{p}}}: spec.match.path defines no parameter {p:?} (it defines: {})",
                                if params.is_empty() { "none".to_string() } else { params.join(", ") }
                            ),
                        ),
                        v if v.reads_body() && !is_body => d.invalid(
                            k,
                            key,
                            &field,
                            "${request.body...} may only appear in spec.transform.request.body",
                        ),
                        _ => {}
                    }
                }
                if is_body && let Err(e) = serde_json::from_str::<serde_json::Value>(&sample_json(&parsed)) {
                    d.invalid(
                        k,
                        key,
                        field,
                        format!(
                            "the body template is not JSON once its variables are filled ({e}); put text \
                             variables inside quotes: \"${{request.header.x}}\""
                        ),
                    );
                }
            }
        }
    }
}

fn check_header_name(name: &str, field: &str, key: &ir::ObjectKey, d: &mut Diagnostics) {
    if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
        d.invalid(Kind::Route, key, field, format!("{name:?} is not a header name"));
    }
}

/// The body template with text variables as `0` and body variables as `null`.
fn sample_json(template: &Template) -> String {
    use ir::traffic::template::Part;
    template
        .parts
        .iter()
        .map(|p| match p {
            Part::Literal(text) => text.as_str(),
            Part::Var(v) if v.reads_body() => "null",
            Part::Var(_) => "0",
        })
        .collect()
}

fn key_parameter(text: &str, params: &[&str]) -> Result<t::KeyParameter, String> {
    let (kind, name) = text
        .split_once('.')
        .filter(|(_, n)| !n.is_empty())
        .ok_or_else(|| format!("{text:?}: use query.NAME, header.NAME or path.NAME"))?;
    match kind {
        "query" => Ok(t::KeyParameter::Query(name.to_string())),
        "header" => http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map(|_| t::KeyParameter::Header(name.to_ascii_lowercase()))
            .map_err(|_| format!("{name:?} is not a header name")),
        "path" if params.contains(&name) => Ok(t::KeyParameter::Path(name.to_string())),
        "path" => Err(format!("spec.match.path defines no parameter {name:?}")),
        _ => Err(format!("{text:?}: use query.NAME, header.NAME or path.NAME")),
    }
}

/// A Route's traffic settings on one stage; `None` (with a diagnostic) when a stage variable
/// its templates use is missing on this stage.
pub fn route_traffic(
    route: &Route,
    key: &ir::ObjectKey,
    methods: &[String],
    template: Option<&PathTemplate>,
    stage: &Stage,
    api: &ir::ObjectKey,
    d: &mut Diagnostics,
) -> Option<t::RouteTraffic> {
    let spec = &route.spec;
    let params: Vec<&str> = template.map(|t| t.params().collect()).unwrap_or_default();
    let mut quiet = Diagnostics::default(); // already reported in phase 2
    let throttle = spec.throttle.as_ref().and_then(|s| {
        throttle(
            s,
            format!("route:{api}/{}/{key}", stage.name),
            Kind::Route,
            key,
            "spec.throttle",
            &mut quiet,
        )
    });
    let cache = route_cache(route, methods, &params, stage, api, &mut quiet);
    let validation = spec.validation.as_ref().map(|v| t::Validation {
        required_query: v.required_query.clone(),
        required_headers: v.required_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
        body_schema: v.body_schema.clone(),
    });
    let transform = match &spec.transform {
        None => None,
        Some(tr) => Some(transform(tr, key, stage, d)?),
    };
    Some(t::RouteTraffic {
        api_key_required: spec.api_key_required.unwrap_or(false),
        throttle,
        cache,
        validation,
        transform,
    })
}

fn route_cache(
    route: &Route,
    methods: &[String],
    params: &[&str],
    stage: &Stage,
    api: &ir::ObjectKey,
    d: &mut Diagnostics,
) -> Option<t::RouteCache> {
    let (_, stage_ttl) = stage_cache(stage, api, d)?;
    let spec = route.spec.cache.as_ref();
    let cacheable: Vec<String> = if methods.is_empty() {
        vec!["GET".to_string(), "HEAD".to_string()]
    } else {
        methods.iter().filter(|m| *m == "GET" || *m == "HEAD").cloned().collect()
    };
    let methods = match spec.and_then(|c| c.enabled) {
        Some(false) => return None,
        // Explicitly enabled: every method of the route (a POST lookup is the user's choice).
        Some(true) if !methods.is_empty() => methods.to_vec(),
        _ => cacheable,
    };
    if methods.is_empty() {
        return None;
    }
    let ttl = spec
        .and_then(|c| c.ttl.as_ref())
        .and_then(|t| t.parse().ok())
        .map(ir::Millis::from)
        .unwrap_or(stage_ttl);
    let key_parameters = spec
        .map(|c| c.key_parameters.iter().filter_map(|p| key_parameter(p, params).ok()).collect())
        .unwrap_or_default();
    Some(t::RouteCache { ttl, methods, key_parameters, shared: spec.and_then(|c| c.shared).unwrap_or(false) })
}

fn transform(
    spec: &tollgate_crds::route::Transform,
    key: &ir::ObjectKey,
    stage: &Stage,
    d: &mut Diagnostics,
) -> Option<t::Transform> {
    let mut out = t::Transform::default();
    let mut missing = Vec::new();
    let mut check = |text: &String| {
        if let Ok(parsed) = Template::parse(text) {
            for var in parsed.variables() {
                if let Variable::StageVariable(name) = var
                    && !stage.variables.contains_key(name)
                {
                    missing.push(name.clone());
                }
            }
        }
        text.clone()
    };
    if let Some(req) = &spec.request {
        out.request_set_headers =
            req.set_headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), check(v))).collect();
        out.request_remove_headers = req.remove_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        out.request_set_query = req.set_query.iter().map(|(n, v)| (n.clone(), check(v))).collect();
        out.request_remove_query = req.remove_query.clone();
        out.request_body = req.body.as_ref().map(&mut check);
    }
    if let Some(res) = &spec.response {
        out.response_set_headers =
            res.set_headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), check(v))).collect();
        out.response_remove_headers = res.remove_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
    }
    if missing.is_empty() {
        return Some(out);
    }
    missing.sort();
    missing.dedup();
    d.unresolved(
        Kind::Route,
        key,
        reason::NOT_FOUND,
        "spec.transform",
        format!(
            "stage {} has no variable {}: add it to the stage's variables in the GatewayAPI; the Route is not \
             served on this stage",
            stage.name,
            missing.join(", ")
        ),
    );
    None
}

/// Per-object context the traffic compile needs from every input (plans and their keys).
pub struct TrafficInputs {
    /// Every plan that compiled, in precedence order.
    pub plans: Vec<PlanInfo>,
}

impl TrafficInputs {
    /// Compiles the UsagePlans and their API keys.
    pub fn new(inputs: &Inputs, d: &mut Diagnostics) -> TrafficInputs {
        TrafficInputs { plans: compile_plans(inputs, d) }
    }
}

/// Method filter for route-throttle keys: `GET /orders/{id}` → (`GET`, `/orders/{id}`).
pub fn split_route_key(text: &str) -> Option<(String, String)> {
    let (method, path) = text.trim().split_once(' ')?;
    let method = method.trim().to_ascii_uppercase();
    let path = PathTemplate::parse(path.trim()).ok()?.to_string();
    let valid = method == "*" || (!method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()));
    valid.then_some((method, path))
}
