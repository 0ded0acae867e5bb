//! Authorization at the edge: resource policy and mTLS (pipeline phase 5), authorizers — JWT,
//! external service, SigV4 — (phase 8), with the caller's identity written into the request
//! context for later phases, templates and the access log.
//!
//! Runtime state that is expensive to rebuild (JWKS caches, verified-token caches, external
//! answers) lives in one [`AuthorizerRuntime`] per distinct authorizer configuration, shared by
//! every route and API that uses it and carried over configuration swaps that did not change it
//! (a process-wide registry of weak references keyed by the configuration's content).

pub mod external;
pub(crate) mod fetch;
pub mod jwks;
pub mod jwt;
pub mod metrics;
pub mod mtls;
pub mod policy;
pub mod sigv4;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use prometheus::{Histogram, HistogramVec, IntCounterVec};
use serde_json::{Map, Value};
use tollgate_ir::{self as ir, auth as ira};

use crate::context::RequestContext;
use crate::error::ProxyError;
use crate::gateway::ConnInfo;
use crate::metrics::Metrics;
use crate::runtime::RoutePolicy;
use crate::upstream::RequestBody;

pub use metrics::AuthMetrics;

/// Why authorization refused a request. Messages are short and never echo credentials.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuthError {
    /// No or invalid credentials: 401.
    #[error("Unauthorized: {detail}")]
    Unauthenticated {
        /// Bounded reason for metrics and logs.
        reason: &'static str,
        /// What was wrong.
        detail: &'static str,
        /// `WWW-Authenticate` challenge, if any.
        challenge: Option<&'static str>,
    },
    /// Valid caller, not allowed: 403.
    #[error("Forbidden: {detail}")]
    Forbidden {
        /// Bounded reason.
        reason: &'static str,
        /// What was wrong.
        detail: &'static str,
        /// Who was refused, when the caller was identified (for the access log).
        principal: Option<String>,
    },
    /// The authorizer failed or answered nonsense: 500, fail closed.
    #[error("Internal Server Error: the authorizer failed")]
    AuthorizerFailed {
        /// Bounded reason.
        reason: &'static str,
    },
    /// The authorizer (or the identity provider) is unavailable: 503, fail closed.
    #[error("Service Unavailable: {detail}")]
    Unavailable {
        /// Bounded reason.
        reason: &'static str,
        /// What was unavailable.
        detail: &'static str,
    },
}

impl AuthError {
    /// 401 with a Bearer challenge.
    pub fn unauthenticated(reason: &'static str, detail: &'static str) -> AuthError {
        let challenge = if reason == "missing_token" {
            "Bearer realm=\"tollgate\""
        } else {
            "Bearer realm=\"tollgate\", error=\"invalid_token\""
        };
        AuthError::Unauthenticated { reason, detail, challenge: Some(challenge) }
    }

    /// 401 without a challenge.
    pub fn unauthenticated_plain(reason: &'static str, detail: &'static str) -> AuthError {
        AuthError::Unauthenticated { reason, detail, challenge: None }
    }

    /// 403.
    pub fn forbidden(reason: &'static str, detail: &'static str) -> AuthError {
        AuthError::Forbidden { reason, detail, principal: None }
    }

    /// 403 for an identified caller.
    pub fn forbidden_caller(
        reason: &'static str,
        detail: &'static str,
        principal: Option<String>,
    ) -> AuthError {
        AuthError::Forbidden { reason, detail, principal }
    }

    /// 500.
    pub fn authorizer_failed(reason: &'static str) -> AuthError {
        AuthError::AuthorizerFailed { reason }
    }

    /// 503.
    pub fn unavailable(reason: &'static str, detail: &'static str) -> AuthError {
        AuthError::Unavailable { reason, detail }
    }

    /// The HTTP status.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::Unauthenticated { .. } => http::StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. } => http::StatusCode::FORBIDDEN,
            AuthError::AuthorizerFailed { .. } => http::StatusCode::INTERNAL_SERVER_ERROR,
            AuthError::Unavailable { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The bounded reason (metric label, access-log `error`).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated { reason, .. }
            | AuthError::Forbidden { reason, .. }
            | AuthError::AuthorizerFailed { reason }
            | AuthError::Unavailable { reason, .. } => reason,
        }
    }

    /// The `WWW-Authenticate` header to send, if any.
    pub fn www_authenticate(&self) -> Option<HeaderValue> {
        match self {
            AuthError::Unauthenticated { challenge: Some(c), .. } => Some(HeaderValue::from_static(c)),
            AuthError::Forbidden { reason: "insufficient_scope", .. } => {
                Some(HeaderValue::from_static("Bearer realm=\"tollgate\", error=\"insufficient_scope\""))
            }
            _ => None,
        }
    }
}

