//! Authorization metrics: denials by reason, authorizer latency, key-set fetches.
//!
//! Labels are bounded: API and authorizer names come from the configuration, reasons are
//! constants of this module's callers, never a token, key or user id.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Buckets for authorizer latency, in seconds (50 µs to 10 s).
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The authorization metric families.
#[derive(Clone)]
pub struct AuthMetrics {
    /// `tollgate_auth_denied_total{api,authorizer,reason}`.
    pub denied: IntCounterVec,
    /// `tollgate_authorizer_duration_seconds{api,authorizer}`.
    pub duration: HistogramVec,
    /// `tollgate_jwks_fetches_total{authorizer,result}`.
    pub jwks_fetches: IntCounterVec,
    /// `tollgate_external_authorizer_calls_total{authorizer,result}`.
    pub external_calls: IntCounterVec,
}

impl AuthMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<AuthMetrics, prometheus::Error> {
        let denied = IntCounterVec::new(
            Opts::new(
                "tollgate_auth_denied_total",
                "Requests refused by authorization (authorizers, resource policy, mTLS), by API, authorizer and reason.",
            ),
            &["api", "authorizer", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_authorizer_duration_seconds",
                "Time spent authorizing a request (token verification, external call, signature check).",
            )
            .buckets(BUCKETS.to_vec()),
            &["api", "authorizer"],
        )?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new("tollgate_jwks_fetches_total", "JSON Web Key Set fetches, by authorizer and result."),
            &["authorizer", "result"],
        )?;
        let external_calls = IntCounterVec::new(
            Opts::new(
                "tollgate_external_authorizer_calls_total",
                "Calls to external authorizers (cache misses), by authorizer and result (allow, deny, error, timeout).",
            ),
            &["authorizer", "result"],
        )?;
        registry.register(Box::new(denied.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(jwks_fetches.clone()))?;
        registry.register(Box::new(external_calls.clone()))?;
        Ok(AuthMetrics { denied, duration, jwks_fetches, external_calls })
    }
}
