//! Traffic governance in the pipeline: CORS (phases 6 and 15), API and stage throttles (7), API
//! keys with usage-plan throttles and quotas (9), route throttles (10), request validation (11),
//! the response cache (12 and 15) and transforms (13 and 15).
//!
//! State that must outlive a configuration swap — limiter buckets, caches, the Redis connection
//! and the quota store — lives in [`TrafficState`], owned by the Gateway. A Runtime build asks it
//! for limiters and caches by identity (id, rate, burst, scope; cache id and size), so an
//! unchanged limit keeps its bucket across swaps and a changed one starts fresh.

pub mod apikey;
pub mod cache;
pub mod cors;
pub mod quota;
pub mod ratelimit;
pub mod redis;
pub mod template;
pub mod transform;
mod usage;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use prometheus::{IntCounter, IntCounterVec, Opts};
use tollgate_ir::{self as ir, traffic as t};

use crate::auth::AuthBody;
use crate::body::{ProxyBody, full};
use crate::context::RequestContext;
use crate::metrics::Metrics;
use crate::router::Params;

use self::apikey::{KeyLookup, KeyTable};
use self::cache::ResponseCache;
use self::cors::CorsPolicy;
use self::quota::{QuotaStore, SystemClock};
use self::ratelimit::{Decision, LimitInfo, Limiter};
use self::redis::RedisStore;
use self::template::RenderContext;
use self::transform::{ResponseChanges, TransformRuntime};
use self::validate::Validator;

/// Where shared counters live.
#[derive(Clone, Debug, Default)]
pub struct TrafficOptions {
    /// Redis URL (`redis://127.0.0.1:6379`) for global throttles and quotas.
    pub redis_url: Option<String>,
    /// Directory for the embedded quota store when there is no Redis.
    pub state_dir: Option<PathBuf>,
}

/// Why traffic state could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrafficSetupError {
    /// The Redis URL is invalid.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The quota store could not be opened.
    #[error(transparent)]
    Quota(#[from] quota::QuotaStoreError),
}

/// A request the traffic phases answer themselves.
#[derive(Debug, thiserror::Error)]
enum TrafficError {
    #[error("Too Many Requests")]
    Throttled { info: LimitInfo, retry_after: Duration, level: &'static str },
    #[error("Limit Exceeded")]
    QuotaExceeded { outcome: quota::QuotaOutcome },
    #[error("Forbidden")]
    Forbidden { reason: &'static str },
    #[error("Bad Request: {message}")]
    Invalid { message: String },
    #[error("Service Unavailable: the shared limit store cannot be reached")]
    StoreUnavailable,
    #[error("Request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("Bad Request: the request body could not be read")]
    BodyRead,
}

impl TrafficError {
    fn status(&self) -> StatusCode {
        match self {
            TrafficError::Throttled { .. } | TrafficError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            TrafficError::Forbidden { .. } => StatusCode::FORBIDDEN,
            TrafficError::Invalid { .. } | TrafficError::BodyRead => StatusCode::BAD_REQUEST,
            TrafficError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            TrafficError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            TrafficError::Throttled { .. } => "throttled",
            TrafficError::QuotaExceeded { .. } => "quota_exceeded",
            TrafficError::Forbidden { reason } => reason,
            TrafficError::Invalid { .. } => "invalid_request",
            TrafficError::StoreUnavailable => "limit_store_unavailable",
            TrafficError::TooLarge { .. } => "payload_too_large",
            TrafficError::BodyRead => "body_read",
        }
    }

    fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let body = serde_json::json!({ "message": self.to_string(), "requestId": request_id });
        let mut response = Response::new(full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self {
            TrafficError::Throttled { info, retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(*retry_after).max(1)));
                rate_headers(headers, info);
            }
            TrafficError::QuotaExceeded { outcome } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(outcome.reset).max(1)));
                quota_headers(headers, outcome);
            }
            _ => {}
        }
        response
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn rate_headers(headers: &mut HeaderMap, info: &LimitInfo) {
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(info.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(info.remaining));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(ceil_secs(info.reset)));
}