/// Who an authorizer says the caller is.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// JWT `sub`, external `principalId`, SigV4 access key id.
    pub principal: Option<String>,
    /// Verified JWT claims.
    pub claims: Arc<Map<String, Value>>,
    /// External authorizer context.
    pub context: Arc<Map<String, Value>>,
}

enum Mechanism {
    Jwt(jwt::JwtVerifier),
    External(external::ExternalAuthorizer),
    SigV4(sigv4::SigV4Verifier),
}

/// One authorizer's runtime state, shared by every route that uses it.
pub struct AuthorizerRuntime {
    label: Arc<str>,
    mechanism: Mechanism,
    claims_to_headers: Vec<(String, HeaderName)>,
    context_to_headers: Vec<(String, HeaderName)>,
}

impl AuthorizerRuntime {
    fn build(config: &ira::Authorizer, metrics: &AuthMetrics) -> AuthorizerRuntime {
        let label = config.key.to_string();
        let headers = |map: &std::collections::BTreeMap<String, String>| -> Vec<(String, HeaderName)> {
            map.iter()
                .filter_map(|(k, h)| Some((k.clone(), HeaderName::try_from(h.as_str()).ok()?)))
                .collect()
        };
        let (mechanism, claims_to_headers, context_to_headers) = match &config.mechanism {
            ira::Mechanism::Jwt(j) => {
                let fetches = metrics.jwks_fetches.clone();
                let keys = match &j.keys {
                    ira::KeySource::JwksUri { uri } => {
                        jwks::Jwks::from_uri(uri.clone(), label.clone(), fetches)
                    }
                    ira::KeySource::Discovery { uri } => {
                        jwks::Jwks::discovered(uri.clone(), j.issuer.clone(), label.clone(), fetches)
                    }
                    ira::KeySource::Inline { jwks } => jwks::Jwks::inline(jwks, label.clone(), fetches),
                };
                (Mechanism::Jwt(jwt::JwtVerifier::new(j, keys)), headers(&j.claims_to_headers), Vec::new())
            }
            ira::Mechanism::External(e) => (
                Mechanism::External(external::ExternalAuthorizer::new(
                    e,
                    label.clone(),
                    metrics.external_calls.clone(),
                )),
                Vec::new(),
                headers(&e.context_to_headers),
            ),
            ira::Mechanism::SigV4(s) => {
                (Mechanism::SigV4(sigv4::SigV4Verifier::new(s)), Vec::new(), Vec::new())
            }
        };
        AuthorizerRuntime { label: label.into(), mechanism, claims_to_headers, context_to_headers }
    }

    /// The runtime for `config`: the existing one when an identical configuration is live.
    fn shared(config: &ira::Authorizer, metrics: &AuthMetrics) -> Arc<AuthorizerRuntime> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<AuthorizerRuntime>>>> = OnceLock::new();
        let identity = serde_json::to_string(config).unwrap_or_default();
        let mut registry = REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        registry.retain(|_, weak| weak.strong_count() > 0);
        if let Some(live) = registry.get(&identity).and_then(Weak::upgrade) {
            return live;
        }
        let runtime = Arc::new(AuthorizerRuntime::build(config, metrics));
        registry.insert(identity, Arc::downgrade(&runtime));
        runtime
    }
}

/// Authorization state of one API on one stage, shared by its routes.
pub struct ApiAuthRuntime {
    api: Arc<str>,
    policy: Option<policy::SourcePolicy>,
    mtls: Option<mtls::Requirement>,
    /// Headers an authorizer of the API sets; removed from every client request of the API.
    strip: Vec<HeaderName>,
    authorizers: HashMap<ir::ObjectKey, Arc<AuthorizerRuntime>>,
    denied: IntCounterVec,
    duration: HistogramVec,
}

