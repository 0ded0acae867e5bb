//! The Runtime: lookup tables built from one Snapshot, swapped as a whole.
//!
//! Everything one request needs (host table, stages, route tables, per-route policy, backends,
//! certificates) hangs off one `Arc<Runtime>`, so a request never sees two configurations mixed.
//! The one exception is an endpoint update: it changes only the endpoint lists of the backends
//! resolved from the updated Services (and the version), in place.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tollgate_ir as ir;
use tollgate_ir::canary::Track;

use crate::canary::{Assignment, CanaryRuntime};
use crate::error::ProxyError;
use crate::metrics::{Metrics, RouteMetrics, TrackStats};
use crate::rewrite::RewriteTemplate;
use crate::router::{Match, Params, PathTemplate, RouteTable, RouteTableBuilder};
use crate::tls::CertTable;

/// The compiled tables of one configuration version.
pub struct Runtime {
    /// The version served: the snapshot's these tables were built from, or that of the last
    /// endpoint update applied to them.
    version: AtomicU64,
    hosts: HostTable,
    apis: Vec<ApiRuntime>,
    /// TLS certificates by SNI.
    pub certs: CertTable,
    /// Client certificate validation by SNI (mTLS).
    pub mtls: crate::auth::mtls::MtlsTable,
    /// Metric handles for requests that matched no route.
    pub unmatched: Arc<RouteMetrics>,
    /// The backends resolved from Services, for endpoint updates.
    services: crate::upstream::ServiceBackends,
}

struct ApiRuntime {
    stages: Vec<StageRuntime>,
    max_body: u64,
    /// `namespace/name`, for the access log of requests no stage or route took.
    label: Arc<str>,
    /// Label used when the API matched but no stage did.
    unmatched: Arc<RouteMetrics>,
}

struct StageRuntime {
    /// The stage's name, for the access log of requests no route took (the API's is
    /// `ApiRuntime::label`; the metrics have both in `unmatched`).
    name: Arc<str>,
    hostnames: Vec<HostPattern>,
    base_path: Option<String>,
    table: RouteTable<Arc<RoutePolicy>>,
    /// Label used when the stage matched but no route did.
    unmatched: Arc<RouteMetrics>,
    access_log: bool,
    /// The canary track, when the stage has one (`table` and `unmatched` are the stable track's).
    canary: Option<CanaryTable>,
    /// Managed WebSocket APIs: the stage's routes by route key (`table` holds `$connect`).
    managed: Option<Arc<crate::websocket::ManagedStage>>,
}

/// The canary track of a stage: how requests are assigned to it, and its route table.
struct CanaryTable {
    assign: CanaryRuntime,
    table: RouteTable<Arc<RoutePolicy>>,
    unmatched: Arc<RouteMetrics>,
}

/// Everything the pipeline needs to serve one route on one stage, resolved once per configuration.
pub struct RoutePolicy {
    /// `namespace/name` of the GatewayAPI.
    pub api: Arc<str>,
    /// Stage name.
    pub stage: Arc<str>,
    /// The track of the stage this policy serves.
    pub track: Track,
    /// `namespace/name` of the Route.
    pub route: Arc<str>,
    /// What answers the request.
    pub integration: IntegrationRuntime,
    /// Integration timeout.
    pub timeout: Duration,
    /// Retry policy.
    pub retries: ir::Retries,
    /// Largest accepted request body.
    pub max_body: u64,
    /// Whether this stage writes access-log lines.
    pub access_log: bool,
    /// Metric handles.
    pub metrics: Arc<RouteMetrics>,
    /// Resource policy, mTLS and authorizer of the route (phases 5 and 8).
    pub auth: crate::auth::RouteAuth,
    /// Throttles, API keys and plans, cache, CORS, validation, transforms (phases 6, 7, 9–13, 15).
    pub traffic: crate::traffic::RouteTraffic,
    /// Timeouts of WebSocket connections passed through to the backend.
    pub web_socket: ir::websocket::Passthrough,
}