fn quota_headers(headers: &mut HeaderMap, outcome: &quota::QuotaOutcome) {
    headers.insert(QUOTA_LIMIT, HeaderValue::from(outcome.limit));
    headers.insert(QUOTA_REMAINING, HeaderValue::from(outcome.remaining()));
    headers.insert(QUOTA_RESET, HeaderValue::from(ceil_secs(outcome.reset)));
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const QUOTA_LIMIT: HeaderName = HeaderName::from_static("x-quota-limit");
const QUOTA_REMAINING: HeaderName = HeaderName::from_static("x-quota-remaining");
const QUOTA_RESET: HeaderName = HeaderName::from_static("x-quota-reset");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// An answer given by a traffic phase, with the reason for the access log (`None` for a cache
/// hit, which is not an error).
pub struct Early {
    /// The response.
    pub response: Response<ProxyBody>,
    /// Why, for logs.
    pub reason: Option<&'static str>,
}

struct TrafficMetrics {
    throttled: IntCounterVec,
    key_denied: IntCounterVec,
    quota_exceeded: IntCounterVec,
    plan_requests: IntCounterVec,
    cache: IntCounterVec,
    validation_failed: IntCounterVec,
    redis_failures: IntCounterVec,
}

impl TrafficMetrics {
    fn new(metrics: &Metrics) -> TrafficMetrics {
        #[expect(clippy::expect_used, reason = "static, valid metric names and labels; covered by a test")]
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let family = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric options");
            if let Err(error) = metrics.registry().register(Box::new(family.clone())) {
                tracing::debug!(%error, name, "metric not registered");
            }
            family
        };
        TrafficMetrics {
            throttled: vec(
                "tollgate_throttled_total",
                "Requests refused by a throttle, by API, stage, route and level (api, stage, plan, route).",
                &["api", "stage", "route", "level"],
            ),
            key_denied: vec(
                "tollgate_api_key_denied_total",
                "Requests refused for their API key, by API, stage and reason (missing, unknown, disabled).",
                &["api", "stage", "reason"],
            ),
            quota_exceeded: vec(
                "tollgate_quota_exceeded_total",
                "Requests refused because the API key's quota is used up, by usage plan.",
                &["plan"],
            ),
            plan_requests: vec(
                "tollgate_usage_plan_requests_total",
                "Requests admitted by a usage plan, by plan and API key id (this proxy's count).",
                &["plan", "key"],
            ),
            cache: vec(
                "tollgate_cache_requests_total",
                "Response cache lookups, by API, stage, route and result (hit, miss).",
                &["api", "stage", "route", "result"],
            ),
            validation_failed: vec(
                "tollgate_validation_failed_total",
                "Requests refused by request validation, by API, stage and route.",
                &["api", "stage", "route"],
            ),
            redis_failures: vec(
                "tollgate_redis_failures_total",
                "Redis calls that failed, by operation (throttle, quota) and the failure policy applied.",
                &["operation", "policy"],
            ),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct LimiterKey {
    id: String,
    rate_bits: u64,
    burst: u32,
    scope: t::Scope,
    policy: t::FailurePolicy,
}

/// Traffic state that outlives configuration swaps.
pub struct TrafficState {
    redis: Option<RedisStore>,
    quotas: QuotaStore,
    limiters: Mutex<HashMap<LimiterKey, Weak<Limiter>>>,
    caches: Mutex<HashMap<(String, u64), Weak<ResponseCache>>>,
    metrics: TrafficMetrics,
    plans: ArcSwap<BTreeMap<String, usage::PlanKeys>>,
    warned_global: AtomicBool,
}

impl TrafficState {
    /// State with the given stores. Must be called inside a Tokio runtime when a state directory
    /// is given (a background task writes quota counts to disk).
    pub fn new(options: &TrafficOptions, metrics: &Metrics) -> Result<TrafficState, TrafficSetupError> {
        let metrics = TrafficMetrics::new(metrics);
        let redis = match &options.redis_url {
            Some(url) => Some(RedisStore::new(url, metrics.redis_failures.clone())?),
            None => None,
        };
        let clock = Arc::new(SystemClock);
        let quotas = match &redis {
            Some(redis) => QuotaStore::redis(redis.clone(), clock),
            None => QuotaStore::local(options.state_dir.as_deref(), clock)?,
        };
        Ok(TrafficState {
            redis,
            quotas,
            limiters: Mutex::default(),
            caches: Mutex::default(),
            metrics,
            plans: ArcSwap::from_pointee(BTreeMap::new()),
            warned_global: AtomicBool::new(false),
        })
    }

    /// State with local limiters and in-memory quotas only.
    pub fn local(metrics: &Metrics) -> TrafficState {
        let metrics = TrafficMetrics::new(metrics);
        TrafficState {
            redis: None,
            quotas: QuotaStore::memory(Arc::new(SystemClock)),
            limiters: Mutex::default(),
            caches: Mutex::default(),
            metrics,
            plans: ArcSwap::from_pointee(BTreeMap::new()),
            warned_global: AtomicBool::new(false),
        }
    }

    /// Writes quota counts to disk (on shutdown).
    pub fn flush(&self) {
        self.quotas.flush();
    }

    fn limiter(&self, throttle: &t::Throttle) -> Arc<Limiter> {
        if throttle.scope == t::Scope::Global
            && self.redis.is_none()
            && !self.warned_global.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                throttle = %throttle.id,
                "a throttle has scope global but no --redis is configured: counting it in this process only"
            );
        }
        let key = LimiterKey {
            id: throttle.id.clone(),
            rate_bits: throttle.rate.to_bits(),
            burst: throttle.burst,
            scope: throttle.scope,
            policy: throttle.failure_policy,
        };
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = limiters.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        limiters.retain(|_, w| w.strong_count() > 0);
        let made = Arc::new(Limiter::build(throttle, self.redis.as_ref()));
        limiters.insert(key, Arc::downgrade(&made));
        made
    }

    fn cache(&self, settings: &t::StageCache) -> Arc<ResponseCache> {
        let key = (settings.id.clone(), settings.max_bytes);
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = caches.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        caches.retain(|_, w| w.strong_count() > 0);
        let made = Arc::new(ResponseCache::new(settings.max_bytes));
        caches.insert(key, Arc::downgrade(&made));
        made
    }

    /// Builds what every route of a stage shares (called once per stage per configuration).
    pub fn stage(&self, api: &ir::Api, stage: &ir::Stage) -> StageTraffic {
        let plans = stage
            .traffic
            .plans
            .iter()
            .map(|p| PlanRuntime {
                id: p.key.to_string().into(),
                throttle: p.throttle.as_ref().map(|th| self.limiter(th)),
                quota: p.quota.clone(),
            })
            .collect();
        let mut index = (**self.plans.load()).clone();
        for p in &stage.traffic.plans {
            usage::record(&mut index, p);
        }
        self.plans.store(Arc::new(index));
        StageTraffic {
            api_throttle: api.traffic.throttle.as_ref().map(|th| self.limiter(th)),
            stage_throttle: stage.traffic.throttle.as_ref().map(|th| self.limiter(th)),
            cache: stage.traffic.cache.as_ref().map(|c| self.cache(c)),
            plans: Arc::new(StagePlans { keys: KeyTable::build(&stage.traffic.plans), plans }),
            variables: Arc::new(stage.variables.clone()),
        }
    }

    /// Forgets the plan index before a new configuration is built (for `/usage`).
    pub fn begin_build(&self) {
        self.plans.store(Arc::new(BTreeMap::new()));
    }

    /// Builds a route's traffic policy.
    pub fn route(
        &self,
        api: &ir::Api,
        stage: &ir::Stage,
        route: &ir::Route,
        shared: &StageTraffic,
        labels: [&Arc<str>; 3],
    ) -> RouteTraffic {
        let rt = &route.traffic;
        let [api_label, stage_label, route_label] = labels.map(|l| l.to_string());
        let route_key = route.key.to_string();
        let plan_overrides = stage
            .traffic
            .plans
            .iter()
            .map(|p| p.route_throttles.get(&route_key).map(|th| self.limiter(th)))
            .collect();
        let cache = match (&shared.cache, &rt.cache) {
            (Some(cache), Some(rule)) => Some(CacheRuntime {
                cache: Arc::clone(cache),
                methods: rule.methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect(),
                ttl: rule.ttl.as_duration(),
                rule: rule.clone(),
                hit: self.metrics.cache.with_label_values(&[&api_label, &stage_label, &route_label, "hit"]),
                miss: self.metrics.cache.with_label_values(&[&api_label, &stage_label, &route_label, "miss"]),
            }),
            _ => None,
        };
        RouteTraffic {
            api_throttle: shared.api_throttle.clone(),
            stage_throttle: shared.stage_throttle.clone(),
            route_throttle: rt.throttle.as_ref().map(|th| self.limiter(th)),
            api_key_required: rt.api_key_required,
            plans: Arc::clone(&shared.plans),
            plan_overrides,
            cors: api.traffic.cors.as_ref().map(|c| Arc::new(CorsPolicy::build(c, &route.methods))),
            validation: rt.validation.as_ref().map(Validator::build),
            cache,
            transform: rt.transform.as_ref().map(TransformRuntime::build),
            variables: Arc::clone(&shared.variables),
            labels: [api_label, stage_label, route_label],
        }
    }

    /// Usage of every key of `plan` (`namespace/name`) in the current quota period, for the admin
    /// port's `/usage`.
    pub async fn usage(&self, plan: &str) -> Option<serde_json::Value> {
        let index = self.plans.load_full();
        usage::report(&self.quotas, index.get(plan)?, plan).await
    }

    /// Phases 6 (CORS preflight) and 7 (API and stage throttles). `origin`: the request's
    /// `Origin` field.
    pub async fn before_auth(
        &self,
        policy: &RouteTraffic,
        method: &Method,
        headers: &HeaderMap,
        origin: Option<HeaderValue>,
        request_id: &str,
    ) -> Result<RequestState, Early> {
        let mut state = RequestState { origin, ..RequestState::default() };
        if let Some(cors) = &policy.cors
            && cors::preflight_method(method, headers).is_some()
        {
            return Err(Early { response: cors.preflight(headers), reason: None });
        }
        for (limiter, level) in [(&policy.api_throttle, "api"), (&policy.stage_throttle, "stage")] {
            if let Some(limiter) = limiter {
                self.throttle(policy, &mut state, limiter, "", level, request_id).await?;
            }
        }
        Ok(state)
    }

    async fn throttle(
        &self,
        policy: &RouteTraffic,
        state: &mut RequestState,
        limiter: &Limiter,
        key: &str,
        level: &'static str,
        request_id: &str,
    ) -> Result<(), Early> {
        match limiter.check(key).await {
            Decision::Allowed(info) => {
                if state.rate.is_none_or(|r| info.remaining < r.remaining) {
                    state.rate = Some(info);
                }
                Ok(())
            }
            Decision::Denied { info, retry_after } => {
                let [api, stage, route] = &policy.labels;
                self.metrics.throttled.with_label_values(&[api, stage, route, level]).inc();
                Err(self.early(
                    policy,
                    state,
                    TrafficError::Throttled { info, retry_after, level },
                    request_id,
                ))
            }
            Decision::Unavailable => {
                Err(self.early(policy, state, TrafficError::StoreUnavailable, request_id))
            }
        }
    }

    fn early(
        &self,
        policy: &RouteTraffic,
        state: &RequestState,
        error: TrafficError,
        request_id: &str,
    ) -> Early {
        let reason = error.reason();
        let mut response = error.into_response(request_id);
        if let Some(cors) = &policy.cors {
            cors.decorate(state.origin.as_ref(), response.headers_mut());
        }
        Early { response, reason: Some(reason) }
    }

    /// Phases 9 (API key, plan throttle, quota) to 13 (request transforms).
    #[allow(clippy::too_many_arguments, reason = "the request's parts, as the pipeline holds them")]
    pub async fn after_auth(
        &self,
        policy: &RouteTraffic,
        state: &mut RequestState,
        parts: &mut http::request::Parts,
        body: AuthBody,
        params: &Params<'_>,
        context: &mut RequestContext,
        request: RequestFacts<'_>,
    ) -> Result<AuthBody, Early> {
        let id = request.request_id;
        // 9. API key, then the plan's throttle (or this route's override), then the quota, so a
        // throttled request does not use quota.
        if policy.api_key_required {
            let presented = parts.headers.get(apikey::HEADER).map(HeaderValue::as_bytes);
            let (plan, key_id) = match policy.plans.keys.lookup(presented) {
                KeyLookup::Valid { plan, id } => (plan, id),
                other => {
                    let reason = match other {
                        KeyLookup::Missing => "api_key_missing",
                        KeyLookup::Disabled(_) => "api_key_disabled",
                        _ => "api_key_unknown",
                    };
                    let [api, stage, _] = &policy.labels;
                    self.metrics
                        .key_denied
                        .with_label_values(&[api, stage, reason.trim_start_matches("api_key_")])
                        .inc();
                    return Err(self.early(policy, state, TrafficError::Forbidden { reason }, id));
                }
            };
            context.api_key_id = Some(key_id.to_string());
            if let Some(p) = policy.plans.plans.get(plan) {
                let limiter =
                    policy.plan_overrides.get(plan).and_then(Option::as_ref).or(p.throttle.as_ref());
                if let Some(limiter) = limiter {
                    self.throttle(policy, state, limiter, &key_id, "plan", id).await?;
                }
                if let Some(quota) = &p.quota {
                    match self.quotas.consume(&p.id, &key_id, quota).await {
                        Ok(outcome) if outcome.allowed => state.quota = Some(outcome),
                        Ok(outcome) => {
                            self.metrics.quota_exceeded.with_label_values(&[&p.id]).inc();
                            return Err(self.early(
                                policy,
                                state,
                                TrafficError::QuotaExceeded { outcome },
                                id,
                            ));
                        }
                        Err(error) => {
                            if let Some(redis) = &self.redis {
                                redis.failed("quota", quota.failure_policy, &error);
                            }
                            if quota.failure_policy == t::FailurePolicy::Closed {
                                return Err(self.early(policy, state, TrafficError::StoreUnavailable, id));
                            }
                        }
                    }
                }
                self.metrics.plan_requests.with_label_values(&[&p.id, &key_id]).inc();
            }
        }
        // 10. Route throttle.
        if let Some(limiter) = &policy.route_throttle {
            self.throttle(policy, state, limiter, "", "route", id).await?;
        }
        // 11. Validation.
        let query = parts.uri.query().map(str::to_string);
        let needs_body = policy.validation.as_ref().is_some_and(Validator::needs_body)
            || policy.transform.as_ref().is_some_and(TransformRuntime::needs_body);
        let mut body = body;
        if let Some(validator) = &policy.validation
            && let Err(message) = validator.check_parameters(query.as_deref(), &parts.headers)
        {
            self.validation_failed(policy);
            return Err(self.early(policy, state, TrafficError::Invalid { message }, id));
        }
        if needs_body && let AuthBody::Streaming(incoming) = body {
            let limit = usize::try_from(request.max_body).unwrap_or(usize::MAX);
            body = match Limited::new(incoming, limit).collect().await {
                Ok(collected) => AuthBody::Buffered(collected.to_bytes()),
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    return Err(self.early(
                        policy,
                        state,
                        TrafficError::TooLarge { limit: request.max_body },
                        id,
                    ));
                }
                Err(_) => return Err(self.early(policy, state, TrafficError::BodyRead, id)),
            };
        }
        if let (Some(validator), AuthBody::Buffered(bytes)) = (&policy.validation, &body)
            && validator.needs_body()
            && let Err(message) = validator.check_body(bytes)
        {
            self.validation_failed(policy);
            return Err(self.early(policy, state, TrafficError::Invalid { message }, id));
        }
        // 12. Cache lookup.
        if let Some(cache) = &policy.cache
            && cache.methods.contains(&parts.method)
        {
            let caller = if cache.rule.shared { None } else { context.caller() };
            let key = cache::key(
                &cache.rule,
                &parts.method,
                request.host,
                &policy.labels[1],
                request.stage_path,
                query.as_deref(),
                &parts.headers,
                params,
                caller,
            );
            // A client's `no-cache` / `max-age=0` refreshes only entries that are its own (per
            // caller); on shared routes it is ignored, so no client can flush what others get.
            let refresh = !cache.rule.shared && cache::client_wants_refresh(&parts.headers);
            if !refresh && let Some(entry) = cache.cache.get(&key).await {
                cache.hit.inc();
                let mut response = Response::new(full(entry.body.clone()));
                *response.status_mut() = entry.status;
                *response.headers_mut() = entry.headers.clone();
                response.headers_mut().insert(header::AGE, cache::age(&entry));
                response.headers_mut().insert(X_CACHE, HeaderValue::from_static("hit"));
                self.decorate(policy, state, response.headers_mut());
                return Err(Early { response, reason: None });
            }
            cache.miss.inc();
            state.cache_key = Some(key);
        }
        // 13. Request transforms (rendered from the request as the client sent it).
        if let Some(transform) = &policy.transform {
            let body_bytes = match &body {
                AuthBody::Buffered(bytes) => Some(bytes.clone()),
                AuthBody::Streaming(_) => None,
            };
            let headers_before = parts.headers.clone();
            let method = parts.method.as_str().to_string();
            let cx = RenderContext {
                params,
                query: query.as_deref(),
                headers: &headers_before,
                stage_variables: &policy.variables,
                request_id: id,
                stage: &policy.labels[1],
                method: &method,
                path: request.path,
                source_ip: request.client_ip,
                context,
                body: body_bytes.as_ref(),
            };
            state.response_changes = transform.response_changes(&cx);
            if let Some(new_body) = transform.apply_request(parts, &cx) {
                parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(new_body.len()));
                parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                parts.headers.remove(header::TRANSFER_ENCODING);
                body = AuthBody::Buffered(Bytes::from(new_body));
            }
        }
        Ok(body)
    }

    fn validation_failed(&self, policy: &RouteTraffic) {
        let [api, stage, route] = &policy.labels;
        self.metrics.validation_failed.with_label_values(&[api, stage, route]).inc();
    }

    /// Rate, quota and CORS headers for any response of a matched route.
    fn decorate(&self, policy: &RouteTraffic, state: &RequestState, headers: &mut HeaderMap) {
        if let Some(info) = &state.rate {
            rate_headers(headers, info);
        }
        if let Some(outcome) = &state.quota {
            quota_headers(headers, outcome);
        }
        if let Some(cors) = &policy.cors {
            cors.decorate(state.origin.as_ref(), headers);
        }
    }

    /// Phase 15: response transforms, cache store, then rate/quota/CORS headers.
    pub async fn respond(
        &self,
        policy: &RouteTraffic,
        state: RequestState,
        response: Response<ProxyBody>,
        request_id: &str,
    ) -> Response<ProxyBody> {
        let (mut head, mut body) = response.into_parts();
        state.response_changes.apply(&mut head.headers);
        if let (Some(cache), Some(key)) = (&policy.cache, &state.cache_key) {
            head.headers.insert(X_CACHE, HeaderValue::from_static("miss"));
            // Boxed: storing awaits the body and the cache; unboxed, that state would be part of
            // every request's future (which hyper moves whole).
            body = match Box::pin(store(cache, key, &head, body)).await {
                Ok(body) => body,
                Err(()) => return crate::error::ProxyError::Upstream.into_response(request_id),
            };
        }
        self.decorate(policy, &state, &mut head.headers);
        Response::from_parts(head, body)
    }
}