impl ApiAuthRuntime {
    /// Builds the API's authorization tables.
    pub fn build(api: &ir::Api, metrics: &Metrics) -> Arc<ApiAuthRuntime> {
        let m = &metrics.auth;
        let authorizers: HashMap<ir::ObjectKey, Arc<AuthorizerRuntime>> =
            api.auth.authorizers.iter().map(|a| (a.key.clone(), AuthorizerRuntime::shared(a, m))).collect();
        let mut strip: Vec<HeaderName> = authorizers
            .values()
            .flat_map(|a| {
                a.claims_to_headers.iter().chain(a.context_to_headers.iter()).map(|(_, h)| h.clone())
            })
            .collect();
        strip.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        strip.dedup();
        Arc::new(ApiAuthRuntime {
            api: api.key.to_string().into(),
            policy: api.auth.policy.as_ref().map(policy::SourcePolicy::build),
            mtls: api
                .auth
                .client_validation
                .as_ref()
                .and_then(mtls::ClientAuth::build)
                .map(|c| c.requirement()),
            strip,
            authorizers,
            denied: m.denied.clone(),
            duration: m.duration.clone(),
        })
    }

    fn deny(&self, authorizer: &str, error: AuthError) -> AuthError {
        self.denied.with_label_values(&[&*self.api, authorizer, error.reason()]).inc();
        error
    }
}

enum Check {
    Public,
    Deny,
    Authorizer { runtime: Arc<AuthorizerRuntime>, scopes: Vec<String>, latency: Histogram },
}

/// Who may call one route, resolved once per configuration.
pub struct RouteAuth {
    api: Arc<ApiAuthRuntime>,
    check: Check,
    route_key: String,
}

impl RouteAuth {
    /// The route's requirement within its API's tables.
    pub fn new(api: &Arc<ApiAuthRuntime>, route: &ir::Route) -> RouteAuth {
        let check = match &route.auth {
            ira::RouteAuth::None => Check::Public,
            ira::RouteAuth::Deny => Check::Deny,
            ira::RouteAuth::Authorizer { authorizer, scopes } => match api.authorizers.get(authorizer) {
                Some(runtime) => Check::Authorizer {
                    latency: api.duration.with_label_values(&[&*api.api, &*runtime.label]),
                    runtime: Arc::clone(runtime),
                    scopes: scopes.clone(),
                },
                None => {
                    tracing::warn!(route = %route.key, %authorizer, "authorizer missing from the snapshot; refusing every call");
                    Check::Deny
                }
            },
        };
        let methods = if route.methods.is_empty() { "ANY".to_string() } else { route.methods.join(",") };
        RouteAuth { api: Arc::clone(api), check, route_key: format!("{methods} {}", route.path) }
    }
}

/// Phase 5: resource policy and client certificate. Sets the principal to the certificate
/// subject when the API validates client certificates.
pub fn admit(
    policy: &RoutePolicy,
    headers: &http::HeaderMap,
    conn: &ConnInfo,
    context: &mut RequestContext,
) -> Result<(), ProxyError> {
    let api = &policy.auth.api;
    if let Some(source) = &api.policy {
        source.check(conn.remote.ip(), headers).map_err(|e| api.deny("", e))?;
    }
    if let Some(requirement) = &api.mtls {
        let subject = requirement.check(conn.peer.as_deref()).map_err(|e| api.deny("", e))?;
        context.principal = subject.map(str::to_string);
    }
    Ok(())
}

/// A request body after authorization: untouched, or read whole (SigV4 payload verification).
pub enum AuthBody {
    /// Not read.
    Streaming(Incoming),
    /// Read whole, within the route's body limit.
    Buffered(Bytes),
}

impl AuthBody {
    /// The body for the integration (see [`RequestBody::prepare`]).
    pub async fn into_request_body(self, limit: u64, buffer: bool) -> Result<RequestBody, ProxyError> {
        match self {
            AuthBody::Streaming(body) => RequestBody::prepare(body, limit, buffer).await,
            AuthBody::Buffered(bytes) => Ok(RequestBody::Buffered(bytes)),
        }
    }
}

