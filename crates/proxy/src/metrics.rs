//! Prometheus metrics of the data plane, with per-route handles resolved once per configuration.
//!
//! Label values are bounded: API, stage and route come from the configuration, the track is
//! `stable` or `canary`, the method is one of the standard methods or `OTHER`, the status is a
//! class (`2xx`...). Never a raw path or a user id.
//!
//! Stages with a canary also keep per-track counts ([`TrackStats`]) that the canary analysis
//! reads: drained by the subscription's stats reports (proxy) or the in-process analysis
//! (standalone).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tollgate_ir::ObjectKey;
use tollgate_ir::canary::{LATENCY_BOUNDS_MS, Track, TrackCounts, TrackReport};

/// Buckets for request and upstream latency, in seconds (100 µs to 30 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// The methods that get their own label value; anything else is `OTHER`.
const METHODS: [&str; 10] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The proxy's metric families, registered in one registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    /// The version of the configuration being served.
    pub config_version: IntGauge,
    /// Configuration loads that were rejected (the previous one kept serving).
    pub config_errors: IntCounter,
    /// Access-log lines dropped because the writer could not keep up.
    pub access_log_dropped: IntCounter,
    /// Authorization: denials, authorizer latency, key-set fetches.
    pub auth: crate::auth::AuthMetrics,
    /// Upstreams: outlier ejections.
    pub upstream: crate::upstream::UpstreamMetrics,
    /// Per-track counts of canary stages, by (API, stage, track).
    track_stats: Mutex<HashMap<(ObjectKey, String, Track), Weak<TrackStats>>>,
}

impl Metrics {
    /// Creates and registers every metric family.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Requests answered, by API, stage, track, route, method and status class.",
            ),
            &["api", "stage", "route", "track", "method", "status_class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from receiving the request head to sending the last response byte.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api", "stage", "route", "track"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_duration_seconds",
                "Time from sending a request upstream to receiving its response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api", "stage", "route", "track"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new("tollgate_upstream_errors_total", "Upstream failures, by route, track and kind."),
            &["api", "stage", "route", "track", "kind"],
        )?;
        let config_version =
            IntGauge::new("tollgate_config_version", "Version of the configuration being served.")?;
        let config_errors = IntCounter::new(
            "tollgate_config_errors_total",
            "Configuration loads rejected; the last good configuration kept serving.",
        )?;
        let access_log_dropped = IntCounter::new(
            "tollgate_access_log_dropped_total",
            "Access-log lines dropped because the writer could not keep up.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(config_errors.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let auth = crate::auth::AuthMetrics::register(&registry)?;
        let upstream = crate::upstream::UpstreamMetrics::register(&registry)?;
        Ok(Arc::new(Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            config_version,
            config_errors,
            access_log_dropped,
            auth,
            upstream,
            track_stats: Mutex::default(),
        }))
    }

    /// The registry, for processes that add their own families (the controller, standalone).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every family in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "could not encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Handles for one (api, stage, route) label set on the stable track.
    pub fn route(self: &Arc<Self>, api: &str, stage: &str, route: &str) -> RouteMetrics {
        self.route_on(api, stage, route, Track::Stable, None)
    }

    /// Handles for one (api, stage, route, track) label set; `stats` also gets every request
    /// (canary stages).
    pub fn route_on(
        self: &Arc<Self>,
        api: &str,
        stage: &str,
        route: &str,
        track: Track,
        stats: Option<Arc<TrackStats>>,
    ) -> RouteMetrics {
        let labels = [api, stage, route, track.as_str()];
        RouteMetrics {
            labels: labels.map(Into::into),
            request_duration: OnceLock::new(),
            upstream_duration: OnceLock::new(),
            counters: Default::default(),
            metrics: Arc::clone(self),
            stats,
        }
    }

    /// The per-track counts of a canary stage (shared by every route of the track, kept across
    /// configuration swaps while the canary revision stays the same).
    pub fn track_stats(&self, api: &ObjectKey, stage: &str, track: Track, revision: &str) -> Arc<TrackStats> {
        let mut all = self.track_stats.lock().unwrap_or_else(|p| p.into_inner());
        let key = (api.clone(), stage.to_string(), track);
        if let Some(live) = all.get(&key).and_then(Weak::upgrade)
            && live.revision == revision
        {
            return live;
        }
        all.retain(|_, w| w.strong_count() > 0);
        let made = Arc::new(TrackStats::new(api.clone(), stage, track, revision));
        all.insert(key, Arc::downgrade(&made));
        made
    }

    /// Takes the per-track counts gathered since the last call (tracks without traffic are
    /// left out).
    pub fn drain_track_stats(&self) -> Vec<TrackReport> {
        let live: Vec<Arc<TrackStats>> = {
            let all = self.track_stats.lock().unwrap_or_else(|p| p.into_inner());
            all.values().filter_map(Weak::upgrade).collect()
        };
        let mut out: Vec<TrackReport> = live.iter().filter_map(|s| s.drain()).collect();
        out.sort_by(|a, b| (&a.api, &a.stage, a.track.as_str()).cmp(&(&b.api, &b.stage, b.track.as_str())));
        out
    }
}