/// The resolved integration of a route.
pub enum IntegrationRuntime {
    /// A fixed response.
    Mock(MockResponse),
    /// Forwarding to a backend.
    Http {
        /// The upstream.
        backend: Arc<BackendRuntime>,
        /// The upstream path template; `None`: forward the (stage-relative) request path.
        path: Option<RewriteTemplate>,
        /// Prepended to the upstream path.
        prefix: String,
    },
}

/// A prebuilt mock response.
pub struct MockResponse {
    /// Status code.
    pub status: http::StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

pub use crate::upstream::BackendRuntime;

/// A route chosen for a request.
pub struct Matched<'a> {
    /// The route's policy.
    pub policy: &'a Arc<RoutePolicy>,
    /// Path parameters captured by the route's template.
    pub params: Params<'a>,
    /// The request path relative to the stage (base path stripped).
    pub stage_path: &'a str,
    /// On managed WebSocket APIs (the policy is then the stage's `$connect`): the stage.
    pub managed: Option<&'a Arc<crate::websocket::ManagedStage>>,
}

/// Why no route was chosen, with the metrics bucket to count it in.
pub struct Unmatched<'a> {
    /// What to answer.
    pub error: ProxyError,
    /// The API (`namespace/name`) and stage the request reached, as far as it got.
    pub labels: (Option<&'a Arc<str>>, Option<&'a Arc<str>>),
    /// Where to count it.
    pub metrics: &'a Arc<RouteMetrics>,
    /// Whether to write an access-log line.
    pub access_log: bool,
}

impl Runtime {
    /// Builds the tables for a snapshot. Problems that compile should have caught (an unparsable
    /// template, a bad certificate) skip the item with a warning rather than fail the whole swap.
    pub fn build(
        snapshot: &ir::Snapshot,
        metrics: &Arc<Metrics>,
        traffic: &crate::traffic::TrafficState,
        upstream: &crate::upstream::BackendRegistry,
    ) -> Runtime {
        let mut hosts = HostTable::default();
        let mut apis = Vec::with_capacity(snapshot.apis.len());
        let mut backends = upstream.builder(Some(&metrics.upstream));
        for (index, api) in snapshot.apis.iter().enumerate() {
            let api_label = api.key.to_string();
            let mut names: Vec<&str> = api.hostnames.iter().map(String::as_str).collect();
            names.extend(api.stages.iter().flat_map(|s| s.hostnames.iter().map(String::as_str)));
            if api.hostnames.is_empty() && api.stages.iter().any(|s| s.hostnames.is_empty()) {
                hosts.any.push(index);
            }
            for name in names {
                hosts.insert(name, index);
            }
            let stages = api
                .stages
                .iter()
                .map(|stage| {
                    // Canary stages count each track: the evidence the controller adds up across the
                    // fleet, and what the analysis (when enabled) judges.
                    let stats = |track| {
                        stage
                            .canary
                            .as_ref()
                            .map(|c| metrics.track_stats(&api.key, &stage.name, track, &c.revision))
                    };
                    let on = TrackOf { track: Track::Stable, stats: stats(Track::Stable) };
                    let mut built = build_stage(api, &api_label, stage, on, metrics, &mut backends, traffic);
                    if let Some(canary) = &stage.canary {
                        let canary_stage = crate::canary::track_stage(stage, canary);
                        let on = TrackOf { track: Track::Canary, stats: stats(Track::Canary) };
                        let track =
                            build_stage(api, &api_label, &canary_stage, on, metrics, &mut backends, traffic);
                        built.canary = Some(CanaryTable {
                            assign: CanaryRuntime::build(stage, canary),
                            table: track.table,
                            unmatched: track.unmatched,
                        });
                    }
                    built
                })
                .collect();
            apis.push(ApiRuntime {
                stages,
                max_body: api.limits.max_request_body_bytes,
                unmatched: Arc::new(metrics.route(&api_label, "", "")),
                label: api_label.as_str().into(),
            });
        }
        hosts.finish();
        Runtime {
            version: AtomicU64::new(snapshot.version),
            services: backends.finish(),
            hosts,
            apis,
            certs: CertTable::build(&snapshot.certificates),
            mtls: crate::auth::mtls::MtlsTable::build(snapshot),
            unmatched: Arc::new(metrics.route("", "", "")),
        }
    }

