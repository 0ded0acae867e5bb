//! Outlier detection: an endpoint that fails `consecutiveErrors` times in a row is ejected for
//! `ejectionTime`, unless that would eject more than `maxEjectionPercent` of the endpoints (one
//! may always be ejected when there are two or more; the last available one never is).
//!
//! Failures are connect and TLS errors, broken exchanges, timeouts and 5xx responses; any other
//! response resets the count. Time is passed in (milliseconds since an epoch), so the logic is
//! tested without sleeping.

use std::sync::atomic::Ordering;

use tollgate_ir::upstream::OutlierDetection;

use super::balance::{Endpoint, EndpointStats};

/// The outcome of one attempt, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not 5xx.
    Success,
    /// A connect/TLS error, broken exchange, timeout or 5xx response.
    Failure,
}

/// What recording an outcome did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Nothing changed state.
    Counted,
    /// The endpoint was just ejected.
    Ejected,
    /// The endpoint reached the threshold but was kept: too many are ejected already.
    KeptAtLimit,
}

/// Whether `stats` is ejected at `now_ms`.
pub fn is_ejected(stats: &EndpointStats, now_ms: u64) -> bool {
    stats.ejected_until_ms.load(Ordering::Relaxed) > now_ms
}

/// How many endpoints may be ejected at once out of `total`.
pub fn max_ejected(total: usize, max_percent: u32) -> usize {
    if total < 2 {
        return 0;
    }
    let by_percent = total.saturating_mul(max_percent as usize) / 100;
    by_percent.clamp(1, total - 1)
}

/// Records the outcome of an attempt on `endpoint`, one of `endpoints`, at `now_ms`.
pub fn record(
    policy: &OutlierDetection,
    endpoint: &Endpoint,
    endpoints: &[Endpoint],
    outcome: Outcome,
    now_ms: u64,
) -> Recorded {
    let stats = &endpoint.stats;
    if outcome == Outcome::Success {
        stats.consecutive_failures.store(0, Ordering::Relaxed);
        return Recorded::Counted;
    }
    let failures = stats.consecutive_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    if failures < policy.consecutive_errors || is_ejected(stats, now_ms) {
        return Recorded::Counted;
    }
    let ejected = endpoints.iter().filter(|e| is_ejected(&e.stats, now_ms)).count();
    if ejected >= max_ejected(endpoints.len(), policy.max_ejection_percent) {
        return Recorded::KeptAtLimit;
    }
    let until = now_ms.saturating_add(policy.ejection_time.0);
    stats.ejected_until_ms.store(until, Ordering::Relaxed);
    stats.consecutive_failures.store(0, Ordering::Relaxed);
    Recorded::Ejected
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::uri::Authority;
    use tollgate_ir::Millis;

    use super::*;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                Endpoint::new(
                    Authority::try_from(format!("10.0.0.{}:80", i + 1)).unwrap(),
                    Arc::new(EndpointStats::default()),
                )
            })
            .collect()
    }

    const POLICY: OutlierDetection =
        OutlierDetection { consecutive_errors: 3, ejection_time: Millis(30_000), max_ejection_percent: 50 };

    #[test]
    fn ejects_after_consecutive_failures_for_the_ejection_time() {
        let eps = endpoints(2);
        assert_eq!(record(&POLICY, &eps[0], &eps, Outcome::Failure, 1_000), Recorded::Counted);
        assert_eq!(record(&POLICY, &eps[0], &eps, Outcome::Failure, 1_000), Recorded::Counted);
        assert_eq!(record(&POLICY, &eps[0], &eps, Outcome::Failure, 1_000), Recorded::Ejected);
        assert!(is_ejected(&eps[0].stats, 1_001));
        assert!(is_ejected(&eps[0].stats, 30_999));
        assert!(!is_ejected(&eps[0].stats, 31_000), "back after the ejection time");
        assert!(!is_ejected(&eps[1].stats, 1_001));
    }

    #[test]
    fn a_success_resets_the_count() {
        let eps = endpoints(2);
        record(&POLICY, &eps[0], &eps, Outcome::Failure, 0);
        record(&POLICY, &eps[0], &eps, Outcome::Failure, 0);
        record(&POLICY, &eps[0], &eps, Outcome::Success, 0);
        record(&POLICY, &eps[0], &eps, Outcome::Failure, 0);
        assert_eq!(record(&POLICY, &eps[0], &eps, Outcome::Failure, 0), Recorded::Counted);
        assert!(!is_ejected(&eps[0].stats, 1));
    }

    #[test]
    fn never_ejects_the_last_endpoint_or_more_than_the_limit() {
        let single = endpoints(1);
        for _ in 0..10 {
            assert_ne!(record(&POLICY, &single[0], &single, Outcome::Failure, 0), Recorded::Ejected);
        }
        assert!(!is_ejected(&single[0].stats, 1));

        let eps = endpoints(2);
        for _ in 0..3 {
            record(&POLICY, &eps[0], &eps, Outcome::Failure, 0);
        }
        assert!(is_ejected(&eps[0].stats, 1));
        for _ in 0..2 {
            record(&POLICY, &eps[1], &eps, Outcome::Failure, 0);
        }
        assert_eq!(record(&POLICY, &eps[1], &eps, Outcome::Failure, 0), Recorded::KeptAtLimit);
        assert!(!is_ejected(&eps[1].stats, 1), "the other endpoint stays in");
    }

    #[test]
    fn limit_by_percent() {
        assert_eq!(max_ejected(0, 50), 0);
        assert_eq!(max_ejected(1, 100), 0);
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(3, 10), 1, "one may always be ejected");
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(4, 100), 3, "never all");
    }
}
