//! The canary track of a stage: its weight, how requests are assigned to it, its routes, and the
//! settings of its automated analysis.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Millis, Redacted, Route};

/// Weight of a canary track in parts per million of the stage's requests (10 % = 100,000), so
/// fractional percentages such as 0.5 % are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Weight(pub u32);

impl Weight {
    /// Everything (100 %).
    pub const FULL: Weight = Weight(1_000_000);

    /// From a percentage (clamped to 0–100, rounded to the nearest part per million).
    pub fn from_percent(percent: f64) -> Weight {
        let ppm = (percent.clamp(0.0, 100.0) * 10_000.0).round();
        // In range after the clamp: 0..=1_000_000.
        Weight(ppm as u32)
    }

    /// As a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

/// Which track of a stage serves a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// The stage's stable routes.
    #[default]
    Stable,
    /// The canary's routes.
    Canary,
}

impl Track {
    /// `stable` or `canary` (metric label and access-log value).
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
        }
    }
}

/// The canary track of a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryTrack {
    /// The weight served: the spec's weight, or the one the analysis has reached.
    pub weight: Weight,
    /// The weight written in the spec (the analysis starting point).
    pub spec_weight: Weight,
    /// Identifies the canary spec (hex hash); part of the sticky assignment, so a new canary
    /// re-assigns clients, and of the analysis state.
    pub revision: String,
    /// Whether clients keep their track (identity hash or signed cookie).
    pub sticky: bool,
    /// Lower-case name of the header that forces a track (`always` / `never`); `None`: disabled.
    pub force_header: Option<String>,
    /// Whether the canary shares the stage's response cache.
    pub use_stage_cache: bool,
    /// Key for the sticky cookie's signature and the identity hash, shared by every proxy of
    /// the fleet. Empty: each proxy uses a key of its own (fine for a single process).
    #[serde(default, skip_serializing_if = "redacted_is_empty")]
    pub key: Redacted,
    /// Stage variables of the canary track (the stage's, overridden by the canary's).
    pub variables: BTreeMap<String, String>,
    /// Every route served on the canary track (stable routes overlaid by canary routes), sorted
    /// like [`crate::Stage::routes`].
    pub routes: Vec<Route>,
    /// Automated analysis, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

fn redacted_is_empty(value: &Redacted) -> bool {
    value.expose().is_empty()
}

/// Settings of a canary's automated analysis, defaults applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// How often the canary is judged and the weight stepped.
    pub interval: Millis,
    /// Added to the weight after each healthy interval.
    pub step_weight: Weight,
    /// Where stepping stops (phase `Promoted`).
    pub max_weight: Weight,
    /// Largest acceptable share of canary responses that are 5xx, in percent.
    pub max_error_rate: f64,
    /// Largest acceptable canary p99 latency; `None`: not checked.
    pub max_p99_latency: Option<Millis>,
    /// Canary requests needed in an interval before it is judged.
    pub min_requests: u64,
}

impl Analysis {
    /// Where the analysis starts: the spec's weight, or `step_weight` when that is 0 (a canary
    /// at 0 % would never get the requests it needs to be judged).
    pub fn start_weight(&self, spec: Weight) -> Weight {
        if spec.0 == 0 { self.step_weight } else { spec }
    }
}

/// Upper bounds (inclusive, milliseconds) of the latency buckets every proxy uses, so that
/// histograms of the whole fleet can be added up and a fleet-wide p99 taken. A last, open bucket
/// holds everything slower.
pub const LATENCY_BOUNDS_MS: [u64; 20] =
    [1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10_000];

/// Requests, 5xx answers and latencies of one track of one stage over some period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackCounts {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered with a 5xx status (the backend's or the gateway's own).
    pub errors: u64,
    /// Requests per latency bucket ([`LATENCY_BOUNDS_MS`], then the open bucket).
    pub latency: Vec<u64>,
}

impl TrackCounts {
    /// Adds another period (or another proxy) to this one.
    pub fn add(&mut self, other: &TrackCounts) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine += theirs;
        }
    }

    /// Counts one request.
    pub fn observe(&mut self, status: u16, millis: f64) {
        self.requests += 1;
        if status >= 500 {
            self.errors += 1;
        }
        if self.latency.len() < LATENCY_BOUNDS_MS.len() + 1 {
            self.latency.resize(LATENCY_BOUNDS_MS.len() + 1, 0);
        }
        let bucket = bucket_of(millis);
        if let Some(slot) = self.latency.get_mut(bucket) {
            *slot += 1;
        }
    }

    /// Share of requests answered 5xx, in percent (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 * 100.0 / self.requests as f64 }
    }

    /// The 99th-percentile latency in milliseconds, interpolated linearly within its bucket (as
    /// Prometheus' `histogram_quantile` does); `None` without requests. A p99 in the open bucket
    /// is reported as twice the last bound.
    pub fn p99_ms(&self) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = total as f64 * 0.99;
        let mut seen = 0u64;
        for (i, count) in self.latency.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_MS.get(i - 1).copied().unwrap_or(0) };
                let Some(upper) = LATENCY_BOUNDS_MS.get(i).copied() else {
                    return Some(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] as f64 * 2.0);
                };
                let within = (rank - seen as f64) / *count as f64;
                return Some(lower as f64 + (upper - lower) as f64 * within);
            }
            seen += count;
        }
        None
    }
}

/// The bucket a latency falls in.
pub fn bucket_of(millis: f64) -> usize {
    LATENCY_BOUNDS_MS.iter().position(|bound| millis <= *bound as f64).unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Counts of one track of one stage, as a proxy reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackReport {
    /// The GatewayAPI.
    pub api: crate::ObjectKey,
    /// The stage.
    pub stage: String,
    /// The track.
    pub track: Track,
    /// The canary revision the counts were taken under (counts of an older revision are
    /// ignored).
    pub revision: String,
    /// The counts since the previous report.
    pub counts: TrackCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_exact_for_fractional_percentages() {
        assert_eq!(Weight::from_percent(0.5), Weight(5_000));
        assert_eq!(Weight::from_percent(10.0), Weight(100_000));
        assert_eq!(Weight::from_percent(100.0), Weight::FULL);
        assert_eq!(Weight::from_percent(250.0), Weight::FULL);
        assert_eq!(Weight::from_percent(-1.0), Weight(0));
        assert!((Weight(5_000).percent() - 0.5).abs() < f64::EPSILON);
    }

    #[test]
    fn counts_add_up_and_give_rates_and_p99() {
        let mut a = TrackCounts::default();
        for _ in 0..98 {
            a.observe(200, 4.0);
        }
        a.observe(503, 4.0);
        a.observe(200, 400.0);
        let mut b = TrackCounts::default();
        b.add(&a);
        b.add(&a);
        assert_eq!((b.requests, b.errors), (200, 2));
        assert!((b.error_rate() - 1.0).abs() < 1e-9);
        // 198 of 200 in the 2–5 ms bucket, 2 in 300–500 ms: the 198th request is the p99.
        let p99 = b.p99_ms().unwrap_or_default();
        assert!(p99 > 2.0 && p99 <= 5.0, "{p99}");
        let mut slow = TrackCounts::default();
        for _ in 0..10 {
            slow.observe(200, 450.0);
        }
        let p99 = slow.p99_ms().unwrap_or_default();
        assert!(p99 > 300.0 && p99 <= 500.0, "{p99}");
        slow.observe(200, 60_000.0);
        assert_eq!(bucket_of(60_000.0), LATENCY_BOUNDS_MS.len());
        assert_eq!(TrackCounts::default().p99_ms(), None);
    }
}
