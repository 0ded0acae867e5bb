//! Prometheus metrics of the data plane, with per-route handles resolved once per configuration.
//!
//! Label values are bounded: API, stage and route come from the configuration, the method is one of
//! the standard methods or `OTHER`, the status is a class (`2xx`...). Never a raw path or a user id.

use std::sync::{Arc, OnceLock};

use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

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
}

impl Metrics {
    /// Creates and registers every metric family.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Requests answered, by API, stage, route, method and status class.",
            ),
            &["api", "stage", "route", "method", "status_class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from receiving the request head to sending the last response byte.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api", "stage", "route"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_duration_seconds",
                "Time from sending a request upstream to receiving its response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api", "stage", "route"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new("tollgate_upstream_errors_total", "Upstream failures, by route and kind."),
            &["api", "stage", "route", "kind"],
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

    /// Handles for one (api, stage, route) label set.
    pub fn route(self: &Arc<Self>, api: &str, stage: &str, route: &str) -> RouteMetrics {
        RouteMetrics {
            labels: [api.into(), stage.into(), route.into()],
            request_duration: self.request_duration.with_label_values(&[api, stage, route]),
            upstream_duration: self.upstream_duration.with_label_values(&[api, stage, route]),
            counters: Default::default(),
            metrics: Arc::clone(self),
        }
    }
}

/// Metric handles of one route (or of the "no route" bucket), resolved lazily and cached, so the
/// hot path never hashes label values.
pub struct RouteMetrics {
    labels: [Box<str>; 3],
    request_duration: Histogram,
    upstream_duration: Histogram,
    counters: [[OnceLock<IntCounter>; 5]; 10],
    metrics: Arc<Metrics>,
}

impl RouteMetrics {
    /// Counts one answered request and its duration.
    pub fn observe_request(&self, method: &Method, status: u16, seconds: f64) {
        let (m, s) = (method_index(method), status_class_index(status));
        let counter = self.counters[m][s].get_or_init(|| {
            let [api, stage, route] = &self.labels;
            self.metrics.requests.with_label_values(&[api, stage, route, METHODS[m], STATUS_CLASSES[s]])
        });
        counter.inc();
        self.request_duration.observe(seconds);
    }

    /// Records the time the upstream took to answer.
    pub fn observe_upstream(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }

    /// Counts an upstream failure of the given kind (`connect`, `timeout`, ...).
    pub fn upstream_error(&self, kind: &str) {
        let [api, stage, route] = &self.labels;
        self.metrics.upstream_errors.with_label_values(&[api, stage, route, kind]).inc();
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
            r#"tollgate_requests_total{api="shop/shop",method="GET",route="shop/get-order",stage="prod",status_class="2xx"} 1"#
        ), "{text}");
        assert!(text.contains(r#"method="OTHER""#) || text.contains(r#"method="GET""#));
    }
}