    /// The version served.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Applies an endpoint update in place: the backends of the updated Services get their new
    /// endpoints, and the Runtime takes the update's version. Returns how many backends changed.
    /// The caller makes sure the update is based on the snapshot these tables were built from.
    pub fn apply_endpoints(&self, update: &ir::distribution::EndpointUpdate) -> usize {
        let changed = self.services.update(update);
        self.version.store(update.version, Ordering::Release);
        changed
    }

    /// Chooses API, stage, track and route for a request. `host` is lower-case without port;
    /// `path` is normalized. On a canary stage the track is assigned once into `assigned` (a
    /// second lookup for the same request, e.g. a CORS preflight, reuses it); `tls` says whether
    /// the client connection is TLS (for the sticky cookie).
    pub fn route<'a>(
        &'a self,
        host: &str,
        method: &Method,
        path: &'a str,
        headers: &HeaderMap,
        tls: bool,
        assigned: &mut Option<Assignment>,
    ) -> Result<Matched<'a>, Unmatched<'a>> {
        let no_route = |labels, metrics, access_log| Unmatched {
            error: ProxyError::NoRoute,
            labels,
            metrics,
            access_log,
        };
        let Some(api) = self.hosts.lookup(host).and_then(|i| self.apis.get(i)) else {
            return Err(no_route((None, None), &self.unmatched, true));
        };
        let Some((stage, stage_path)) = select_stage(&api.stages, host, path) else {
            return Err(no_route((Some(&api.label), None), &api.unmatched, true));
        };
        let labels = (Some(&api.label), Some(&stage.name));
        let (table, unmatched) = match &stage.canary {
            Some(canary) => {
                let assignment = assigned.get_or_insert_with(|| canary.assign.assign(headers, tls));
                match assignment.track {
                    Track::Canary => (&canary.table, &canary.unmatched),
                    Track::Stable => (&stage.table, &stage.unmatched),
                }
            }
            None => (&stage.table, &stage.unmatched),
        };
        match table.find(method, stage_path, headers) {
            Match::Found { value, params } => {
                Ok(Matched { policy: value, params, stage_path, managed: stage.managed.as_ref() })
            }
            Match::MethodNotAllowed { allow } => Err(Unmatched {
                error: match HeaderValue::from_str(allow) {
                    Ok(allow) => ProxyError::MethodNotAllowed { allow },
                    Err(_) => ProxyError::Internal,
                },
                labels,
                metrics: unmatched,
                access_log: stage.access_log,
            }),
            Match::NotFound => Err(no_route(labels, unmatched, stage.access_log)),
        }
    }

    /// The body limit of the API serving `host`, for requests answered before routing.
    pub fn max_body_for(&self, host: &str) -> Option<u64> {
        self.hosts.lookup(host).and_then(|i| self.apis.get(i)).map(|a| a.max_body)
    }
}

/// The track a table is built for, and its per-track counts (canary stages only).
struct TrackOf {
    track: Track,
    stats: Option<Arc<TrackStats>>,
}