/// Stores a storable response in the route's cache and returns its body, read into memory; any
/// other response's body is returned as it is. `Err` when the body failed or outgrew the limit
/// while being read.
async fn store(
    cache: &CacheRuntime,
    key: &str,
    head: &http::response::Parts,
    body: ProxyBody,
) -> Result<ProxyBody, ()> {
    let exact = http_body::Body::size_hint(&body).exact();
    if !cache::storable(head.status, &head.headers, exact, cache.cache.max_entry) {
        return Ok(body);
    }
    let bytes = crate::body::collect_limited(body, cache.cache.max_entry).await?;
    let mut stored = head.headers.clone();
    stored.remove(X_CACHE);
    cache.cache.put(key.to_string(), head.status, stored, bytes.clone(), cache.ttl).await;
    Ok(full(bytes))
}

/// Facts about the request the traffic phases read.
pub struct RequestFacts<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// Host, lower-case without port.
    pub host: &'a str,
    /// Normalized path (with the stage's base path).
    pub path: &'a str,
    /// Path relative to the stage.
    pub stage_path: &'a str,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The API's body limit.
    pub max_body: u64,
}

/// What the request phases leave for the response phase.
#[derive(Default)]
pub struct RequestState {
    origin: Option<HeaderValue>,
    rate: Option<LimitInfo>,
    quota: Option<quota::QuotaOutcome>,
    cache_key: Option<String>,
    response_changes: ResponseChanges,
}

