//! Automated canary analysis: judge each canary stage's traffic per interval, step its weight
//! up while it stays within bounds, roll it back to 0 when it does not.
//!
//! ```text
//!  proxies ──stats reports──► Sessions inbox ──► totals ──► Lease per replica (peers.rs)
//!                                   │                              │
//!                                   ▼                              ▼ (leader: growth of others)
//!  local metrics (standalone) ──► Analyzer (a machine per stage, injectable clock) ◄── sync ── snapshot
//!                                   │
//!                                   ▼
//!          decisions ──► status.stages[].canary + Events (leader) ──► compile reads the weight
//! ```
//! The spec is never written: the effective weight lives in `status.stages[].canary` (or, in
//! standalone mode, in the process), and compile turns it into the snapshot's weight.

pub mod analyzer;
pub mod clock;
pub mod evidence;
pub mod leader;
pub mod machine;
pub mod peers;

pub use analyzer::{Analyzer, StageId};
pub use clock::{Clock, ManualClock, SystemClock};
pub use machine::{CanaryState, Decision, Window};

/// A report for stage `shop/shop` `prod`: `requests` on `track` at `revision`, the first `errors`
/// of them answered 500 (the rest 200).
#[cfg(test)]
pub(crate) fn test_report(
    track: tollgate_ir::canary::Track,
    requests: u64,
    errors: u64,
    revision: &str,
) -> tollgate_ir::canary::TrackReport {
    let mut counts = tollgate_ir::canary::TrackCounts::default();
    for i in 0..requests {
        counts.observe(if i < errors { 500 } else { 200 }, 3.0);
    }
    tollgate_ir::canary::TrackReport {
        api: tollgate_ir::ObjectKey::new("shop", "shop"),
        stage: "prod".into(),
        track,
        revision: revision.into(),
        counts,
    }
}