/// What phase 8 needs to see of the request.
pub struct Request<'a> {
    /// Head of the request; authorizer headers are set and client copies removed here.
    pub parts: &'a mut http::request::Parts,
    /// The body (read only for SigV4 with a signed payload).
    pub body: Incoming,
    /// Connection facts.
    pub conn: &'a ConnInfo,
    /// The normalized path.
    pub path: &'a str,
    /// The request id.
    pub request_id: &'a str,
}

/// Phase 8: runs the route's authorizer and records the caller in `context`.
pub async fn authorize(
    policy: &RoutePolicy,
    request: Request<'_>,
    context: &mut RequestContext,
) -> Result<AuthBody, ProxyError> {
    let auth = &policy.auth;
    let api = &auth.api;
    let Request { parts, body, conn, path, request_id } = request;
    for name in &api.strip {
        parts.headers.remove(name);
    }
    let (runtime, scopes, latency) = match &auth.check {
        Check::Public => return Ok(AuthBody::Streaming(body)),
        Check::Deny => {
            return Err(api
                .deny("", AuthError::forbidden("no_authorizer", "this route requires authorization"))
                .into());
        }
        Check::Authorizer { runtime, scopes, latency } => (runtime, scopes, latency),
    };
    let started = Instant::now();
    let mut body = AuthBody::Streaming(body);
    let result = match &runtime.mechanism {
        Mechanism::Jwt(verifier) => {
            let header = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            // Boxed: key fetching makes this future large, and public routes should not carry it.
            Box::pin(verifier.verify(header, scopes)).await
        }
        Mechanism::External(service) => {
            let source_ip = match &api.policy {
                Some(p) => p.client_ip(conn.remote.ip(), &parts.headers).unwrap_or(conn.remote.ip()),
                None => conn.remote.ip(),
            };
            let facts = external::Facts {
                route_key: &auth.route_key,
                api: &policy.api,
                stage: &policy.stage,
                route: &policy.route,
                request_id,
                method: parts.method.as_str(),
                path,
                query: parts.uri.query(),
                headers: &parts.headers,
                source_ip: source_ip.to_string(),
            };
            // Boxed as `dyn Future + Send` here, where lifetimes are concrete: the connection
            // task's higher-ranked `Send` check cannot see through the cache and client futures.
            let call: std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<Identity, AuthError>> + Send + '_>,
            > = Box::pin(service.authorize(&facts));
            call.await
        }
        Mechanism::SigV4(verifier) => {
            let mut bytes = None;
            if sigv4::SigV4Verifier::needs_body(&parts.headers) {
                let AuthBody::Streaming(incoming) = body else { return Err(ProxyError::Internal) };
                let limit = usize::try_from(policy.max_body).unwrap_or(usize::MAX);
                let read = match Limited::new(incoming, limit).collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                        return Err(ProxyError::PayloadTooLarge { limit: policy.max_body });
                    }
                    Err(_) => return Err(ProxyError::BodyRead),
                };
                bytes = Some(read.clone());
                body = AuthBody::Buffered(read);
            }
            let signed = sigv4::Signed {
                method: parts.method.as_str(),
                raw_path: parts.uri.path(),
                query: parts.uri.query(),
                headers: &parts.headers,
                authority: parts.uri.authority().map(|a| a.as_str()),
                body: bytes.as_deref(),
            };
            verifier.verify(&signed, std::time::SystemTime::now())
        }
    };
    latency.observe(started.elapsed().as_secs_f64());
    if let Err(AuthError::Forbidden { principal: Some(principal), .. }) = &result {
        context.principal = Some(principal.clone());
    }
    let identity = result.map_err(|e| api.deny(&runtime.label, e))?;
    set_headers(&mut parts.headers, &runtime.claims_to_headers, &identity.claims);
    set_headers(&mut parts.headers, &runtime.context_to_headers, &identity.context);
    if identity.principal.is_some() {
        context.principal = identity.principal;
    }
    if !identity.claims.is_empty() {
        context.claims = Arc::clone(&identity.claims);
    }
    if !identity.context.is_empty() {
        context.authorizer_context = Arc::clone(&identity.context);
    }
    Ok(body)
}

/// Copies values into headers: strings as they are, other JSON values in JSON form.
fn set_headers(headers: &mut http::HeaderMap, mapping: &[(String, HeaderName)], values: &Map<String, Value>) {
    for (key, header) in mapping {
        let text = match values.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.insert(header.clone(), value);
        }
    }
}