/// What every route of a stage shares.
pub struct StageTraffic {
    api_throttle: Option<Arc<Limiter>>,
    stage_throttle: Option<Arc<Limiter>>,
    cache: Option<Arc<ResponseCache>>,
    plans: Arc<StagePlans>,
    variables: Arc<BTreeMap<String, String>>,
}

struct StagePlans {
    keys: KeyTable,
    plans: Vec<PlanRuntime>,
}

struct PlanRuntime {
    id: Arc<str>,
    throttle: Option<Arc<Limiter>>,
    quota: Option<t::Quota>,
}

struct CacheRuntime {
    cache: Arc<ResponseCache>,
    methods: Vec<Method>,
    ttl: Duration,
    rule: t::RouteCache,
    hit: IntCounter,
    miss: IntCounter,
}

/// A route's traffic policy ([`crate::runtime::RoutePolicy::traffic`]).
pub struct RouteTraffic {
    api_throttle: Option<Arc<Limiter>>,
    stage_throttle: Option<Arc<Limiter>>,
    route_throttle: Option<Arc<Limiter>>,
    api_key_required: bool,
    plans: Arc<StagePlans>,
    /// Per plan (by index): this route's override of the plan throttle.
    plan_overrides: Vec<Option<Arc<Limiter>>>,
    cors: Option<Arc<CorsPolicy>>,
    validation: Option<Validator>,
    cache: Option<CacheRuntime>,
    transform: Option<TransformRuntime>,
    variables: Arc<BTreeMap<String, String>>,
    labels: [String; 3],
}