/// Requests, 5xx answers and a latency histogram of one track of one canary stage, counted
/// without locks on the request path.
pub struct TrackStats {
    api: ObjectKey,
    stage: String,
    track: Track,
    revision: String,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
}

impl TrackStats {
    fn new(api: ObjectKey, stage: &str, track: Track, revision: &str) -> TrackStats {
        TrackStats {
            api,
            stage: stage.to_string(),
            track,
            revision: revision.to_string(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one request.
    pub fn observe(&self, status: u16, seconds: f64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = tollgate_ir::canary::bucket_of(seconds * 1000.0);
        if let Some(slot) = self.latency.get(bucket) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn drain(&self) -> Option<TrackReport> {
        let requests = self.requests.swap(0, Ordering::Relaxed);
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let latency: Vec<u64> = self.latency.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect();
        if requests == 0 && latency.iter().all(|n| *n == 0) {
            return None;
        }
        Some(TrackReport {
            api: self.api.clone(),
            stage: self.stage.clone(),
            track: self.track,
            revision: self.revision.clone(),
            counts: TrackCounts { requests, errors, latency },
        })
    }
}

/// Metric handles of one route (or of the "no route" bucket), resolved lazily and cached, so the
/// hot path never hashes label values.
pub struct RouteMetrics {
    labels: [Box<str>; 4],
    // Created on a route's first request, like the counters: an idle route costs no series (with
    // 10,000 Routes, eager histograms were tens of megabytes and a huge scrape).
    request_duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
    counters: [[OnceLock<IntCounter>; 5]; 10],
    metrics: Arc<Metrics>,
    stats: Option<Arc<TrackStats>>,
}

impl RouteMetrics {
    /// Counts one answered request and its duration.
    pub fn observe_request(&self, method: &Method, status: u16, seconds: f64) {
        let (m, s) = (method_index(method), status_class_index(status));
        let counter = self.counters[m][s].get_or_init(|| {
            let [api, stage, route, track] = &self.labels;
            self.metrics.requests.with_label_values(&[
                api,
                stage,
                route,
                track,
                METHODS[m],
                STATUS_CLASSES[s],
            ])
        });
        counter.inc();
        self.request_duration
            .get_or_init(|| self.metrics.request_duration.with_label_values(&self.label_refs()))
            .observe(seconds);
        if let Some(stats) = &self.stats {
            stats.observe(status, seconds);
        }
    }

    /// Records the time the upstream took to answer.
    pub fn observe_upstream(&self, seconds: f64) {
        self.upstream_duration
            .get_or_init(|| self.metrics.upstream_duration.with_label_values(&self.label_refs()))
            .observe(seconds);
    }

    fn label_refs(&self) -> [&str; 4] {
        let [api, stage, route, track] = &self.labels;
        [api, stage, route, track]
    }

    /// Counts an upstream failure of the given kind (`connect`, `timeout`, ...).
    pub fn upstream_error(&self, kind: &str) {
        let [api, stage, route, track] = &self.labels;
        self.metrics.upstream_errors.with_label_values(&[api, stage, route, track, kind]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counter_uses_bounded_labels() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let route = metrics.route("shop/shop", "prod", "shop/get-order");
        route.observe_request(&Method::GET, 200, 0.001);
        route.observe_request(&Method::from_bytes(b"BREW").unwrap_or(Method::GET), 503, 0.001);
        let text = metrics.render();
        assert!(text.contains(
            r#"tollgate_requests_total{api="shop/shop",method="GET",route="shop/get-order",stage="prod",status_class="2xx",track="stable"} 1"#
        ), "{text}");
        assert!(text.contains(r#"method="OTHER""#) || text.contains(r#"method="GET""#));
    }

    #[test]
    fn track_stats_are_drained_once_and_survive_rebuilds_of_the_same_revision() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let api = ObjectKey::new("shop", "shop");
        let stats = metrics.track_stats(&api, "prod", Track::Canary, "r1");
        let route = metrics.route_on("shop/shop", "prod", "shop/r", Track::Canary, Some(Arc::clone(&stats)));
        route.observe_request(&Method::GET, 200, 0.003);
        route.observe_request(&Method::GET, 503, 0.003);
        assert!(Arc::ptr_eq(&stats, &metrics.track_stats(&api, "prod", Track::Canary, "r1")));
        let text = metrics.render();
        assert!(text.contains(r#"status_class="5xx",track="canary"} 1"#), "{text}");
        let reports = metrics.drain_track_stats();
        assert_eq!(reports.len(), 1);
        assert_eq!((reports[0].counts.requests, reports[0].counts.errors), (2, 1));
        assert!(metrics.drain_track_stats().is_empty());
        // A new revision starts from zero.
        assert!(!Arc::ptr_eq(&stats, &metrics.track_stats(&api, "prod", Track::Canary, "r2")));
    }
}