fn build_stage(
    api: &ir::Api,
    api_label: &str,
    stage: &ir::Stage,
    on: TrackOf,
    metrics: &Arc<Metrics>,
    backends: &mut crate::upstream::BackendBuilder<'_>,
    traffic: &crate::traffic::TrafficState,
) -> StageRuntime {
    let api_label: Arc<str> = api_label.into();
    let stage_label: Arc<str> = stage.name.as_str().into();
    let mut builder = RouteTableBuilder::new();
    let auth = crate::auth::ApiAuthRuntime::build(api, metrics);
    let stage_traffic = traffic.stage(api, stage);
    let mut managed = api.web_socket.as_ref().map(crate::websocket::ManagedStage::builder);
    for route in &stage.routes {
        let template = match PathTemplate::parse(&route.path) {
            Ok(t) => t,
            Err(error) => {
                tracing::warn!(route = %route.key, %error, "skipping route with an invalid path template");
                continue;
            }
        };
        let methods: Vec<Method> =
            route.methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect();
        let headers: Vec<(HeaderName, HeaderValue)> = route
            .headers
            .iter()
            .filter_map(|h| {
                Some((HeaderName::try_from(&h.name).ok()?, HeaderValue::try_from(&h.value).ok()?))
            })
            .collect();
        let integration = match &route.integration {
            ir::Integration::Mock(mock) => IntegrationRuntime::Mock(build_mock(mock)),
            ir::Integration::Http(http) => IntegrationRuntime::Http {
                backend: backends.backend(&http.backend),
                path: http.path.as_deref().map(RewriteTemplate::parse),
                prefix: http.path_prefix.clone(),
            },
        };
        let route_label: Arc<str> = route.key.to_string().into();
        let route_traffic =
            traffic.route(api, stage, route, &stage_traffic, [&api_label, &stage_label, &route_label]);
        let policy = Arc::new(RoutePolicy {
            metrics: Arc::new(metrics.route_on(
                &api_label,
                &stage_label,
                &route_label,
                on.track,
                on.stats.clone(),
            )),
            api: Arc::clone(&api_label),
            stage: Arc::clone(&stage_label),
            track: on.track,
            route: route_label,
            integration,
            timeout: route.timeout.as_duration(),
            retries: route.retries.clone(),
            max_body: api.limits.max_request_body_bytes,
            access_log: stage.access_log,
            auth: crate::auth::RouteAuth::new(&auth, route),
            traffic: route_traffic,
            web_socket: route.web_socket.unwrap_or_default(),
        });
        // Managed WebSocket APIs: only `$connect` is routed by path, the others by route key.
        let policy = match managed.as_mut() {
            Some(sockets) => match sockets.take(route, policy) {
                Some(connect) => connect,
                None => continue,
            },
            None => policy,
        };
        if let Err(error) = builder.insert(&methods, &template, headers, policy) {
            tracing::warn!(route = %route.key, %error, "skipping duplicate route");
        }
    }
    StageRuntime {
        name: Arc::clone(&stage_label),
        hostnames: stage.hostnames.iter().map(|h| HostPattern::parse(h)).collect(),
        base_path: stage.base_path.clone().filter(|b| b != "/"),
        table: builder.build(),
        unmatched: Arc::new(metrics.route_on(&api_label, &stage_label, "", on.track, on.stats)),
        access_log: stage.access_log,
        canary: None,
        managed: managed.map(crate::websocket::stage::ManagedStageBuilder::build),
    }
}

fn build_mock(mock: &ir::MockIntegration) -> MockResponse {
    let mut headers = HeaderMap::new();
    for (name, value) in &mock.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.append(name, value);
        }
    }
    MockResponse {
        status: http::StatusCode::from_u16(mock.status).unwrap_or(http::StatusCode::OK),
        headers,
        body: Bytes::from(mock.body.clone()),
    }
}

