//! Fleet-wide evidence per canary track, whether or not an analysis runs: what every proxy
//! reported (requests, 5xx answers, latency histogram), added up since this controller started,
//! as metrics (`tollgate_controller_canary_requests_total`, `..._errors_total`, by api, stage and
//! track) and in `/config` (`canaryEvidence`: error rate and p99 per track). Only the replica that
//! sees the whole fleet records: the leader (its own proxies plus what the other replicas report),
//! or the single replica of the folder source.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::{Value, json};
use tollgate_ir::ObjectKey;
use tollgate_ir::canary::{Track, TrackCounts, TrackReport};

/// Per-track totals of the fleet.
pub struct Evidence {
    totals: Mutex<BTreeMap<(ObjectKey, String, Track), TrackCounts>>,
    requests: IntCounterVec,
    errors: IntCounterVec,
}

impl Evidence {
    /// Registers the two counter families in `registry`.
    pub fn new(registry: &Registry) -> Result<Evidence, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_controller_canary_requests_total",
                "Requests of canary stages reported by every proxy of the fleet, by api, stage and track.",
            ),
            &["api", "stage", "track"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "tollgate_controller_canary_errors_total",
                "Of those, answered with a 5xx status, by api, stage and track.",
            ),
            &["api", "stage", "track"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Evidence { totals: Mutex::new(BTreeMap::new()), requests, errors })
    }

    /// Adds reported counts (deltas).
    pub fn record(&self, reports: &[TrackReport]) {
        if reports.is_empty() {
            return;
        }
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        for r in reports {
            totals.entry((r.api.clone(), r.stage.clone(), r.track)).or_default().add(&r.counts);
            let api = r.api.to_string();
            let labels = [api.as_str(), r.stage.as_str(), r.track.as_str()];
            self.requests.with_label_values(&labels).inc_by(r.counts.requests);
            self.errors.with_label_values(&labels).inc_by(r.counts.errors);
        }
    }

    /// The totals per track, for `/config`.
    pub fn view(&self) -> Value {
        let totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        Value::Array(
            totals
                .iter()
                .map(|((api, stage, track), counts)| {
                    json!({
                        "api": api.to_string(),
                        "stage": stage,
                        "track": track.as_str(),
                        "requests": counts.requests,
                        "errors": counts.errors,
                        "errorRatePercent": counts.error_rate(),
                        "p99Ms": counts.p99_ms(),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(track: Track, requests: u64, errors: u64, millis: f64) -> TrackReport {
        let mut counts = TrackCounts::default();
        for i in 0..requests {
            counts.observe(if i < errors { 503 } else { 200 }, millis);
        }
        TrackReport {
            api: ObjectKey::new("shop", "shop"),
            stage: "prod".into(),
            track,
            revision: "r1".into(),
            counts,
        }
    }

    #[test]
    fn reports_from_several_proxies_add_up_per_track() {
        let registry = Registry::new();
        let evidence = Evidence::new(&registry).unwrap_or_else(|e| panic!("{e}"));
        // Two proxies, two reports each.
        evidence.record(&[report(Track::Stable, 90, 0, 3.0), report(Track::Canary, 10, 2, 40.0)]);
        evidence.record(&[report(Track::Stable, 90, 1, 3.0), report(Track::Canary, 10, 0, 40.0)]);
        let view = evidence.view();
        let canary = view.as_array().and_then(|a| a.iter().find(|t| t["track"] == "canary")).cloned();
        let canary = canary.unwrap_or_default();
        assert_eq!((canary["requests"].as_u64(), canary["errors"].as_u64()), (Some(20), Some(2)), "{view}");
        assert_eq!(canary["errorRatePercent"].as_f64(), Some(10.0));
        assert!(canary["p99Ms"].as_f64().is_some_and(|p| p > 30.0 && p <= 50.0), "{view}");
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default();
        assert!(
            text.contains(r#"tollgate_controller_canary_requests_total{api="shop/shop",stage="prod",track="stable"} 180"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tollgate_controller_canary_errors_total{api="shop/shop",stage="prod",track="canary"} 2"#
            ),
            "{text}"
        );
    }
}