impl RouteTraffic {
    /// Whether the API answers CORS preflights (so they are routed by the method they ask
    /// about).
    pub fn has_cors(&self) -> bool {
        self.cors.is_some()
    }

    /// Whether any traffic phase has work on this route: a throttle, API keys, CORS,
    /// validation, the cache or transforms. A route without any passes through the phases
    /// unchanged, so the pipeline skips them (their futures and the request state they build
    /// were ~300 instructions per request).
    pub fn acts(&self) -> bool {
        // Every field named: a new one must be placed on one side or the other.
        let RouteTraffic {
            api_throttle,
            stage_throttle,
            route_throttle,
            api_key_required,
            plans: _,          // read only when API keys are required
            plan_overrides: _, // the same
            cors,
            validation,
            cache,
            transform,
            variables: _, // read only by transforms
            labels: _,
        } = self;
        api_throttle.is_some()
            || stage_throttle.is_some()
            || route_throttle.is_some()
            || *api_key_required
            || cors.is_some()
            || validation.is_some()
            || cache.is_some()
            || transform.is_some()
    }
}

/// The first value of query parameter `name` (percent-decoded; `Some("")` when present without
/// a value).
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
        };
        (decode(n) == name).then(|| decode(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_value(Some("a=1&page=2%203&b"), "page").as_deref(), Some("2 3"));
        assert_eq!(query_value(Some("a=1&b"), "b").as_deref(), Some(""));
        assert_eq!(query_value(Some("a=1"), "page"), None);
        assert_eq!(query_value(None, "page"), None);
    }

    #[test]
    fn metrics_register() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let state = TrafficState::local(&metrics);
        state.metrics.throttled.with_label_values(&["a", "s", "r", "api"]).inc();
        assert!(metrics.render().contains("tollgate_throttled_total"));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    }
}