/// Picks the stage for a request: among stages whose hostnames accept `host`, the one with the
/// longest base path that prefixes `path` at a segment boundary; on equal base paths, a stage
/// naming the host exactly beats a wildcard, which beats a stage with no hostnames.
fn select_stage<'s, 'p>(
    stages: &'s [StageRuntime],
    host: &str,
    path: &'p str,
) -> Option<(&'s StageRuntime, &'p str)> {
    let mut best: Option<(&StageRuntime, &str, (usize, u8))> = None;
    for stage in stages {
        let host_rank = if stage.hostnames.is_empty() {
            1
        } else {
            match stage.hostnames.iter().filter_map(|p| p.rank(host)).max() {
                Some(rank) => rank,
                None => continue,
            }
        };
        let (rest, base_len) = match &stage.base_path {
            None => (path, 0),
            Some(base) => match strip_base(path, base) {
                Some(rest) => (rest, base.len()),
                None => continue,
            },
        };
        let score = (base_len, host_rank);
        if best.as_ref().is_none_or(|(_, _, s)| score > *s) {
            best = Some((stage, rest, score));
        }
    }
    best.map(|(stage, rest, _)| (stage, rest))
}

/// `/dev/orders` minus `/dev` is `/orders`; `/dev` alone is `/`; `/devices` does not match `/dev`.
fn strip_base<'p>(path: &'p str, base: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// A hostname pattern: exact, or `*.suffix` (one or more labels).
enum HostPattern {
    Exact(String),
    Wildcard(String),
}

impl HostPattern {
    fn parse(name: &str) -> HostPattern {
        let name = name.to_ascii_lowercase();
        match name.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
            None => HostPattern::Exact(name),
        }
    }

    /// 3 for an exact match, 2 for a wildcard match, `None` otherwise.
    fn rank(&self, host: &str) -> Option<u8> {
        match self {
            HostPattern::Exact(name) => (name == host).then_some(3),
            HostPattern::Wildcard(suffix) => {
                (host.len() > suffix.len() && host.ends_with(suffix.as_str())).then_some(2)
            }
        }
    }
}

/// Host → API index: exact names, then the longest wildcard suffix, then APIs that accept any host.
#[derive(Default)]
struct HostTable {
    exact: HashMap<String, usize>,
    wildcards: Vec<(String, usize)>,
    any: Vec<usize>,
}

impl HostTable {
    fn insert(&mut self, name: &str, index: usize) {
        match HostPattern::parse(name) {
            HostPattern::Exact(name) => {
                self.exact.entry(name).or_insert(index);
            }
            HostPattern::Wildcard(suffix) => {
                if !self.wildcards.iter().any(|(s, _)| *s == suffix) {
                    self.wildcards.push((suffix, index));
                }
            }
        }
    }

    fn finish(&mut self) {
        // Longest suffix first, so the first hit is the most specific.
        self.wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }

    fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(index) = self.exact.get(host) {
            return Some(*index);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, index)| *index)
            .or_else(|| self.any.first().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_path_strips_at_segment_boundary() {
        assert_eq!(strip_base("/dev/orders", "/dev"), Some("/orders"));
        assert_eq!(strip_base("/dev", "/dev"), Some("/"));
        assert_eq!(strip_base("/devices", "/dev"), None);
        assert_eq!(strip_base("/prod/x", "/dev"), None);
    }

    #[test]
    fn wildcard_host_needs_at_least_one_label() {
        let p = HostPattern::parse("*.example.com");
        assert_eq!(p.rank("a.example.com"), Some(2));
        assert_eq!(p.rank("a.b.example.com"), Some(2));
        assert_eq!(p.rank("example.com"), None);
        assert_eq!(p.rank(".example.com"), None);
    }

    #[test]
    fn host_table_prefers_exact_then_longest_wildcard_then_any() {
        let mut t = HostTable::default();
        t.insert("*.example.com", 0);
        t.insert("*.api.example.com", 1);
        t.insert("x.api.example.com", 2);
        t.any.push(3);
        t.finish();
        assert_eq!(t.lookup("x.api.example.com"), Some(2));
        assert_eq!(t.lookup("y.api.example.com"), Some(1));
        assert_eq!(t.lookup("y.example.com"), Some(0));
        assert_eq!(t.lookup("other.test"), Some(3));
    }
}
